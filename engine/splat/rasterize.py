"""One rasterization function, several backends.

``rasterize(...)`` takes the subset of ``gsplat.rasterization``'s arguments the engine uses and
returns the same outputs: ``(colors (C, H, W, D), alphas (C, H, W, 1), meta)`` where ``meta`` has
what gsplat's ``DefaultStrategy`` reads (``means2d`` with its gradient retained by the strategy,
``radii``, ``width``, ``height``, ``n_cameras``, ``gaussian_ids``) plus ``depths`` and ``conics``.

Backends:

* ``"gsplat"``: ``gsplat.rasterization`` (CUDA only; gsplat has no CPU path at all).
* ``"cpu"``: ours. Projection and SH in differentiable PyTorch (``project.py``), compositing in
  numba kernels with a hand-written backward (``_numba_kernels.py``), tiled and depth-sorted,
  parallel over tiles. Tensors on another device (Apple MPS) are composited on the CPU.
* ``"torch_tiled"``: a straightforward PyTorch tiled compositor (per tile, dense alpha matrix,
  cumprod, autograd): runs on any torch device; the benchmark's baseline and the MPS fallback.
* ``"dense"``: every Gaussian at every pixel, plain PyTorch, for tests only (O(HWN) memory).

All backends composite exactly like gsplat (classic mode): eps2d low-pass, near/far planes,
alpha clamp 0.999, 1/255 cutoff, stop before transmittance <= 1e-4, the per-tile candidate set of
16 px tiles, pixel centres at +0.5. docs/rasterizer.md explains the choice of numba.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .project import Projected, covariances, project_gaussians, sh_to_color

if TYPE_CHECKING:
    from ..cameras import Camera

log = logging.getLogger(__name__)

Backend = Literal["auto", "gsplat", "cpu", "torch_tiled", "dense"]
RenderMode = Literal["RGB", "RGB+ED", "ED"]

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """The backend ``auto`` picks: gsplat on CUDA, ours elsewhere."""
    if backend != "auto":
        return backend
    return "gsplat" if device.type == "cuda" else "cpu"


def rasterize(
    means: Tensor,  # (N, 3)
    quats: Tensor,  # (N, 4) wxyz, unnormalised
    scales: Tensor,  # (N, 3) (activated, > 0)
    opacities: Tensor,  # (N,) in [0, 1]
    colors: Tensor,  # (N, D) or SH coefficients (N, K, 3)
    viewmats: Tensor,  # (C, 4, 4) world-to-camera, OpenCV axes
    Ks: Tensor,  # (C, 3, 3)
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: Tensor | None = None,  # (C, D)
    render_mode: RenderMode = "RGB",
    tile_size: int = 16,
    backend: Backend = "auto",
    camera_model: str = "pinhole",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render C images of N Gaussians. Returns colours (C, H, W, D'), alphas (C, H, W, 1), meta.

    ``camera_model``: "pinhole" or "ortho" (all C cameras share it; :func:`camera_model_of`).

    D' = D (RGB), D + 1 (RGB+ED: expected depth appended) or 1 (ED). Expected depth is the
    alpha-weighted depth divided by alpha, as gsplat's "ED".
    """
    name = resolve_backend(backend, means.device)
    if name == "gsplat":
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=sh_degree,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, backgrounds=backgrounds,
            render_mode=render_mode, tile_size=tile_size, camera_model=camera_model,
        )
    covars = covariances(quats, scales)
    proj = project_gaussians(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                             camera_model=camera_model)
    n_cams = viewmats.shape[0]
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # (C, 3)
        dirs = means[None, :, :] - campos[:, None, :]  # (C, N, 3)
        feats = sh_to_color(sh_degree, dirs, colors[None].expand(n_cams, -1, -1, -1))  # (C, N, 3)
    else:
        feats = colors[None].expand(n_cams, -1, -1) if colors.dim() == 2 else colors
    if render_mode == "ED":
        feats = proj.depths[..., None]
    elif render_mode == "RGB+ED":
        feats = torch.cat([feats, proj.depths[..., None]], dim=-1)
    opac = opacities[None].expand(n_cams, -1)
    bg = backgrounds
    if bg is not None and render_mode == "RGB+ED":
        bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    if name == "cpu":
        render, alpha = composite_cpu(proj, feats, opac, width, height, bg, tile_size)
    elif name == "torch_tiled":
        render, alpha = composite_torch_tiled(proj, feats, opac, width, height, bg, tile_size)
    elif name == "dense":
        render, alpha = composite_dense(proj, feats, opac, width, height, bg, tile_size)
    else:
        raise ValueError(f"unknown rasterizer backend {backend!r}")
    if render_mode in ("ED", "RGB+ED"):
        depth = render[..., -1:] / alpha.clamp_min(1e-10)
        render = torch.cat([render[..., :-1], depth], dim=-1)
    meta = {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "width": width,
        "height": height,
        "n_cameras": n_cams,
        "tile_size": tile_size,
        "gaussian_ids": None,
        "backend": name,
    }
    return render, alpha, meta


