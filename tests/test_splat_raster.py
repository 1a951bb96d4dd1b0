"""Rasterizer backends agree: ours (numba) and the PyTorch tiled compositor against the dense
reference in values and gradients; projection and SH against gsplat's own PyTorch reference;
ours against gsplat's CUDA rasterizer where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viewforge.engine.cameras import look_at
from viewforge.engine.splat.project import covariances, project_gaussians, sh_to_color
from viewforge.engine.splat.rasterize import rasterize


def _scene(n, w, h, n_cams=1, seed=0, dtype=torch.float64, sh=False):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1).to(dtype)
    quats = torch.randn(n, 4, generator=g).to(dtype)
    scales = (torch.rand(n, 3, generator=g) * 0.12 + 0.01).to(dtype)
    opac = (torch.rand(n, generator=g) * 0.95 + 0.04).to(dtype)
    if sh:
        colors = (torch.randn(n, 16, 3, generator=g) * 0.3).to(dtype)
    else:
        colors = torch.rand(n, 3, generator=g).to(dtype)
    eyes = [(0.4 * c, -3.2, 0.9 - 0.2 * c) for c in range(n_cams)]
    viewmats = torch.tensor(np.stack([look_at(e, (0, 0, 0)) for e in eyes]), dtype=dtype)
    K = torch.tensor([[w * 1.2, 0, w / 2 + 1.3], [0, w * 1.15, h / 2 - 0.7], [0, 0, 1]], dtype=dtype)
    return [means, quats, scales, opac, colors], viewmats, K[None].repeat(n_cams, 1, 1)


def _render_and_grads(backend, params, viewmats, Ks, w, h, *, sh_degree=None, mode="RGB", seed=5):
    ps = [p.clone().requires_grad_(True) for p in params]
    vm = viewmats.clone().requires_grad_(True)
    n_cams = viewmats.shape[0]
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(9), dtype=params[0].dtype)
    bg.requires_grad_(True)
    render, alpha, meta = rasterize(*ps, vm, Ks, w, h, sh_degree=sh_degree, backgrounds=bg, render_mode=mode,
                                    backend=backend)
    g = torch.Generator().manual_seed(seed)
    wr = torch.randn(render.shape, generator=g, dtype=render.dtype)
    wa = torch.randn(alpha.shape, generator=g, dtype=alpha.dtype)
    loss = (render[..., :3] * wr[..., :3]).sum() + (alpha * wa).sum()
    if mode == "RGB+ED":
        loss = loss + 0.1 * (render[..., 3:] * wr[..., 3:]).sum()
    loss.backward()
    grads = [p.grad for p in ps] + [vm.grad, bg.grad]
    return render.detach(), alpha.detach(), grads, meta


def _rel(a, b):
    return float((a - b).abs().max() / (b.abs().max() + 1e-12))


@pytest.mark.parametrize(
    "n,w,h,n_cams,sh,mode",
    [
        (300, 40, 32, 1, False, "RGB"),  # partial tiles
        (500, 48, 48, 2, True, "RGB"),  # SH degree 3, two cameras
        (400, 33, 50, 1, False, "RGB+ED"),  # odd sizes, expected depth
    ],
)
@pytest.mark.parametrize("backend", ["cpu", "torch_tiled"])
def test_backend_matches_dense_reference(backend, n, w, h, n_cams, sh, mode):
    params, viewmats, Ks = _scene(n, w, h, n_cams, seed=n + w, sh=sh)
    kw = dict(sh_degree=3 if sh else None, mode=mode)
    r_ref, a_ref, g_ref, _ = _render_and_grads("dense", params, viewmats, Ks, w, h, **kw)
    r, a, g, meta = _render_and_grads(backend, params, viewmats, Ks, w, h, **kw)
    assert meta["backend"] == backend
    assert 0.05 < float(a_ref.mean()) < 0.98  # a scene that actually covers the image, not all-opaque
    tol = 2e-5 if backend == "cpu" else 1e-9  # ours composites in float32
    assert float((r[..., :3] - r_ref[..., :3]).abs().max()) < tol
    assert float((a - a_ref).abs().max()) < tol
    if mode == "RGB+ED":
        covered = a_ref[..., 0] > 0.05
        assert float((r[..., 3][covered] - r_ref[..., 3][covered]).abs().max()) < 1e-3
    names = ["means", "quats", "scales", "opacities", "colors", "viewmats", "backgrounds"]
    gtol = 2e-3 if backend == "cpu" else 1e-7
    for name, gi, gr in zip(names, g, g_ref):
        assert gr.abs().max() > 0, name
        assert _rel(gi, gr) < gtol, (name, _rel(gi, gr))


def test_cpu_backend_early_termination_matches_reference():
    # many large, nearly opaque Gaussians: transmittance hits the 1e-4 floor, pixels stop early
    params, viewmats, Ks = _scene(200, 32, 32, seed=3)
    params[2] = params[2] * 3.0
    params[3] = torch.full_like(params[3], 0.99)
    r_ref, a_ref, g_ref, _ = _render_and_grads("dense", params, viewmats, Ks, 32, 32)
    r, a, g, _ = _render_and_grads("cpu", params, viewmats, Ks, 32, 32)
    assert float(a_ref.max()) > 0.9998
    assert float((r - r_ref).abs().max()) < 2e-5
    for gi, gr in zip(g, g_ref):
        assert _rel(gi, gr) < 2e-3


def test_projection_and_sh_match_gsplat_torch_reference():
    ref = pytest.importorskip("gsplat.cuda._torch_impl")
    params, viewmats, Ks = _scene(300, 64, 48, n_cams=2, seed=11, sh=True, dtype=torch.float32)
    means, quats, scales, _, sh = params
    covars = covariances(quats, scales)
    ours = project_gaussians(means, covars, viewmats, Ks, 64, 48, eps2d=0.3, near_plane=0.01)
    cov_ref, _ = ref._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = ref._fully_fused_projection(means, cov_ref, viewmats, Ks, 64, 48, eps2d=0.3)
    torch.testing.assert_close(covars, cov_ref)
    torch.testing.assert_close(ours.means2d, means2d)
    torch.testing.assert_close(ours.depths, depths)
    assert torch.equal(ours.radii, radii)
    vis = radii[..., 0] > 0
    torch.testing.assert_close(ours.conics[vis], conics[vis], rtol=1e-4, atol=1e-6)
    dirs = torch.randn(300, 3)
    for degree in range(4):
        expected = torch.clamp_min(ref._spherical_harmonics(degree, dirs, sh) + 0.5, 0.0)
        torch.testing.assert_close(sh_to_color(degree, dirs, sh), expected)


def test_culling_near_plane_and_outside_image():
    params, viewmats, Ks = _scene(50, 32, 32, seed=2)
    means = params[0].clone()
    means[0] = torch.tensor([0.0, -3.25, 0.9])  # just in front of the camera (depth < near)
    means[1] = torch.tensor([0.0, -5.0, 0.9])  # behind the camera
    means[2] = torch.tensor([30.0, 0.0, 0.0])  # far outside the frustum
    proj = project_gaussians(means, covariances(params[1], params[2]), viewmats, Ks, 32, 32)
    assert (proj.radii[0, :3] == 0).all()
    assert (proj.radii[0, 3:] > 0).any()


@pytest.mark.cuda
def test_cpu_backend_matches_gsplat_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("gsplat")
    params, viewmats, Ks = _scene(2000, 96, 80, n_cams=2, seed=4, dtype=torch.float32, sh=True)
    r_ours, a_ours, g_ours, _ = _render_and_grads("cpu", params, viewmats, Ks, 96, 80, sh_degree=3)
    cuda = [p.cuda() for p in params]
    r_gs, a_gs, g_gs, _ = _render_and_grads("gsplat", cuda, viewmats.cuda(), Ks.cuda(), 96, 80, sh_degree=3)
    assert float((r_ours - r_gs.cpu()).abs().max()) < 1e-3
    assert float((a_ours - a_gs.cpu()).abs().max()) < 1e-3
    for gi, gr in zip(g_ours[:5], g_gs[:5]):
        assert _rel(gi, gr.cpu()) < 2e-2
