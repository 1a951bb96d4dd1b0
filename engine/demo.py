"""A procedural test object of our own: a textured "pawn" with a handle and a nose.

``viewforge demo`` renders it into a posed set, and tests use it wherever they need a textured
mesh without third-party assets. Everything is made here with numpy, deterministically (the same
arrays on every call and machine):

* **Body**: a surface of revolution about +Z (a pawn/vase profile: foot, belly, waist, collar and
  a round head), closed at both poles.
* **Handle**: a torus in the X-Z plane on the +X side, half sunk into the body (a jug handle).
* **Nose**: an ellipsoid on the +Y side. Handle and nose together break every rotational and
  mirror symmetry, so the pose of any view is unambiguous.
* **Texture**: one RGB atlas (``texture_size`` square) with a coloured checkerboard, hue and value
  gradients, rings and stripes: fine detail everywhere, so photometric reconstruction has
  something to lock on to. UVs: body on the top 70 % of the atlas, handle bottom-left, nose
  bottom-right.

Each part is a closed surface with outward (counter-clockwise) faces; the parts interpenetrate
rather than being boolean-merged ("watertight-ish"). Vertices are split along UV seams only; the
vertex normals are smooth across seams. The object stands on z = 0, about 2 units tall, Z up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .io.types import Mesh


@dataclass(frozen=True)
class DemoConfig:
    """Resolution of the demo object.

    segments: vertices around the body (the handle and nose use fractions of it).
    rings: vertex rings along the body's profile, poles included.
    texture_size: side of the square texture atlas in pixels.
    """

    segments: int = 96
    rings: int = 56
    texture_size: int = 1024


# Body profile (radius, height) from the bottom pole to the top pole; a Catmull-Rom spline runs
# through these points and is resampled uniformly by arc length.
_PROFILE = np.array(
    [
        [0.00, 0.00],
        [0.42, 0.00],
        [0.62, 0.03],
        [0.66, 0.10],
        [0.58, 0.20],
        [0.50, 0.38],
        [0.55, 0.62],
        [0.48, 0.88],
        [0.30, 1.10],
        [0.22, 1.30],
        [0.36, 1.40],
        [0.34, 1.47],
        [0.22, 1.52],
        [0.30, 1.64],
        [0.33, 1.78],
        [0.27, 1.92],
        [0.14, 2.00],
        [0.00, 2.02],
    ]
)


def _catmull_rom(points: np.ndarray, samples_per_segment: int = 64) -> np.ndarray:
    """Dense polyline (N, 2) through ``points`` (centripetal-free, uniform Catmull-Rom)."""
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(points[-1:])
    return np.concatenate(out)


def _resample_by_length(line: np.ndarray, n: int) -> np.ndarray:
    """``n`` points spaced uniformly by arc length along a polyline (N, 2)."""
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    target = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(target, s, line[:, k]) for k in range(line.shape[1])], axis=1)


def _grid_faces(rows: int, cols: int, pole_first: bool, pole_last: bool) -> np.ndarray:
    """Triangles of a (rows, cols + 1) vertex grid, row-major; rows go up, columns go around.

    Counter-clockwise seen from outside when columns increase counter-clockwise about the axis
    and rows increase along it. Triangles that would be degenerate at a pole row are skipped.
    """
    i, j = np.meshgrid(np.arange(rows - 1), np.arange(cols), indexing="ij")
    i, j = i.ravel(), j.ravel()
    w = cols + 1
    a, b = i * w + j, i * w + j + 1
    c, d = (i + 1) * w + j + 1, (i + 1) * w + j
    keep1 = np.ones_like(i, dtype=bool) if not pole_first else i > 0
    keep2 = np.ones_like(i, dtype=bool) if not pole_last else i < rows - 2
    t1 = np.stack([a, b, c], axis=1)[keep1]
    t2 = np.stack([a, c, d], axis=1)[keep2]
    return np.concatenate([t1, t2]).astype(np.int64)


def _uv_rect(u: np.ndarray, v: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    u0, v0, u1, v1 = rect
    return np.stack([u0 + (u1 - u0) * u, v0 + (v1 - v0) * v], axis=-1)


def _body(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prof = _resample_by_length(_catmull_rom(_PROFILE), cfg.rings)
    prof[0, 0] = prof[-1, 0] = 0.0
    r, z = np.maximum(prof[:, 0], 0.0), prof[:, 1]
    u = np.linspace(0.0, 1.0, cfg.segments + 1)
    theta = 2 * math.pi * u
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    zz = np.repeat(z[:, None], cfg.segments + 1, axis=1)
    verts = np.stack([rr * np.cos(tt), rr * np.sin(tt), zz], axis=-1).reshape(-1, 3)
    vv = np.repeat(np.linspace(0.0, 1.0, cfg.rings)[:, None], cfg.segments + 1, axis=1)
    uv = _uv_rect(np.broadcast_to(u, vv.shape), vv, (0.0, 0.3, 1.0, 1.0)).reshape(-1, 2)
    faces = _grid_faces(cfg.rings, cfg.segments, pole_first=True, pole_last=True)
    return verts, faces, uv


def _handle(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Torus in the X-Z plane, centred just outside the body's belly on the +X side."""
    major, minor = 0.36, 0.075
    centre = np.array([0.62, 0.0, 0.85])
    n_major, n_minor = max(cfg.segments // 2, 8), max(cfg.segments // 6, 6)
    # rows: around the tube (psi), columns: around the major circle (phi). For outward faces the
    # column direction x row direction must point out of the tube: phi x psi = outward with
    # e1 = +X, e2 = +Z, n = e1 x e2 = -Y.
    psi = np.linspace(0.0, 2 * math.pi, n_minor + 1)
    phi = np.linspace(0.0, 2 * math.pi, n_major + 1)
    pp, ff = np.meshgrid(psi, phi, indexing="ij")
    e1, e2, nrm = np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0, -1.0, 0])
    radial = np.cos(ff)[..., None] * e1 + np.sin(ff)[..., None] * e2
    pts = centre + (major + minor * np.cos(pp))[..., None] * radial + (minor * np.sin(pp))[..., None] * nrm
    verts = pts.reshape(-1, 3)
    u = ff / (2 * math.pi)
    v = pp / (2 * math.pi)
    uv = _uv_rect(u, v, (0.0, 0.0, 0.49, 0.28)).reshape(-1, 2)
    faces = _grid_faces(n_minor + 1, n_major, pole_first=False, pole_last=False)
    return verts, faces, uv