# --------------------------------------------------------------------------------------------
# gsplat (CUDA)
# --------------------------------------------------------------------------------------------


def rasterize_params(
    params: dict[str, Tensor],  # Splats' raw tensors: means, quats, log scales, logit opacities, sh0, shN
    viewmats: Tensor,  # (C, 4, 4)
    Ks: Tensor,  # (C, 3, 3)
    width: int,
    height: int,
    **kw: Any,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """:func:`rasterize` of a model in its optimised parametrisation: scales exp-activated,
    opacities sigmoid-activated, sh0 and shN concatenated as the SH colours. ``kw`` as rasterize's."""
    return rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        torch.cat([params["sh0"], params["shN"]], dim=1), viewmats, Ks, width, height, **kw,
    )


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
    from gsplat import rasterization

    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, packed=False,
        rasterize_mode="classic", **kw,
    )
    meta = dict(meta)
    meta["backend"] = "gsplat"
    return render, alpha, meta


# --------------------------------------------------------------------------------------------
# ours: numba compositing with a hand-written backward
# --------------------------------------------------------------------------------------------


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, bg, radii, depths, width, height, tile_size):
        from . import _numba_kernels as K

        n_cams, _, d = colors.shape
        tiles_x = (width + tile_size - 1) // tile_size
        tiles_y = (height + tile_size - 1) // tile_size
        m2 = means2d.detach().to("cpu", torch.float32).numpy()
        co = conics.detach().to("cpu", torch.float32).numpy()
        cl = colors.detach().to("cpu", torch.float32).contiguous().numpy()
        op = opacities.detach().to("cpu", torch.float32).contiguous().numpy()
        bgn = bg.detach().to("cpu", torch.float32).numpy()
        rad = radii.to("cpu", torch.int32).numpy()
        dep = depths.detach().to("cpu", torch.float32).numpy()
        out = np.empty((n_cams, height, width, d), np.float32)
        out_t = np.empty((n_cams, height, width), np.float32)
        out_last = np.empty((n_cams, height, width), np.int32)
        bins = []
        for c in range(n_cams):
            order = np.argsort(dep[c], kind="stable").astype(np.int32)
            offsets, ids = K.bin_tiles(m2[c], rad[c], order, tile_size, tiles_x, tiles_y)
            K.forward(m2[c], co[c], cl[c], op[c], rad[c], offsets, ids, bgn[c], width, height, tile_size, tiles_x,
                      out[c], out_t[c], out_last[c])
            bins.append((offsets, ids))
        ctx.saved = (m2, co, cl, op, rad, bgn, bins, out_t, out_last, width, height, tile_size, tiles_x)
        ctx.devices = means2d.device
        ctx.dtypes = (means2d.dtype, conics.dtype, colors.dtype, opacities.dtype, bg.dtype)
        dev, dt = means2d.device, colors.dtype
        render = torch.from_numpy(out).to(dev, dt)
        alpha = torch.from_numpy(1.0 - out_t).unsqueeze(-1).to(dev, dt)
        return render, alpha

    @staticmethod
    def backward(ctx, g_render, g_alpha):
        from . import _numba_kernels as K

        m2, co, cl, op, rad, bgn, bins, out_t, out_last, width, height, tile_size, tiles_x = ctx.saved
        n_cams, n, d = cl.shape
        nt = K.num_threads()
        gr = g_render.detach().to("cpu", torch.float32).contiguous().numpy()
        ga = g_alpha.detach().to("cpu", torch.float32)[..., 0].contiguous().numpy()
        g_m2 = np.zeros((n_cams, n, 2), np.float32)
        g_co = np.zeros((n_cams, n, 3), np.float32)
        g_cl = np.zeros((n_cams, n, d), np.float32)
        g_op = np.zeros((n_cams, n), np.float32)
        g_bg = np.zeros((n_cams, d), np.float32)
        for c in range(n_cams):
            b_m2 = np.zeros((nt, n, 2), np.float32)
            b_co = np.zeros((nt, n, 3), np.float32)
            b_cl = np.zeros((nt, n, d), np.float32)
            b_op = np.zeros((nt, n), np.float32)
            b_bg = np.zeros((nt, d), np.float32)
            offsets, ids = bins[c]
            K.backward(m2[c], co[c], cl[c], op[c], rad[c], offsets, ids, bgn[c], width, height, tile_size, tiles_x,
                       out_t[c], out_last[c], gr[c], ga[c], b_m2, b_co, b_cl, b_op, b_bg)
            g_m2[c], g_co[c], g_cl[c], g_op[c], g_bg[c] = (
                b_m2.sum(0), b_co.sum(0), b_cl.sum(0), b_op.sum(0), b_bg.sum(0),
            )
        dev = ctx.devices
        dts = ctx.dtypes
        return (
            torch.from_numpy(g_m2).to(dev, dts[0]),
            torch.from_numpy(g_co).to(dev, dts[1]),
            torch.from_numpy(g_cl).to(dev, dts[2]),
            torch.from_numpy(g_op).to(dev, dts[3]),
            torch.from_numpy(g_bg).to(dev, dts[4]),
            None, None, None, None, None,
        )


