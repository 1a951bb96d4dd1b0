"""Mesh quality against a ground truth, as DESIGN.md defines it (the seeds' protocol).

Chamfer distance = mean of the two mean nearest-neighbour distances (not squared) between
``samples`` points drawn uniformly (by area) on each surface; F-score at r = 0.1 = harmonic mean
of precision (predicted points within r of the truth) and recall (true points within r of the
prediction). Both meshes are first mapped by the same similarity that puts the ground truth's
bounding box centre at the origin with its longest side spanning [-1, 1]."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MeshError
from ..io.types import Mesh, PosedSet

FSCORE_RADIUS = 0.1
SAMPLES = 100_000


def sample_surface(mesh: Mesh, count: int, seed: int = 0) -> np.ndarray:
    """``count`` points uniformly distributed by area on the mesh (deterministic for a seed)."""
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    if len(f) == 0:
        raise MeshError(f"mesh '{mesh.name}' has no faces", "give a mesh with at least one triangle")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not np.isfinite(area.sum()) or area.sum() <= 0:
        raise MeshError(f"mesh '{mesh.name}' has zero surface area", "give a mesh with non-degenerate faces")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=count, p=area / area.sum())
    r1 = np.sqrt(rng.random(count))[:, None]
    r2 = rng.random(count)[:, None]
    return (1 - r1) * a[tri] + r1 * (1 - r2) * b[tri] + r1 * r2 * c[tri]


def normalisation(gt: Mesh) -> tuple[float, np.ndarray]:
    """(scale, offset) with ``scale * p + offset`` putting the truth's box centre at the origin
    and its longest side at length 2."""
    lo, hi = gt.bounds()
    extent = float((hi - lo).max())
    if extent <= 0:
        raise MeshError("the ground-truth mesh is flat in every direction", "give a real ground-truth mesh")
    scale = 2.0 / extent
    return scale, -scale * 0.5 * (lo + hi)


def chamfer_fscore(pred: Mesh, gt: Mesh, *, samples: int = SAMPLES, radius: float = FSCORE_RADIUS,
                   seed: int = 0) -> dict[str, float]:
    """{"chamfer", "fscore", "precision", "recall"} in the truth's normalised frame."""
    from scipy.spatial import cKDTree

    scale, offset = normalisation(gt)
    p = sample_surface(pred, samples, seed) * scale + offset
    g = sample_surface(gt, samples, seed + 1) * scale + offset
    d_pg = cKDTree(g).query(p, workers=-1)[0]
    d_gp = cKDTree(p).query(g, workers=-1)[0]
    precision = float((d_pg < radius).mean())
    recall = float((d_gp < radius).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer": float(0.5 * (d_pg.mean() + d_gp.mean())), "fscore": f, "precision": precision,
            "recall": recall}


#: Cycles' default pixel filter, assumed for posed sets that ``render-views`` wrote before it
#: recorded its filter (their transforms.json says only ``"renderer": {"engine": "CYCLES"}``).
CYCLES_DEFAULT_FILTER = ("BLACKMAN_HARRIS", 1.5)


def image_formation(meta: dict[str, Any] | None):
    """How the posed set's images were made, as far as its transforms.json records it:
    (pixel filter or None, source (width, height) or None).

    ``render-views`` records Cycles' pixel filter (``renderer.pixel_filter``); the loader records
    the images' size before it resized them (``source_size``, when they all share one). Photos
    record no renderer (None: the mesh is rendered with a 3 x 3 box)."""
    from .raster import PixelFilter

    meta = meta or {}
    renderer = meta.get("renderer") if isinstance(meta.get("renderer"), dict) else {}
    pf = renderer.get("pixel_filter")
    kind = width = None
    if isinstance(pf, dict):
        kind, width = pf.get("type"), pf.get("width")
    elif str(renderer.get("engine", "")).upper() == "CYCLES":
        kind, width = CYCLES_DEFAULT_FILTER
    filt = None
    if (isinstance(kind, str) and kind.lower() in ("blackman_harris", "gaussian", "box")
            and isinstance(width, (int, float)) and width > 0):
        filt = PixelFilter(kind.lower(), float(width))
    size = None
    src = meta.get("source_size")
    if isinstance(src, (list, tuple)) and len(src) == 2 and all(isinstance(x, int) and x > 0 for x in src):
        size = (int(src[0]), int(src[1]))
    return filt, size


