"""Surface extraction from fitted Gaussians: TSDF fusion of rendered depth and alpha from
virtual views around the object, then marching cubes (docs/mesh.md has the why and the math)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..cameras import Camera, look_at
from ..errors import MeshError
from ..progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)


@dataclass
class Volume:
    """A fused signed-distance grid. values: (X, Y, Z) float32, negative inside, in units of the
    truncation distance. origin: (3,) world position of voxel (0, 0, 0). voxel: edge length."""

    values: np.ndarray
    origin: np.ndarray
    voxel: float


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (golden-angle spiral)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def splat_bounds(splats, cameras: list[Camera] | None = None, opacity: float = 0.5,
                 percentile: float = 0.5, pad: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners of a box around the opaque Gaussians (robust percentiles, padded),
    clipped to the cube the cameras look at when they are given."""
    import torch

    means = splats.means.detach().cpu().numpy()
    alive = torch.sigmoid(splats.opacities.detach().cpu()).numpy() > opacity
    pts = means[alive] if alive.sum() >= 16 else means
    if len(pts) == 0:
        raise MeshError("the reconstruction has no Gaussians", "check that the photos show the object")
    lo = np.percentile(pts, percentile, axis=0)
    hi = np.percentile(pts, 100 - percentile, axis=0)
    if cameras:
        from ..splat.model import scene_bounds

        centre, half = scene_bounds(cameras)
        lo = np.maximum(lo, centre - half)
        hi = np.minimum(hi, centre + half)
    size = np.maximum(hi - lo, 1e-6)
    extent = float(size.max())
    lo = lo - pad * extent
    hi = hi + pad * extent
    if not np.all(np.isfinite(lo)) or not np.all(hi > lo):
        raise MeshError("the reconstruction's bounds are degenerate", "check the cameras and masks")
    return lo, hi


def virtual_cameras(lo: np.ndarray, hi: np.ndarray, n: int, size: int, fov_deg: float = 40.0) -> list[Camera]:
    """``n`` cameras on a sphere around the box, each seeing all of it, ``size`` px square."""
    centre = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    half = math.radians(fov_deg) / 2
    dist = radius / math.sin(half) * 1.02
    f = 0.5 * size / math.tan(half)
    cams = []
    for k, d in enumerate(fibonacci_directions(n)):
        eye = centre + dist * d
        up = (0.0, 0.0, 1.0) if abs(d[2]) < 0.98 else (0.0, 1.0, 0.0)
        cams.append(Camera(f, f, size / 2, size / 2, size, size, look_at(eye, centre, up), name=f"virtual_{k:03d}"))
    return cams


def fuse_tsdf(
    views: list[tuple[Camera, np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    resolution: int,
    *,
    alpha_threshold: float = 0.5,
    truncation_voxels: float = 3.0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Fuse (camera, depth (H, W), alpha (H, W)) views into a truncated signed-distance grid of
    ``resolution`` voxels along the box's longest side.

    Per view and voxel (nearest pixel of its projection): where the rendered alpha is below
    ``alpha_threshold`` the ray is empty and the voxel is carved (outside, whatever other views
    say: the visual hull); where the pixel is solid, s = (depth - z) / trunc is averaged, clamped
    to [-1, 1], unless s < -1 (the voxel is hidden behind the surface: no evidence). Carving only
    overrides, it is not averaged in: averaged +1 votes from views that see a voxel near their
    silhouette would pull the surface inwards. Voxels that every view sees only from behind a
    surface are inside (-1); voxels no view sees are outside.
    """
    import torch

    extent = float(np.max(hi - lo))
    voxel = extent / resolution
    dims = np.maximum(np.ceil((hi - lo) / voxel).astype(int) + 1, 2)
    axes = [torch.arange(int(n), dtype=torch.float32) * voxel + float(o) for n, o in zip(dims, lo)]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1)], dim=1)  # (N, 3)
    del gx, gy, gz
    n = pts.shape[0]
    trunc = truncation_voxels * voxel
    sdf = torch.zeros(n)
    weight = torch.zeros(n)
    seen = torch.zeros(n, dtype=torch.bool)
    carved = torch.zeros(n, dtype=torch.bool)
    active = torch.arange(n)  # voxels not carved yet: carving is final, so carved ones are skipped
    for k, (cam, depth, alpha) in enumerate(views):
        check(cancel)
        cam = cam.without_distortion()
        r = torch.tensor(cam.world_to_camera[:3, :3], dtype=torch.float32)
        t = torch.tensor(cam.world_to_camera[:3, 3], dtype=torch.float32)
        pc = pts[active] @ r.T + t
        z = pc[:, 2]
        zs = z.clamp_min(1e-6)
        u = cam.fx * pc[:, 0] / zs + cam.cx
        v = cam.fy * pc[:, 1] / zs + cam.cy
        inside = (z > 1e-6) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        sel = torch.nonzero(inside).squeeze(1)
        idx = active[sel]
        px = u[sel].long().clamp(0, cam.width - 1)
        py = v[sel].long().clamp(0, cam.height - 1)
        a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[py, px]
        d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[py, px]
        empty = a < alpha_threshold
        carved[idx[empty]] = True
        s = torch.nan_to_num((d - z[sel]) / trunc, nan=1.0, posinf=1.0, neginf=-2.0)
        use = (s >= -1.0) & ~empty
        j = idx[use]
        sdf.index_add_(0, j, s[use].clamp(-1.0, 1.0))
        weight.index_add_(0, j, torch.ones_like(j, dtype=torch.float32))
        seen[idx] = True
        active = active[~carved[active]]
        report(progress, "fuse", k + 1, len(views), f"depth view {k + 1}/{len(views)}")
    values = torch.where(weight > 0, sdf / weight.clamp_min(1e-6), torch.where(seen, -1.0, 1.0))
    values = torch.where(carved, torch.ones_like(values), values)
    return Volume(values.reshape(*[int(x) for x in dims]).numpy(), np.asarray(lo, dtype=np.float64), voxel)


def marching_cubes(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of the volume -> vertices (V, 3) world, faces (F, 3) counter-clockwise
    seen from outside. The grid is padded with outside so the surface is closed."""
    from skimage import measure

    vals = np.pad(volume.values, 1, mode="constant", constant_values=1.0)
    if vals.min() >= 0 or vals.max() <= 0:
        raise MeshError(
            "the reconstruction has no surface (nothing solid was seen from the virtual views)",
            "check that the photos show the object and the masks are not empty",
        )
    # skimage's default treats values above the level as inside: negate (ours are negative inside)
    verts, faces, _, _ = measure.marching_cubes(-vals, level=0.0, spacing=(volume.voxel,) * 3)
    verts = verts - volume.voxel + volume.origin  # undo the padding
    # skimage winds its triangles clockwise seen from the high (here: inside) side's opposite
    return verts.astype(np.float64), np.ascontiguousarray(faces[:, ::-1], dtype=np.int64)