def _background(bg: Tensor | None, n_cams: int, d: int, like: Tensor) -> Tensor:
    if bg is None:
        return torch.zeros(n_cams, d, dtype=like.dtype, device=like.device)
    return bg


def composite_cpu(proj: Projected, feats: Tensor, opac: Tensor, width: int, height: int,
                  bg: Tensor | None, tile_size: int = 16) -> tuple[Tensor, Tensor]:
    """Our compositor: feats (C, N, D), opac (C, N) -> render (C, H, W, D), alpha (C, H, W, 1)."""
    n_cams, _, d = feats.shape
    bgt = _background(bg, n_cams, d, feats)
    return _CompositeCPU.apply(
        proj.means2d, proj.conics, feats.contiguous(), opac.contiguous(), bgt, proj.radii, proj.depths,
        width, height, tile_size,
    )


# --------------------------------------------------------------------------------------------
# PyTorch references
# --------------------------------------------------------------------------------------------


def _tile_rects(means2d: Tensor, radii: Tensor, tile_size: int, tiles_x: int, tiles_y: int) -> Tensor:
    """(C, N, 4) tile ranges [x0, x1) x [y0, y1) of each Gaussian, as gsplat's isect_tiles."""
    m = means2d.detach() / tile_size
    r = radii.to(m.dtype) / tile_size
    x0 = torch.floor(m[..., 0] - r[..., 0]).clamp(0, tiles_x)
    x1 = torch.ceil(m[..., 0] + r[..., 0]).clamp(0, tiles_x)
    y0 = torch.floor(m[..., 1] - r[..., 1]).clamp(0, tiles_y)
    y1 = torch.ceil(m[..., 1] + r[..., 1]).clamp(0, tiles_y)
    valid = (radii > 0).all(-1)
    x1 = torch.where(valid, x1, x0)
    return torch.stack([x0, x1, y0, y1], dim=-1).long()


