"""Triangle rasterisation on the CPU (numba): z-buffered views of a mesh at a camera, and the
texel-to-surface map of a UV atlas.

Used for visibility when baking textures, for rendering a textured mesh at held-out cameras
(``viewforge eval``) and for the UV-space bake itself. Pixel ``(i, j)`` covers
``[i, i + 1) x [j, j + 1)`` and is sampled at its centre ``(i + 0.5, j + 0.5)``, the engine's
continuous pixel convention (docs/cameras.md). Barycentrics are perspective-correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cameras import Camera

_NEAR = 1e-6


@dataclass
class Fragments:
    """What covers each pixel. face_id: (H, W) int32, -1 where empty. bary: (H, W, 3) float32
    perspective-correct barycentrics of the covering face. depth: (H, W) float32 camera z (inf
    where empty)."""

    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0


def rasterize_screen(xy: np.ndarray, z: np.ndarray, faces: np.ndarray, height: int, width: int,
                     eps: float = 0.0) -> Fragments:
    """Rasterise triangles given per-vertex pixel positions ``xy`` (V, 2) and depths ``z`` (V,).

    Triangles with a vertex at depth <= 0 are skipped; both windings are drawn. ``eps`` widens
    every triangle's edges by about that many pixels (conservative coverage for UV atlases)."""
    face_id = np.full((height, width), -1, dtype=np.int32)
    bary = np.zeros((height, width, 3), dtype=np.float32)
    depth = np.full((height, width), np.inf, dtype=np.float32)
    if len(faces):
        from ._numba_raster import raster

        raster(
            np.ascontiguousarray(xy, dtype=np.float64), np.ascontiguousarray(z, dtype=np.float64),
            np.ascontiguousarray(faces, dtype=np.int64), int(height), int(width), float(eps), face_id, bary, depth,
        )
    return Fragments(face_id, bary, depth)


def rasterize_mesh(vertices: np.ndarray, faces: np.ndarray, camera: Camera) -> Fragments:
    """Z-buffered rasterisation of a mesh (world coordinates) at ``camera`` (pinhole; lens
    distortion is ignored: posed sets are undistorted when loaded)."""
    cam = camera.without_distortion()
    xy, z = cam.project(vertices)
    z = np.where(z > _NEAR, z, -1.0)
    xy = np.nan_to_num(xy, nan=0.0, posinf=0.0, neginf=0.0)
    return rasterize_screen(xy, z, faces, cam.height, cam.width)


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int, eps: float = 1.0) -> Fragments:
    """Texel -> (face, barycentrics) map of a UV layout on a ``size`` x ``size`` texture.

    ``uvs`` (V, 2) have their origin at the bottom-left (Mesh convention); texture row 0 is the
    top. ``eps`` texels of conservative coverage so bilinear lookups at chart borders stay on
    the surface."""
    xy = np.empty((len(uvs), 2), dtype=np.float64)
    xy[:, 0] = uvs[:, 0] * size
    xy[:, 1] = (1.0 - uvs[:, 1]) * size
    return rasterize_screen(xy, np.ones(len(uvs)), faces, size, size, eps=eps)


