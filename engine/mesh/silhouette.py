"""Silhouette calibration of an extracted surface against the photos' masks (docs/mesh.md).

The fused surface's position along its normals depends on where the splats' depth is taken
(a few Gaussian standard deviations in front of their peak density), which is only right on
average over objects. The photos' masks say where the surface's outline is: one offset of every
vertex along its normal is chosen so that the mesh's coverage at the photos' cameras matches
their masks best (:func:`silhouette_offset`); then each vertex that is part of an outline in some
photo moves along its normal onto that photo's mask edge, the offsets smoothed over the mesh
(:func:`silhouette_refine`)."""

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


def _signed_distance(mask: np.ndarray, upsample: int = 4) -> np.ndarray:
    """Signed distance (pixels, > 0 inside) to the 0.5 level of a soft mask (H, W), sampled at
    pixel centres; ``upsample`` x finer for sub-pixel precision. Returns an (H u, W u) map."""
    from ..images import mask_signed_distance

    return -mask_signed_distance(mask, 0.5, upsample)


def _sample(grid: np.ndarray, uv: np.ndarray, upsample: int) -> np.ndarray:
    """Bilinear lookup of an ``upsample`` x finer map at pixel coordinates ``uv`` (N, 2)."""
    from .raster import sample_bilinear

    xy = np.asarray(uv, dtype=np.float64) * upsample - 0.5
    return sample_bilinear(grid[..., None], xy)[:, 0]


def silhouette_refine(vertices: np.ndarray, faces: np.ndarray, cameras: list[Camera], masks: list[np.ndarray],
                      max_offset: float, *, iterations: int = 3, contour_px: float = 1.5, grazing: float = 0.35,
                      smoothness: float = 4.0, cancel=None) -> np.ndarray:
    """Per-vertex offsets along the normals so the mesh's outline follows the masks (docs/mesh.md).

    Each round, in each view: the vertices on the mesh's own outline (their projection within
    ``contour_px`` pixels of the rendered coverage's edge and their normal within ``grazing``
    (|cos|) of perpendicular to the ray) read the mask's signed distance at their projection
    (> 0: the mask reaches further out, so the surface should move outwards) and turn it into a
    world offset along the normal by the normal's projected length in pixels. Observations are
    averaged per vertex (weight 1 - |cos| / grazing), spread to the vertices no outline sees by
    a graph-Laplacian smoothing ``(W + smoothness L) d = W d_obs``, clipped to +-``max_offset``
    and applied. Returns the moved vertices (V, 3)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from ..progress import check

    v = np.asarray(vertices, dtype=np.float64).copy()
    f = np.asarray(faces, dtype=np.int64)
    nv = len(v)
    up = 4
    sdfs = [_signed_distance(m, up) for m in masks]
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(nv, nv)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    lap = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
    total = np.zeros(nv)
    for _ in range(int(iterations)):
        n = vertex_normals(v, f)
        num = np.zeros(nv)
        den = np.zeros(nv)
        for cam, sdf_photo in zip(cameras, sdfs):
            check(cancel)
            cam = cam.without_distortion()
            cov = coverage(v, f, cam, supersample=up)
            sdf_mesh = _signed_distance(cov, up)
            uv, z = cam.project(v)
            ok = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] < cam.height)
            ray = v - cam.center
            ray /= np.linalg.norm(ray, axis=1, keepdims=True)
            cos = np.abs((ray * n).sum(1))
            idx = np.nonzero(ok & (cos < grazing))[0]
            if len(idx) == 0:
                continue
            on_edge = np.abs(_sample(sdf_mesh, uv[idx], up)) < contour_px
            idx = idx[on_edge]
            if len(idx) == 0:
                continue
            # pixels moved per world unit along the normal (finite difference of the projection)
            eps = 1e-3 * max(float(np.linalg.norm(cam.center)), 1.0)
            uv2, _ = cam.project(v[idx] + eps * n[idx])
            rate = np.linalg.norm(uv2 - uv[idx], axis=1) / eps
            good = rate > 1e-6
            idx, rate = idx[good], rate[good]
            d_px = _sample(sdf_photo, uv[idx], up) - _sample(sdf_mesh, uv[idx], up)
            w = 1.0 - cos[idx] / grazing
            np.add.at(num, idx, w * d_px / rate)
            np.add.at(den, idx, w)
        seen = den > 0
        if not seen.any():
            break
        d_obs = np.where(seen, num / np.maximum(den, 1e-12), 0.0)
        wdiag = sp.diags(np.where(seen, den / max(float(np.median(den[seen])), 1e-12), 0.0) + 1e-6)
        d = spla.spsolve((wdiag + smoothness * lap).tocsc(), wdiag @ d_obs)
        d = np.clip(d, -max_offset - total, max_offset - total)
        total += d
        v = v + d[:, None] * n
        log.info("silhouette refine: %d of %d vertices on an outline, offsets median |d| %.4f, max %.4f",
                 int(seen.sum()), nv, float(np.median(np.abs(d))), float(np.abs(d).max()))
    return v