def _composite_block(px: Tensor, py: Tensor, m2: Tensor, co: Tensor, feats: Tensor, op: Tensor,
                     cand: Tensor) -> tuple[Tensor, Tensor]:
    """Composite P pixels against G depth-ordered candidates.

    px, py (P,) pixel centres; m2 (G, 2), co (G, 3), feats (G, D), op (G,); cand (P, G) bool says
    which Gaussians a pixel may see (its tile's list). Returns colour (P, D), transmittance (P,).
    """
    dx = m2[None, :, 0] - px[:, None]
    dy = m2[None, :, 1] - py[:, None]
    sigma = 0.5 * (co[None, :, 0] * dx * dx + co[None, :, 2] * dy * dy) + co[None, :, 1] * dx * dy
    alpha = torch.clamp_max(op[None, :] * torch.exp(-sigma), ALPHA_MAX)
    keep = cand & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    # transmittance after each Gaussian; a Gaussian is used only while it stays above T_MIN
    t_after = torch.cumprod(1.0 - alpha, dim=1)
    used = (t_after > T_MIN)
    alpha = torch.where(used, alpha, torch.zeros_like(alpha))
    t_after = torch.cumprod(1.0 - alpha, dim=1)
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    w = alpha * t_before  # (P, G)
    return w @ feats, t_after[:, -1] if t_after.shape[1] else torch.ones_like(px)


def composite_dense(proj: Projected, feats: Tensor, opac: Tensor, width: int, height: int,
                    bg: Tensor | None, tile_size: int = 16) -> tuple[Tensor, Tensor]:
    """Every Gaussian at every pixel (masked to its tiles), autograd backward. Tests only."""
    n_cams, _, d = feats.shape
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1).to(feats.device), xs.reshape(-1).to(feats.device)
    px, py = xs.to(feats.dtype) + 0.5, ys.to(feats.dtype) + 0.5
    tx, ty = xs // tile_size, ys // tile_size
    bgt = _background(bg, n_cams, d, feats)
    renders, alphas = [], []
    for c in range(n_cams):
        order = torch.argsort(proj.depths[c].detach(), stable=True)
        rect = _tile_rects(proj.means2d[c], proj.radii[c], tile_size, tiles_x, tiles_y)[order]  # (N, 4)
        cand = (
            (tx[:, None] >= rect[None, :, 0]) & (tx[:, None] < rect[None, :, 1])
            & (ty[:, None] >= rect[None, :, 2]) & (ty[:, None] < rect[None, :, 3])
        )
        col, t = _composite_block(px, py, proj.means2d[c][order], proj.conics[c][order], feats[c][order],
                                  opac[c][order], cand)
        col = col + t[:, None] * bgt[c][None, :]
        renders.append(col.reshape(height, width, d))
        alphas.append((1.0 - t).reshape(height, width, 1))
    return torch.stack(renders), torch.stack(alphas)


def composite_torch_tiled(proj: Projected, feats: Tensor, opac: Tensor, width: int, height: int,
                          bg: Tensor | None, tile_size: int = 16) -> tuple[Tensor, Tensor]:
    """Straightforward tiled compositor in PyTorch (any device): per tile, a dense
    (pixels x tile Gaussians) alpha matrix and a cumprod; autograd backward."""
    n_cams, _, d = feats.shape
    dev = feats.device
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    bgt = _background(bg, n_cams, d, feats)
    oy, ox = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    oy, ox = oy.reshape(-1), ox.reshape(-1)
    renders, alphas = [], []
    for c in range(n_cams):
        order = torch.argsort(proj.depths[c].detach(), stable=True)
        rect = _tile_rects(proj.means2d[c], proj.radii[c], tile_size, tiles_x, tiles_y)[order]
        m2, co, fe, op = proj.means2d[c][order], proj.conics[c][order], feats[c][order], opac[c][order]
        rows_c, rows_t = [], []
        for ty in range(tiles_y):
            cols_c, cols_t = [], []
            for tx in range(tiles_x):
                sel = ((rect[:, 0] <= tx) & (rect[:, 1] > tx) & (rect[:, 2] <= ty) & (rect[:, 3] > ty)).nonzero()[:, 0]
                xs, ys = tx * tile_size + ox, ty * tile_size + oy
                if sel.numel() == 0:
                    cols_c.append(torch.zeros(tile_size * tile_size, d, dtype=feats.dtype, device=dev))
                    cols_t.append(torch.ones(tile_size * tile_size, dtype=feats.dtype, device=dev))
                    continue
                cand = torch.ones(xs.shape[0], sel.shape[0], dtype=torch.bool, device=dev)
                col, t = _composite_block(xs.to(feats.dtype) + 0.5, ys.to(feats.dtype) + 0.5, m2[sel], co[sel],
                                          fe[sel], op[sel], cand)
                cols_c.append(col)
                cols_t.append(t)
            rows_c.append(torch.stack(cols_c).reshape(tiles_x, tile_size, tile_size, d).permute(1, 0, 2, 3)
                          .reshape(tile_size, tiles_x * tile_size, d))
            rows_t.append(torch.stack(cols_t).reshape(tiles_x, tile_size, tile_size).permute(1, 0, 2)
                          .reshape(tile_size, tiles_x * tile_size))
        img = torch.cat(rows_c, dim=0)[:height, :width]
        tmap = torch.cat(rows_t, dim=0)[:height, :width]
        renders.append(img + tmap[..., None] * bgt[c])
        alphas.append((1.0 - tmap)[..., None])
    return torch.stack(renders), torch.stack(alphas)