def interpolate(frags: Fragments, faces: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """Per-pixel interpolation of a per-vertex attribute (V, C) -> (N, C) for the covered pixels
    (in ``np.nonzero(frags.mask)`` order)."""
    m = frags.mask
    tri = faces[frags.face_id[m]]  # (N, 3)
    w = frags.bary[m]  # (N, 3)
    return np.einsum("nk,nkc->nc", w, attribute[tri])


def sample_bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``image`` (H, W, C) at continuous pixel coordinates ``xy`` (N, 2)
    (pixel centres at i + 0.5), clamped at the borders."""
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, w - 1)
    y = np.clip(xy[:, 1] - 0.5, 0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    img = image.reshape(h, w, -1)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass(frozen=True)
class PixelFilter:
    """A renderer's pixel reconstruction filter (separable, as Cycles samples it per axis).

    kind: "box" (support +-width/2), "blackman_harris" or "gaussian" with Cycles' width
    conventions (intern/cycles/scene/film.cpp): Blackman-Harris spans +-width (the window over
    2 x width), the Gaussian has sigma = width / 4 and spans +-1.5 width. width: pixels
    (Cycles' ``filter_width``, default 1.5, Blackman-Harris)."""

    kind: str = "blackman_harris"
    width: float = 1.5

    def weights(self, offset: np.ndarray) -> np.ndarray:
        """Filter weight at ``offset`` pixels from the pixel centre (any shape), 0 outside the support."""
        d = np.abs(np.asarray(offset, dtype=np.float64))
        w = float(self.width)
        if self.kind == "box":
            return (d <= 0.5 * w).astype(np.float64)
        if self.kind == "gaussian":
            return np.where(d <= 1.5 * w, np.exp(-0.5 * (d / (0.25 * w)) ** 2), 0.0)
        if self.kind == "blackman_harris":
            x = 2.0 * np.pi * (d / (2.0 * w) + 0.5)
            bh = 0.35875 - 0.48829 * np.cos(x) + 0.14128 * np.cos(2 * x) - 0.01168 * np.cos(3 * x)
            return np.where(d <= w, bh, 0.0)
        raise ValueError(f"unknown pixel filter {self.kind!r}")

    def matrix(self, n: int, k: int) -> np.ndarray:
        """(n, n k) weights taking n k sub-samples (k per pixel, at their centres) to n pixels;
        rows sum to 1 (the filter renormalised where the image border cuts it)."""
        sub = (np.arange(n * k) + 0.5) / k
        a = self.weights(sub[None, :] - (np.arange(n) + 0.5)[:, None])
        return a / np.maximum(a.sum(1, keepdims=True), 1e-12)


def render_filtered(mesh, camera: Camera, pixel_filter: PixelFilter, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_textured` with ``pixel_filter`` instead of a box: ``supersample`` x
    ``supersample`` samples per pixel, weighted by the filter around each pixel centre (so
    neighbouring pixels share samples, as in a renderer with a wide pixel filter). Colour is
    filtered premultiplied by coverage; returns straight rgb (H, W, 3) and alpha (H, W)."""
    k = max(1, int(supersample))
    rgb, alpha = render_textured(mesh, camera.resized(camera.width * k, camera.height * k), 1)
    ay, ax = pixel_filter.matrix(camera.height, k), pixel_filter.matrix(camera.width, k)
    stack = np.concatenate([rgb * alpha[..., None], alpha[..., None]], 2).astype(np.float64)
    out = np.einsum("iy,yxc,jx->ijc", ay, stack, ax, optimize=True)
    a = np.clip(out[..., 3], 0.0, 1.0)
    return (out[..., :3] / np.maximum(a, 1e-6)[..., None]).clip(0, 1).astype(np.float32), a.astype(np.float32)


def render_textured(mesh, camera: Camera, supersample: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Unlit render of a textured (or vertex-coloured) mesh: rgb (H, W, 3) float32 in [0, 1]
    (straight, not premultiplied; black where nothing covers), and coverage alpha (H, W)
    float32. ``supersample`` x
    ``supersample`` samples per pixel, box-filtered (anti-aliased edges, as a renderer's).
    Surfaces without colour render grey."""
    if supersample > 1:
        big = camera.resized(camera.width * supersample, camera.height * supersample)
        rgb, alpha = render_textured(mesh, big, 1)
        k = supersample
        h, w = camera.height, camera.width
        premult = (rgb * alpha[..., None]).reshape(h, k, w, k, 3).mean((1, 3))
        a = alpha.reshape(h, k, w, k).mean((1, 3))
        return premult / np.maximum(a, 1e-6)[..., None], a
    frags = rasterize_mesh(mesh.vertices, mesh.faces, camera)
    rgb = np.zeros((camera.height, camera.width, 3), dtype=np.float32)
    m = frags.mask
    if m.any():
        if mesh.texture is not None and mesh.uvs is not None:
            tex = mesh.texture[..., :3].astype(np.float32) / 255.0
            uv = interpolate(frags, mesh.faces, mesh.uvs.astype(np.float64))
            size = np.array([tex.shape[1], tex.shape[0]], dtype=np.float64)
            xy = np.stack([uv[:, 0] * size[0], (1.0 - uv[:, 1]) * size[1]], axis=1)
            rgb[m] = sample_bilinear(tex, xy)
        elif mesh.colors is not None:
            rgb[m] = interpolate(frags, mesh.faces, mesh.colors[:, :3].astype(np.float64) / 255.0)
        else:
            rgb[m] = 0.5
    return rgb, m.astype(np.float32)
