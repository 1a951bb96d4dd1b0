"""The Gaussian-splat model: parameters, initialisation, 3DGS .ply I/O.

Parameters are stored as gsplat's trainers store them (and as gsplat's strategies expect): a
dict of tensors ``means (N,3)``, ``scales (N,3)`` (log), ``quats (N,4)`` (wxyz, unnormalised),
``opacities (N,)`` (logit), ``sh0 (N,1,3)`` and ``shN (N,K-1,3)`` spherical-harmonics
coefficients, K = (sh_degree+1)^2.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..cameras import Camera
from ..errors import InputError, PosedSetError
from ..io.atomic import atomic_file
from ..io.types import PosedSet

if TYPE_CHECKING:  # torch is imported inside functions (engine import stays light)
    import torch

log = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814


@dataclass(frozen=True, eq=False)
class Splats:
    """A fitted set of 3D Gaussians (CPU tensors, see module docstring for the layout)."""

    means: "torch.Tensor"  # (N, 3)
    scales: "torch.Tensor"  # (N, 3) log scale
    quats: "torch.Tensor"  # (N, 4) wxyz
    opacities: "torch.Tensor"  # (N,) logit
    sh0: "torch.Tensor"  # (N, 1, 3)
    shN: "torch.Tensor"  # (N, K-1, 3)

    @property
    def num(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.shN.shape[1] + 1))) - 1

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("means", "scales", "quats", "opacities", "sh0", "shN")}

    @staticmethod
    def from_dict(d: dict) -> "Splats":
        return Splats(**{k: d[k].detach().cpu().clone() for k in ("means", "scales", "quats", "opacities", "sh0", "shN")})


# ---------------------------------------------------------------------------------------------
# scene geometry from cameras
# ---------------------------------------------------------------------------------------------


def look_target(cameras: list[Camera]) -> np.ndarray:
    """(3,) point closest (least squares) to all optical axes; the cameras' mean if degenerate."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in cameras:
        d = cam.camera_to_world[:3, 2]
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ cam.center
    if np.linalg.cond(a) > 1e8:
        return np.mean([c.center for c in cameras], axis=0)
    return np.linalg.solve(a, b)


def scene_bounds(cameras: list[Camera]) -> tuple[np.ndarray, float]:
    """Centre and half-size of a cube that holds what the cameras look at."""
    centre = look_target(cameras)
    dists = np.array([np.linalg.norm(c.center - centre) for c in cameras])
    tan_half = max(max(0.5 * c.width / c.fx, 0.5 * c.height / c.fy) for c in cameras)
    half = float(np.median(dists) * tan_half * 1.05)
    return centre, max(half, 1e-6)


def scene_scale(cameras: list[Camera]) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean."""
    centres = np.stack([c.center for c in cameras])
    return float(np.linalg.norm(centres - centres.mean(0), axis=1).max() * 1.1) or 1.0


def visual_hull_points(
    posed: PosedSet, n_points: int, *, grid: int = 64, threshold: float = 0.5, seed: int = 0, min_views: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """Points inside the visual hull of the masks, with their mean observed colour.

    Carves a ``grid``^3 lattice over :func:`scene_bounds`: a point survives if it projects into at
    least ``min_views`` images (all of them when there are fewer) and into the mask (>
    ``threshold``, nearest pixel) of every image it projects into. A point inside one camera's
    view only is carved by no other mask: on an orbit these are the corners of the scene cube
    behind the object, which one photo sees (occluded) and nothing constrains; Gaussians started
    there stay as floaters. ``min_views=2`` leaves them out (the fit's default,
    ``FitConfig.init_min_views``). Returns points (M, 3), colours (M, 3) in [0, 1] and the lattice
    spacing. Raises PosedSetError when the masks are empty or the cameras see nothing in common.
    """
    if posed.masks is None:
        raise PosedSetError("visual hull needs masks", "give RGBA images or use random initialisation")
    if all(float(m.max()) <= threshold for m in posed.masks):
        raise PosedSetError(
            "every mask is empty (alpha is 0 everywhere)",
            "give images whose alpha marks the object, or images without alpha",
        )
    centre, half = scene_bounds(posed.cameras)
    ax = (np.arange(grid) + 0.5) / grid * 2.0 - 1.0
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3) * half + centre
    keep = np.ones(len(pts), bool)
    seen = np.zeros(len(pts), np.int32)
    col = np.zeros((len(pts), 3))
    for cam, img, mask in zip(posed.cameras, posed.images, posed.masks):
        uv, z = cam.without_distortion().project(pts)
        u = np.floor(uv[:, 0]).astype(np.int64)
        v = np.floor(uv[:, 1]).astype(np.int64)
        inside = (z > 1e-6) & (u >= 0) & (v >= 0) & (u < cam.width) & (v < cam.height)
        m = np.zeros(len(pts))
        m[inside] = mask[v[inside], u[inside]]
        keep &= ~inside | (m > threshold)
        seen += inside
        col[inside] += img[v[inside], u[inside]]
    keep &= seen >= max(1, min(min_views, len(posed.cameras)))
    if keep.sum() < 8:
        raise PosedSetError(
            "the masks of the views do not overlap in 3D (empty visual hull)",
            "check that the cameras look at the same object and that their poses are right",
        )
    rng = np.random.default_rng(seed)
    sel = np.flatnonzero(keep)
    spacing = 2.0 * half / grid
    idx = rng.choice(sel, size=n_points, replace=len(sel) < n_points)
    points = pts[idx] + rng.uniform(-0.5, 0.5, (n_points, 3)) * spacing
    colors = col[idx] / np.maximum(seen[idx], 1)[:, None]
    return points, np.clip(colors, 0.0, 1.0), spacing


def random_points(cameras: list[Camera], n_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Uniform points in :func:`scene_bounds` with grey colour (no masks, no points given)."""
    centre, half = scene_bounds(cameras)
    rng = np.random.default_rng(seed)
    pts = centre + rng.uniform(-half, half, (n_points, 3))
    return pts, np.full((n_points, 3), 0.5), 2.0 * half / max(n_points ** (1 / 3), 1.0)