def camera_model_of(cameras: Sequence[Camera]) -> str:
    """The rasterizer's ``camera_model`` of a batch of cameras: "pinhole" or "ortho"."""
    kinds = {("ortho" if c.is_ortho else "pinhole") for c in cameras}
    if len(kinds) > 1:
        raise InputError(
            "the cameras mix perspective and orthographic projections in one batch",
            fix="render perspective and orthographic cameras in separate calls",
        )
    return kinds.pop() if kinds else "pinhole"


def render_median_depth(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor,
                        K: Tensor, width: int, height: int, tile_size: int = 16,
                        front_sigmas: float = 0.0, camera_model: str = "pinhole") -> tuple[np.ndarray, np.ndarray]:
    """Median depth (H, W) float32 (inf where the transmittance stays above 0.5) and alpha
    (H, W) of one camera, on the CPU with our kernels whatever the device (surface extraction
    only: no gradients). means (N, 3), quats (N, 4), scales (N, 3) activated, opacities (N,)
    activated, viewmat (4, 4), K (3, 3). ``front_sigmas``: each Gaussian's depth is taken
    that many standard deviations (along its viewing ray) in front of its centre."""
    from . import _numba_kernels as Kn

    with torch.no_grad():
        cpu = lambda x: x.detach().to("cpu", torch.float32)  # noqa: E731
        cov = covariances(cpu(quats), cpu(scales))
        proj = project_gaussians(cpu(means), cov, cpu(viewmat)[None], cpu(K)[None], width, height,
                                 camera_model=camera_model)
        depth = proj.depths[0]
        if front_sigmas:
            vm = cpu(viewmat)
            if camera_model == "ortho":  # every ray runs along the view axis
                ray = vm[2, :3].expand_as(cpu(means))
            else:
                ray = cpu(means) - (-vm[:3, :3].T @ vm[:3, 3])  # camera centre -> Gaussian, world
            ray = ray / ray.norm(dim=1, keepdim=True).clamp_min(1e-12)
            sd = torch.einsum("ni,nij,nj->n", ray, cov, ray).clamp_min(0).sqrt()
            cos = (ray @ vm[2, :3]).clamp_min(1e-3)  # depth change per unit along the ray
            depth = depth - front_sigmas * sd * cos
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    m2 = proj.means2d[0].numpy()
    dep = depth.numpy()
    rad = proj.radii[0].to(torch.int32).numpy()
    order = np.argsort(dep, kind="stable").astype(np.int32)
    offsets, ids = Kn.bin_tiles(m2, rad, order, tile_size, tiles_x, tiles_y)
    out_d = np.empty((height, width), np.float32)
    out_t = np.empty((height, width), np.float32)
    Kn.median_depth(m2, proj.conics[0].numpy(), cpu(opacities).numpy(), rad, dep, offsets, ids, width, height,
                    tile_size, tiles_x, out_d, out_t)
    return out_d, 1.0 - out_t
