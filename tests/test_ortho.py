"""Orthographic cameras in the splat rasterizer: projection against gsplat's own PyTorch reference
(``camera_model="ortho"``), our numba compositor against the dense reference, gradients reach the
Gaussians, and a mixed batch is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viewforge.engine.cameras import look_at
from viewforge.engine.errors import InputError
from viewforge.engine.mvgen.base import orbit_camera, ortho_orbit_camera
from viewforge.engine.splat.project import covariances, project_gaussians
from viewforge.engine.splat.rasterize import camera_model_of, rasterize


def _scene(n, w, h, n_cams=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1).to(dtype)
    quats = torch.randn(n, 4, generator=g).to(dtype)
    scales = (torch.rand(n, 3, generator=g) * 0.12 + 0.01).to(dtype)
    opac = (torch.rand(n, generator=g) * 0.95 + 0.04).to(dtype)
    colors = torch.rand(n, 3, generator=g).to(dtype)
    eyes = [(0.4 * c, -3.2, 0.9 - 0.2 * c) for c in range(n_cams)]
    viewmats = torch.tensor(np.stack([look_at(e, (0, 0, 0)) for e in eyes]), dtype=dtype)
    # fx, fy in pixels per world unit: the image spans about [-1.2, 1.2] world units.
    K = torch.tensor([[w / 2.4, 0, w / 2 + 1.3], [0, w / 2.3, h / 2 - 0.7], [0, 0, 1]], dtype=dtype)
    return [means, quats, scales, opac, colors], viewmats, K[None].repeat(n_cams, 1, 1)


def test_ortho_projection_matches_gsplat_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection

    w, h = 40, 32
    (means, quats, scales, _, _), viewmats, Ks = _scene(300, w, h)
    covars = covariances(quats, scales)
    ours = project_gaussians(means, covars, viewmats, Ks, w, h, camera_model="ortho")
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, w, h, eps2d=0.3, near_plane=0.01, far_plane=1e10, camera_model="ortho"
    )
    assert torch.equal(ours.radii, radii.int())
    keep = radii[..., 0] > 0
    assert keep.sum() > 100
    torch.testing.assert_close(ours.means2d[keep], means2d[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.conics[keep], conics[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.depths, depths, atol=1e-5, rtol=1e-5)
    # Orthographic projection differs from the pinhole one with the same K.
    pin = project_gaussians(means, covars, viewmats, Ks, w, h)
    assert (pin.means2d[keep] - ours.means2d[keep]).abs().max() > 1.0


def test_ortho_cpu_render_matches_dense_and_has_gradients():
    w, h = 36, 28
    params, viewmats, Ks = _scene(150, w, h, dtype=torch.float32)
    ps = [p.clone().requires_grad_(True) for p in params]
    out = {}
    for backend in ("cpu", "dense"):
        render, alpha, _ = rasterize(*params, viewmats, Ks, w, h, backend=backend, camera_model="ortho")
        out[backend] = (render, alpha)
    torch.testing.assert_close(out["cpu"][0], out["dense"][0], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out["cpu"][1], out["dense"][1], atol=2e-4, rtol=1e-4)
    assert out["cpu"][1].mean() > 0.1
    render, alpha, _ = rasterize(*ps, viewmats, Ks, w, h, backend="cpu", camera_model="ortho")
    (render.sum() + alpha.sum()).backward()
    for p in ps:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_camera_model_of():
    ortho = ortho_orbit_camera(0.0, 0.0, 3.0, 1.0, 64)
    assert camera_model_of([ortho, ortho]) == "ortho"
    pin = orbit_camera(0.0, 0.0, 3.0, 30.0, 64)
    assert camera_model_of([pin]) == "pinhole"
    with pytest.raises(InputError):
        camera_model_of([pin, ortho])