def init_splats(points: np.ndarray, colors: np.ndarray, spacing: float, sh_degree: int = 3,
                init_opacity: float = 0.1, seed: int = 0) -> Splats:
    """Isotropic Gaussians at ``points`` with ``colors`` (DC term), size ~ the point spacing."""
    import torch

    n = len(points)
    if n == 0:
        raise InputError("no initial points", "give a posed set whose cameras see the object")
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    scale = math.log(max(spacing, 1e-8))
    return Splats(
        means=torch.tensor(points, dtype=torch.float32),
        scales=torch.full((n, 3), scale, dtype=torch.float32),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        opacities=torch.full((n,), math.log(init_opacity / (1 - init_opacity)), dtype=torch.float32),
        sh0=((torch.tensor(colors, dtype=torch.float32) - 0.5) / SH_C0)[:, None, :],
        shN=torch.zeros(n, k - 1, 3),
    )


# ---------------------------------------------------------------------------------------------
# 3DGS .ply
# ---------------------------------------------------------------------------------------------


def write_splat_ply(splats: Splats, path: str | os.PathLike) -> None:
    """Write the standard 3DGS .ply (as the reference implementation and SuperSplat/Blender
    3DGS add-ons read it): x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2
    rot_0..3, raw (pre-activation) values, f_rest channel-major. Written atomically."""
    from plyfile import PlyData, PlyElement

    n = splats.num
    rest = splats.shN.detach().cpu().numpy().transpose(0, 2, 1).reshape(n, -1)  # (N, 3*(K-1))
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    fields += [f"f_rest_{i}" for i in range(rest.shape[1])]
    fields += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    data = np.concatenate(
        [
            splats.means.detach().cpu().numpy(),
            np.zeros((n, 3), np.float32),
            splats.sh0.detach().cpu().numpy().reshape(n, 3),
            rest,
            splats.opacities.detach().cpu().numpy().reshape(n, 1),
            splats.scales.detach().cpu().numpy(),
            splats.quats.detach().cpu().numpy(),
        ],
        axis=1,
    ).astype(np.float32)
    arr = np.empty(n, dtype=[(f, "f4") for f in fields])
    for i, f in enumerate(fields):
        arr[f] = data[:, i]
    with atomic_file(path) as tmp:
        PlyData([PlyElement.describe(arr, "vertex")], text=False).write(str(tmp))


def read_splat_ply(path: str | os.PathLike) -> Splats:
    """Read a 3DGS .ply written by :func:`write_splat_ply` or the 3DGS reference code."""
    import torch
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"]
    except Exception as e:  # plyfile raises several types
        raise InputError(f"{path} is not a 3DGS .ply ({e})", "give a .ply written by a 3D Gaussian splatting tool") from None
    names = v.data.dtype.names
    n_rest = len([f for f in names if f.startswith("f_rest_")])
    k_minus_1 = n_rest // 3

    def cols(fields):
        return torch.tensor(np.stack([np.asarray(v[f], np.float32) for f in fields], 1))

    rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(len(v.data), 0)
    return Splats(
        means=cols(["x", "y", "z"]),
        scales=cols(["scale_0", "scale_1", "scale_2"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacities=cols(["opacity"])[:, 0],
        sh0=cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
        shN=rest.reshape(-1, 3, k_minus_1).transpose(1, 2).contiguous(),
    )
