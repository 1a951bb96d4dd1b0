"""Silhouette calibration of an extracted surface against the photos' masks (docs/mesh.md).

The fused surface's position along its normals depends on where the splats' depth is taken
(a few Gaussian standard deviations in front of their peak density), which is only right on
average over objects. The photos' masks say where the surface's outline is: one offset of every
vertex along its normal is chosen so that the mesh's coverage at the photos' cameras matches
their masks best."""

from __future__ import annotations

import logging

import numpy as np

from ..cameras import Camera
from .raster import rasterize_mesh

log = logging.getLogger(__name__)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) (outwards for counter-clockwise faces)."""
    fn = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    n = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def coverage(vertices: np.ndarray, faces: np.ndarray, camera: Camera, supersample: int = 2) -> np.ndarray:
    """Fraction (H, W) of each pixel the mesh covers (``supersample``^2 samples per pixel)."""
    cam = camera.without_distortion()
    s = int(supersample)
    mask = rasterize_mesh(vertices, faces, cam.resized(cam.width * s, cam.height * s)).mask
    return mask.reshape(cam.height, s, cam.width, s).mean((1, 3))


def silhouette_offset(vertices: np.ndarray, faces: np.ndarray, cameras: list[Camera], masks: list[np.ndarray],
                      step: float, span: int = 6, cancel=None) -> float:
    """The offset d (world units, a multiple of ``step`` refined by a parabola through the best
    three) in [-span * step, span * step] minimising sum over views of |coverage(vertices + d n)
    - mask|_1, n the vertex normals: the outline of the mesh best matching the masks."""
    from ..progress import check

    v = np.asarray(vertices, dtype=np.float64)
    n = vertex_normals(v, faces)
    masks = [np.asarray(m, dtype=np.float32) for m in masks]
    offsets = np.arange(-span, span + 1) * step
    errors = []
    for d in offsets:
        check(cancel)
        moved = v + d * n
        errors.append(sum(float(np.abs(coverage(moved, faces, c) - m).sum()) for c, m in zip(cameras, masks)))
    e = np.asarray(errors)
    k = int(np.argmin(e))
    best = float(offsets[k])
    if 0 < k < len(e) - 1:
        curvature = e[k - 1] - 2 * e[k] + e[k + 1]
        if curvature > 0:
            best += 0.5 * (e[k - 1] - e[k + 1]) / curvature * step
    log.info("silhouette offset %.4f (%.2f steps; mask error %.0f -> %.0f px)", best, best / step,
             e[len(e) // 2], e[k])
    return best
