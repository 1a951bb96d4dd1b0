"""UV unwrapping (xatlas) and base-colour baking from posed images.

A texel's colour is the weighted mean of the images that see its surface point: visible (the
image's z-buffer of the mesh agrees with the point's depth), inside the image's mask, weighted
by cos(viewing angle)^power. Photos take precedence; texels no photo sees take the splat renders'
colour; texels nothing sees, and the gutter between UV charts, are filled by push-pull
(docs/mesh.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..cameras import Camera
from ..errors import MeshError
from ..progress import CancelToken, ProgressCallback, check, report
from .raster import interpolate, rasterize_mesh, rasterize_uv, sample_bilinear

log = logging.getLogger(__name__)


@dataclass
class BakeView:
    """One image to bake from: camera, rgb (H, W, 3) float in [0, 1], optional mask (H, W)."""

    camera: Camera
    rgb: np.ndarray
    mask: np.ndarray | None = None


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 4):
    """xatlas UV atlas. Returns (vmapping (V',) index of each new vertex in ``vertices``, faces
    (F, 3) into the new vertices, uvs (V', 2)); vertices are split along seams; uvs' origin is
    the bottom-left (Mesh convention)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    # xatlas' v runs down the image; ours runs up
    uvs = np.asarray(uvs, dtype=np.float64).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]
    return np.asarray(vmapping, dtype=np.int64), np.asarray(indices, dtype=np.int64), uvs


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def _accumulate(points, normals, views: list[BakeView], vertices, faces, tol: float, power: float,
                progress, cancel, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Weighted colour sum (N, 3) and weight (N,) over the views for surface points (N, 3)."""
    acc = np.zeros((len(points), 3))
    wsum = np.zeros(len(points))
    for k, view in enumerate(views):
        check(cancel)
        cam = view.camera.without_distortion()
        frags = rasterize_mesh(vertices, faces, cam)
        xy, z = cam.project(points)
        ok = (z > 1e-6) & (xy[:, 0] >= 0) & (xy[:, 0] < cam.width) & (xy[:, 1] >= 0) & (xy[:, 1] < cam.height)
        idx = np.nonzero(ok)[0]
        px = xy[idx, 0].astype(np.int64)
        py = xy[idx, 1].astype(np.int64)
        zbuf = frags.depth[py, px]
        vis = np.abs(zbuf - z[idx]) <= tol + 0.002 * z[idx]
        idx = idx[vis]  # may be empty: the view still counts for progress
        if view.mask is None:
            colour = sample_bilinear(view.rgb.astype(np.float32), xy[idx])
            cover = np.ones(len(idx))
        else:
            # premultiplied lookup: the background's RGB under alpha 0 must not bleed into edges
            m = view.mask.astype(np.float32)[..., None]
            premult = sample_bilinear(np.concatenate([view.rgb.astype(np.float32) * m, m], axis=2), xy[idx])
            cover = premult[:, 3]
            colour = premult[:, :3] / np.maximum(cover, 1e-6)[:, None]
            keep = cover > 0.5
            idx, colour, cover = idx[keep], colour[keep], cover[keep]
        to_cam = cam.center[None, :] - points[idx]
        to_cam /= np.maximum(np.linalg.norm(to_cam, axis=1, keepdims=True), 1e-20)
        cos = np.abs(np.einsum("nc,nc->n", normals[idx], to_cam))
        w = np.clip(cos, 0.0, 1.0) ** power * cover
        acc[idx] += w[:, None] * colour
        wsum[idx] += w
        report(progress, stage, k + 1, len(views), f"view {k + 1}/{len(views)}")
    return acc, wsum


def push_pull_fill(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of ``image`` (H, W, C) from valid ones (H, W) by a push-pull pyramid
    (averages of valid pixels at coarser levels, pulled back up). Valid pixels keep their value."""
    import cv2

    img = image.astype(np.float32)
    w = valid.astype(np.float32)
    levels = [(img * w[..., None], w)]
    while min(levels[-1][1].shape) > 1:
        c, wt = levels[-1]
        h, wd = wt.shape
        hh, ww = (h + 1) // 2, (wd + 1) // 2
        cp = np.zeros((hh * 2, ww * 2, c.shape[2]), np.float32)
        wp = np.zeros((hh * 2, ww * 2), np.float32)
        cp[:h, :wd], wp[:h, :wd] = c, wt
        c2 = cp.reshape(hh, 2, ww, 2, -1).sum((1, 3))
        w2 = wp.reshape(hh, 2, ww, 2).sum((1, 3))
        levels.append((c2, w2))
    c, wt = levels[-1]
    cur = c / np.maximum(wt, 1e-8)[..., None]
    for c, wt in reversed(levels[:-1]):
        h, wd = wt.shape
        up = cv2.resize(cur, (cur.shape[1] * 2, cur.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(up.shape[0], up.shape[1], -1)[:h, :wd]
        own = c / np.maximum(wt, 1e-8)[..., None]
        a = np.clip(wt, 0.0, 1.0)[..., None]
        cur = own * a + up * (1 - a)
    out = cur.reshape(image.shape).astype(np.float32)
    out[valid] = image[valid]
    return out


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    texture_size: int,
    photos: list[BakeView],
    renders: list[BakeView] | None = None,
    *,
    tolerance: float = 0.01,
    power: float = 4.0,
    min_weight: float = 0.02,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Bake a (size, size, 3) uint8 base-colour texture. ``tolerance``: depth agreement (world
    units, plus 0.2 % of the depth) for a view to count as seeing a point. Returns the texture
    and coverage fractions {"photo", "render", "filled"} of the texels on the surface."""
    frags = rasterize_uv(uvs, faces, texture_size)
    m = frags.mask
    if not m.any():
        raise MeshError("the UV atlas covers no texel", "raise the texture size")
    points = interpolate(frags, faces, np.asarray(vertices, dtype=np.float64))
    normals = face_normals(np.asarray(vertices, dtype=np.float64), faces)[frags.face_id[m]]
    acc, wsum = _accumulate(points, normals, photos, vertices, faces, tolerance, power, progress, cancel, "bake")
    colour = acc / np.maximum(wsum, 1e-12)[:, None]
    from_photo = wsum > min_weight
    need = ~from_photo
    from_render = np.zeros_like(need)
    if renders and need.any():
        sub = np.nonzero(need)[0]
        acc2, w2 = _accumulate(points[sub], normals[sub], renders, vertices, faces, tolerance, power, progress,
                               cancel, "bake_renders")
        got = w2 > 1e-6
        colour[sub[got]] = acc2[got] / w2[got, None]
        from_render[sub[got]] = True
    known = from_photo | from_render
    tex = np.zeros((texture_size, texture_size, 3), np.float32)
    valid = np.zeros((texture_size, texture_size), bool)
    ys, xs = np.nonzero(m)
    tex[ys[known], xs[known]] = colour[known]
    valid[ys[known], xs[known]] = True
    if not valid.any():
        raise MeshError("no image sees the mesh's surface", "check the cameras: the mesh is not in their view")
    tex = push_pull_fill(tex, valid)
    n = float(m.sum())
    stats = {"photo": float(from_photo.sum()) / n, "render": float(from_render.sum()) / n,
             "filled": float((~known).sum()) / n}
    return (np.clip(tex, 0, 1) * 255 + 0.5).astype(np.uint8), stats


def _texel_rows(vertices, faces, uvs, size: int, views: list[BakeView], supersample: int, alpha_min: float,
                cancel) -> tuple:
    """Sparse rows of the linear render model: each photo pixel the mesh covers entirely (and the
    photo's mask is above ``alpha_min``) = the mean over its ``supersample``^2 samples of the
    bilinear texel lookup at each sample's UV (as ``render_textured`` draws it). Returns (row,
    col (texel index y * size + x), weight, targets (R, 3), number of rows R)."""
    rows, cols, vals, targets = [], [], [], []
    offset = 0
    ss = int(supersample)
    for view in views:
        check(cancel)
        cam = view.camera.without_distortion()
        w, h = cam.width, cam.height
        frags = rasterize_mesh(vertices, faces, cam.resized(w * ss, h * ss))
        m = frags.mask
        full = m.reshape(h, ss, w, ss).sum((1, 3)) == ss * ss
        if view.mask is not None:
            full &= np.asarray(view.mask, dtype=np.float32) > alpha_min
        ys, xs = np.nonzero(m)
        pix = (ys // ss) * w + xs // ss
        keep = full.reshape(-1)[pix]
        if not keep.any():
            continue
        uv = interpolate(frags, faces, uvs)[keep]
        pix = pix[keep]
        upix, row = np.unique(pix, return_inverse=True)
        x = np.clip(uv[:, 0] * size - 0.5, 0, size - 1)
        y = np.clip((1.0 - uv[:, 1]) * size - 0.5, 0, size - 1)
        x0 = np.floor(x).astype(np.int64)
        y0 = np.floor(y).astype(np.int64)
        x1 = np.minimum(x0 + 1, size - 1)
        y1 = np.minimum(y0 + 1, size - 1)
        fx, fy = x - x0, y - y0
        for yy, xx, wt in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x1, fx * (1 - fy)), (y1, x0, (1 - fx) * fy),
                           (y1, x1, fx * fy)):
            rows.append(row + offset)
            cols.append(yy * size + xx)
            vals.append(wt / (ss * ss))
        targets.append(view.rgb.reshape(-1, view.rgb.shape[-1])[upix, :3].astype(np.float64))
        offset += len(upix)
    if not rows:
        return None
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), np.concatenate(targets), offset


def refine_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    texture: np.ndarray,
    photos: list[BakeView],
    *,
    iterations: int = 30,
    damping: float = 3.0,
    supersample: int = 2,
    alpha_min: float = 0.99,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Texel colours solved by least squares so that the textured mesh, rendered as
    ``render_textured`` draws it, reproduces the photos (docs/mesh.md): minimise
    sum_pixels |A t - photo|^2 + lambda |t - t0|^2 over the texels t the photos constrain, where
    row A_p of a pixel holds the bilinear weights of its ``supersample``^2 samples and t0 is the
    averaging bake ``texture`` (uint8 or float in [0, 1], (S, S, 3)). lambda = ``damping`` x the
    mean diagonal of A^T A (the texture has more texels than the photos have pixels: the prior
    keeps the unconstrained directions at the bake). Solved by Jacobi-preconditioned conjugate
    gradients on the normal equations, ``iterations`` steps from t0. Only pixels the mesh
    covers entirely and the photo's mask keeps (> ``alpha_min``) count: silhouettes do not
    bleed the background into the texture. Returns the texture as uint8."""
    import scipy.sparse as sp

    size = texture.shape[0]
    t0_full = texture[..., :3].astype(np.float64)
    if texture.dtype == np.uint8:
        t0_full = t0_full / 255.0
    out = t0_full.reshape(-1, 3).copy()
    built = _texel_rows(np.asarray(vertices, dtype=np.float64), faces, np.asarray(uvs, dtype=np.float64), size,
                        photos, supersample, alpha_min, cancel)
    if built is not None and iterations > 0:
        row, col, val, target, n = built
        used, col = np.unique(col, return_inverse=True)
        a = sp.csr_matrix((val, (row, col)), shape=(n, len(used)))
        at = a.T.tocsr()
        diag = np.asarray(a.multiply(a).sum(axis=0)).ravel()
        lam = damping * float(diag.mean())
        t0 = out[used]

        def normal(z):
            return at @ (a @ z) + lam * z

        x = t0.copy()
        res = at @ target + lam * t0 - normal(x)
        precond = 1.0 / (diag + lam)
        z = res * precond[:, None]
        p = z.copy()
        rz = (res * z).sum(0)
        for k in range(iterations):
            check(cancel)
            ap = normal(p)
            step = rz / np.maximum((p * ap).sum(0), 1e-30)
            x += p * step
            res -= ap * step
            z = res * precond[:, None]
            rz_new = (res * z).sum(0)
            p = z + p * (rz_new / np.maximum(rz, 1e-30))
            rz = rz_new
            report(progress, "texture_refine", k + 1, iterations, f"step {k + 1}/{iterations}")
        log.info("texture refine: %d pixels, %d texels, rms %.4f -> %.4f", n, len(used),
                 float(np.sqrt(np.mean((a @ t0 - target) ** 2))), float(np.sqrt(np.mean((a @ x - target) ** 2))))
        out[used] = np.clip(x, 0.0, 1.0)
    return (out.reshape(size, size, 3) * 255 + 0.5).astype(np.uint8)
