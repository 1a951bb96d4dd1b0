"""Scores of generated views against a known object (benchmarks and tests; needs the true mesh).

cross_view_consistency: for every ordered pair of views (i, j) whose cameras are within
``max_angle_deg``, each pixel of view i where the true surface is visible is carried into view j
through the TRUE geometry (its depth at i, projected into j, kept where j sees that same point:
depth agreement within ``depth_tol`` of the object size) and the colours are compared. The score
is the PSNR of all such pixel pairs: 3D-consistent views score high whatever their quality;
views that disagree (warps, colour shifts, different details) score low.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..cameras import Camera
from ..io.types import Mesh


def _depth(mesh: Mesh, cam: Camera) -> np.ndarray:
    """Camera depth of the true surface, inf where it is absent or within a pixel of the
    silhouette (anti-aliased edge pixels mix in the background)."""
    from scipy.ndimage import binary_erosion

    from ..mesh.raster import rasterize_mesh

    d = rasterize_mesh(mesh.vertices, mesh.faces, cam).depth
    inner = binary_erosion(np.isfinite(d), np.ones((3, 3), bool), border_value=0)
    return np.where(inner, d, np.inf).astype(np.float32)


def _view_dir(cam: Camera) -> np.ndarray:
    return cam.world_to_camera[2, :3]


def cross_view_consistency(views: Sequence[np.ndarray], cameras: Sequence[Camera], mesh: Mesh,
                           max_angle_deg: float = 75.0, depth_tol: float = 0.01) -> float:
    """PSNR (dB) of colours carried between overlapping views through the true geometry (see the
    module docstring). views: (H, W, 3|4) in [0, 1] (RGBA is composited on white)."""
    from ..mesh.raster import sample_bilinear

    def rgb(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        return v[..., :3] * v[..., 3:4] + (1.0 - v[..., 3:4]) if v.shape[2] == 4 else v[..., :3]

    size = float(np.ptp(mesh.vertices, axis=0).max())
    depths = [_depth(mesh, c) for c in cameras]
    err, count = 0.0, 0
    for i, ci in enumerate(cameras):
        di = depths[i]
        ys, xs = np.nonzero(np.isfinite(di))
        if len(xs) == 0:
            continue
        pts_cam = np.stack([(xs + 0.5 - ci.cx) / ci.fx * di[ys, xs], (ys + 0.5 - ci.cy) / ci.fy * di[ys, xs],
                            di[ys, xs]], axis=1)
        c2w = np.linalg.inv(ci.world_to_camera)
        world = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
        col_i = rgb(views[i])[ys, xs]
        for j, cj in enumerate(cameras):
            if j == i:
                continue
            cosang = float(np.clip(np.dot(_view_dir(ci), _view_dir(cj)), -1, 1))
            if math.degrees(math.acos(cosang)) > max_angle_deg:
                continue
            xy, z = cj.project(world)
            inside = (z > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < cj.width - 1) & (xy[:, 1] >= 0) & (xy[:, 1] < cj.height - 1)
            px = np.clip(xy[:, 0].astype(int), 0, cj.width - 1)
            py = np.clip(xy[:, 1].astype(int), 0, cj.height - 1)
            visible = inside & (np.abs(depths[j][py, px] - z) < depth_tol * size)
            if not visible.any():
                continue
            col_j = sample_bilinear(rgb(views[j]).astype(np.float32), xy[visible])
            err += float(((col_i[visible] - col_j) ** 2).sum())
            count += int(visible.sum()) * 3
    if count == 0:
        return float("nan")
    mse = err / count
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