def _nose(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ellipsoid pointing along +Y, sunk into the body's collar."""
    n_seg, n_ring = max(cfg.segments // 3, 8), max(cfg.segments // 6, 6)
    centre = np.array([0.0, 0.40, 1.70])
    radii = np.array([0.11, 0.22, 0.09])  # along the local axes below
    # Local frame: axis a = +Y (the pole axis), around it b = +Z, c = +X (b x c = a keeps faces outward).
    a, b, c = np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), np.array([1.0, 0, 0])
    lat = np.linspace(-math.pi / 2, math.pi / 2, n_ring)
    lon = np.linspace(0.0, 2 * math.pi, n_seg + 1)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    cos_la = np.cos(la)
    cos_la[0] = cos_la[-1] = 0.0
    pts = (
        centre
        + (radii[1] * np.sin(la))[..., None] * a
        + (radii[2] * cos_la * np.cos(lo))[..., None] * b
        + (radii[0] * cos_la * np.sin(lo))[..., None] * c
    )
    verts = pts.reshape(-1, 3)
    uv = _uv_rect(lo / (2 * math.pi), (la + math.pi / 2) / math.pi, (0.51, 0.0, 1.0, 0.28)).reshape(-1, 2)
    faces = _grid_faces(n_ring, n_seg, pole_first=True, pole_last=True)
    return verts, faces, uv


def _smooth_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, shared by vertices at the same position (smooth across seams)."""
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    key = np.round(verts / 1e-6).astype(np.int64)
    _, group = np.unique(key, axis=0, return_inverse=True)
    group = group.ravel()
    acc = np.zeros((group.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, group[faces[:, k]], fn)
    n = acc[group]
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.maximum(norm, 1e-12)).astype(np.float32)


def demo_texture(size: int = 1024) -> np.ndarray:
    """The demo's texture atlas: (size, size, 3) uint8, row 0 = top."""
    h = w = int(size)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (x + 0.5) / w, 1.0 - (y + 0.5) / h  # uv of each pixel (v up)
    # Hue runs around (u), value and saturation change along v: every texel has a distinct colour.
    hue = (u + 0.35 * v) % 1.0
    sat = 0.55 + 0.35 * np.cos(2 * math.pi * 3 * v) ** 2
    val = 0.55 + 0.4 * v
    checker = ((np.floor(u * 16) + np.floor(v * 16)) % 2).astype(np.float64)
    val = val * (0.72 + 0.28 * checker)
    rgb = _hsv_to_rgb(hue, sat, val)
    # Rings of varying colour.
    rng = np.random.default_rng(20240601)
    for _ in range(14):
        cu, cv = rng.uniform(0.05, 0.95, size=2)
        radius = rng.uniform(0.02, 0.07)
        d = np.hypot(u - cu, v - cv)
        ring = np.abs(d - radius) < 0.006
        disk = d < radius * 0.45
        colour = _hsv_to_rgb(np.array(rng.uniform()), np.array(0.9), np.array(0.95))
        rgb[ring] = colour
        rgb[disk] = 1.0 - colour
    # Thin dark stripes every 1/32 in u and a few diagonal bands.
    stripes = (np.abs(((u * 32) % 1.0) - 0.5) > 0.47) & (v > 0.3)
    rgb[stripes] *= 0.35
    diag = np.abs(((u + v) * 6) % 1.0 - 0.5) < 0.02
    rgb[diag] = 0.96
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def noise_texture(size: int = 1024, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 multi-scale luminance noise with a slow colour tint: unique detail
    everywhere, for feature matching (structure from motion, pose refinement) on the demo shape
    (``replace(demo_mesh(...), texture=noise_texture())``); the demo's own texture repeats."""
    import cv2

    rng = np.random.default_rng(seed)
    lum = np.zeros((size, size), np.float32)
    for cell, amp in ((12, 0.6), (48, 0.4)):
        small = rng.random((size // cell + 1, size // cell + 1)).astype(np.float32)
        lum += amp * cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)[:size, :size]
    lum = np.clip((lum - lum.mean()) / (3 * lum.std()) + 0.5, 0, 1)
    hue = cv2.resize(rng.random((5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return (np.clip(lum[..., None] * (0.5 + 0.5 * hue), 0, 1) * 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    h, s, v = np.broadcast_arrays(np.asarray(h, float), np.asarray(s, float), np.asarray(v, float))
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(h.shape + (3,))
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[m] = np.stack([r[m], g[m], b[m]], axis=-1)
    return out


def demo_mesh(config: DemoConfig = DemoConfig()) -> Mesh:
    """The procedural demo object as an engine :class:`Mesh` (Z up, standing on z = 0).

    With the default config: about 13k triangles, a 1024 px texture. Deterministic.
    """
    parts = [_body(config), _handle(config), _nose(config)]
    verts, faces, uvs, offset = [], [], [], 0
    for v, f, uv in parts:
        verts.append(v)
        faces.append(f + offset)
        uvs.append(uv)
        offset += len(v)
    v = np.concatenate(verts)
    f = np.concatenate(faces)
    uv = np.concatenate(uvs)
    n = _smooth_normals(v, f)
    return Mesh(
        vertices=v.astype(np.float32),
        faces=f.astype(np.int32),
        normals=n,
        uvs=uv.astype(np.float32),
        texture=demo_texture(config.texture_size),
        name="viewforge_demo",
    )