def render_as_images(mesh: Mesh, camera, meta: dict[str, Any] | None) -> np.ndarray:
    """The textured mesh rendered unlit at ``camera`` the way the posed set's images were made
    (:func:`image_formation`): at the source size with the source renderer's pixel filter, then
    resized to the camera's size as the loader resized the images (rgb and alpha apart), and
    composited on white. Without a recorded renderer: 3 x 3 samples per pixel, box filter."""
    from ..images import resize
    from ..metrics import composite_on_white
    from .raster import render_filtered, render_textured

    filt, size = image_formation(meta)
    if filt is None:
        return composite_on_white(*render_textured(mesh, camera))
    src = camera if size is None or size[0] < camera.width else camera.resized(*size)
    rgb, alpha = render_filtered(mesh, src, filt)
    if (src.width, src.height) != (camera.width, camera.height):
        rgb, alpha = resize(rgb, camera.width, camera.height), resize(alpha, camera.width, camera.height)
    return composite_on_white(rgb, alpha)


def image_scores(mesh: Mesh, posed: PosedSet) -> dict[str, float | None]:
    """Mean PSNR/SSIM of the textured mesh rendered (unlit) at the posed cameras vs the images,
    both composited on white; the mesh is rendered the way the images were made
    (:func:`render_as_images`: a renderer's recorded pixel filter and size, else a 3 x 3 box)."""
    from ..metrics import view_scores

    preds = [render_as_images(mesh, cam, posed.meta) for cam in posed.cameras]
    return view_scores(preds, posed.images, posed.masks)


def gt_in_camera_frame(gt: Mesh, posed_meta: dict[str, Any] | None) -> Mesh:
    """The ground truth moved into the posed set's frame when its transforms.json records the
    normalisation ``render-views`` applied (``normalized = scale * imported + offset``)."""
    norm = (posed_meta or {}).get("normalization")
    if not norm:
        return gt
    try:
        scale = float(norm["scale"])
        offset = np.asarray(norm["offset"], dtype=np.float64).reshape(3)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"transforms.json 'normalization' is malformed ({exc})",
                         "give scale (number) and offset (3 numbers), or remove the entry") from exc
    return Mesh(gt.vertices * scale + offset, gt.faces, name=gt.name)


def evaluate_mesh(pred_path: str | os.PathLike, gt_path: str | os.PathLike | None = None,
                  views: str | os.PathLike | None = None, *, resolution: int | None = None,
                  samples: int = SAMPLES) -> dict[str, Any]:
    """``viewforge eval``: the metrics JSON of DESIGN.md for a predicted mesh file (chamfer and
    fscore with ``gt_path``; psnr/ssim of the textured mesh at the cameras of ``views``)."""
    from ..io.mesh import read_mesh
    from ..io.posed import load_posed_set, read_transforms

    if gt_path is None and views is None:
        raise InputError("nothing to evaluate against", "give --gt GT_MESH and/or --views TRANSFORMS_JSON")
    pred = read_mesh(pred_path)
    out: dict[str, Any] = {"psnr": None, "ssim": None, "lpips": None, "chamfer": None, "fscore": None,
                           "num_faces": pred.num_faces}
    meta = None
    posed = None
    if views is not None:
        posed = load_posed_set(views, resolution=resolution)
        meta = posed.meta
    if gt_path is not None:
        gt = read_mesh(gt_path)
        if views is not None:
            gt = gt_in_camera_frame(gt, meta if meta is not None else read_transforms(views))
        out.update({k: v for k, v in chamfer_fscore(pred, gt, samples=samples).items()})
    if posed is not None:
        out.update(image_scores(pred, posed))
    return out


def write_metrics(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    from ..io.atomic import atomic_file, check_output_path

    p = check_output_path(path, (".json",))
    with atomic_file(p) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    return p
