"""Projection of 3D Gaussians to 2D and spherical-harmonics colour, in plain PyTorch.

These reproduce gsplat 1.5's ``fully_fused_projection`` (pinhole, classic mode) and
``spherical_harmonics`` exactly (same Jacobian clamping, eps2d low-pass, 3.33-sigma per-axis
radii, near/far culling, conic layout), so every rasterizer backend sees identical 2D Gaussians.
Written with differentiable torch ops: autograd carries gradients from the 2D quantities back to
means, quaternions, scales, colours and the camera poses (``viewmats``), which pose refinement
uses. Tests compare them with gsplat's own pure-PyTorch reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Quaternions (..., 4) in (w, x, y, z) order, not necessarily normalised -> (..., 3, 3)."""
    q = torch.nn.functional.normalize(quats, p=2, dim=-1)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return r.reshape(quats.shape[:-1] + (3, 3))


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances R S S^T R^T: quats (N, 4), scales (N, 3) -> (N, 3, 3)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


@dataclass(frozen=True)
class Projected:
    """2D Gaussians for C cameras.

    means2d: (C, N, 2) pixel coordinates (continuous, top-left corner = (0, 0)).
    conics:  (C, N, 3) inverse 2D covariance (a, b, c) of [[a, b], [b, c]] after the eps2d blur.
    depths:  (C, N) camera-space z.
    radii:   (C, N, 2) int32 per-axis pixel radii; 0 = culled (behind near plane, outside the image,
             degenerate).
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor


def project_gaussians(
    means: Tensor,  # (N, 3)
    covars: Tensor,  # (N, 3, 3)
    viewmats: Tensor,  # (C, 4, 4) world-to-camera, OpenCV axes
    Ks: Tensor,  # (C, 3, 3)
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    camera_model: str = "pinhole",
) -> Projected:
    """EWA projection, identical to gsplat's ``fully_fused_projection`` for ``camera_model``
    "pinhole" (perspective) or "ortho" (orthographic: fx, fy are pixels per world unit, a
    camera-space point (x, y, z) lands at (fx x + cx, fy y + cy), the Jacobian is constant
    diag(fx, fy); near/far culling on z and the 3.33-sigma radii are the same for both)."""
    if camera_model not in ("pinhole", "ortho"):
        raise ValueError(f"camera_model must be 'pinhole' or 'ortho', got {camera_model!r}")
    r = viewmats[:, :3, :3]  # (C, 3, 3)
    t = viewmats[:, :3, 3]  # (C, 3)
    means_c = torch.einsum("cij,nj->cni", r, means) + t[:, None, :]  # (C, N, 3)
    covars_c = torch.einsum("cij,njk,clk->cnil", r, covars, r)  # (C, N, 3, 3)

    tx, ty, tz = means_c.unbind(-1)
    if camera_model == "ortho":
        fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
        zero = torch.zeros_like(tz)
        jac = torch.stack([fx.expand_as(tz), zero, zero, zero, fy.expand_as(tz), zero], dim=-1)
        jac = jac.reshape(tz.shape + (2, 3))  # (C, N, 2, 3)
        cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # (C, N, 2, 2)
        means2d = means_c[..., :2] * torch.stack([Ks[:, 0, 0], Ks[:, 1, 1]], -1)[:, None, :] + torch.stack(
            [Ks[:, 0, 2], Ks[:, 1, 2]], -1
        )[:, None, :]  # (C, N, 2)
        return _finish(means2d, cov2d, tz, width, height, eps2d, near_plane, far_plane)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    txc = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    tyc = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(tz)
    jac = torch.stack([fx / tz, zero, -fx * txc / tz**2, zero, fy / tz, -fy * tyc / tz**2], dim=-1)
    jac = jac.reshape(tz.shape + (2, 3))  # (C, N, 2, 3)
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # (C, N, 2, 2)
    means2d = torch.einsum("cij,cnj->cni", Ks[:, :2, :3], means_c) / tz[..., None]  # (C, N, 2)
    return _finish(means2d, cov2d, tz, width, height, eps2d, near_plane, far_plane)


def _finish(
    means2d: Tensor,  # (C, N, 2)
    cov2d: Tensor,  # (C, N, 2, 2)
    tz: Tensor,  # (C, N)
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    far_plane: float,
) -> Projected:
    """eps2d blur, conics, radii and culling shared by both camera models."""
    cov2d = cov2d + torch.eye(2, dtype=cov2d.dtype, device=cov2d.device) * eps2d
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = (a * c - cov2d[..., 0, 1] * cov2d[..., 1, 0]).clamp(min=1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # (C, N, 3)

    with torch.no_grad():
        radius = torch.stack([torch.ceil(3.33 * torch.sqrt(a)), torch.ceil(3.33 * torch.sqrt(c))], dim=-1)
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane)
        inside = (
            (means2d[..., 0] + radius[..., 0] > 0)
            & (means2d[..., 0] - radius[..., 0] < width)
            & (means2d[..., 1] + radius[..., 1] > 0)
            & (means2d[..., 1] - radius[..., 1] < height)
        )
        radius = torch.where((valid & inside)[..., None], radius, torch.zeros_like(radius))
        radii = torch.nan_to_num(radius, nan=0.0).int()
    return Projected(means2d, conics, tz, radii)


# Real spherical harmonics constants (as gsplat / 3DGS).
_C0 = 0.2820947917738781
_C1 = 0.48860251190292
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis values (..., (degree+1)^2) for unit directions (..., 3), degree <= 3."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            _C2[0] * xy,
            _C2[1] * yz,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * xz,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * xy * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour from SH: dirs (..., 3) (not necessarily unit), coeffs (..., K, 3) -> (..., 3).

    Uses the first (degree+1)^2 coefficients; like gsplat's rasterization, adds 0.5 and clamps at 0.
    """
    k = (degree + 1) ** 2
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh degree {degree} needs {k} coefficients, got {coeffs.shape[-2]}")
    d = torch.nn.functional.normalize(dirs, p=2, dim=-1)
    bases = sh_bases(degree, d)  # (..., k)
    rgb = (bases[..., None] * coeffs[..., :k, :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)
