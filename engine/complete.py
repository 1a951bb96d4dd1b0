"""Completion: a few photos with scene cameras -> the unseen sides generated -> one model in the
cameras' frame (after ReconViaGen; docs/completion.md has the math).

1. **Photos.** 1-4 (more work) RGBA photos with OpenCV cameras (a :class:`PosedSet`); photos
   without masks are matted against their border colour (engine/mvgen/prep.py). They are resized
   to ``photo_size`` (longer side) for the fits.
2. **Object centre** ``O``: with >= 2 photos the point closest (least squares) to the rays through
   each photo's mask centroid; with 1 photo, the point of its ray closest to the world origin
   (one photo fixes no depth; Blender objects and render-views sets sit at the origin).
3. **Reference photo**: ``config.reference`` or, by rule, the photo whose mask does not touch the
   image border and covers the most pixels (the sharpest full view of the object); ties: the first.
4. **Rig placement**: the *virtual reference camera* has the reference photo's centre ``C``, looks
   at ``O`` (roll from the photo) and a focal length that makes the object span ``fill`` of a
   square image of the generator's view size: the generator's recentred, rescaled condition
   image is the photo warped into it by the homography ``K_v R_v R_p^T K_p^-1`` (exact for a
   pinhole: a rotation about the centre and a zoom). The generator's rig (its own frame: object
   at the origin, reference camera at distance ``d_g``) is mapped by the similarity
   ``p_scene = s M p_gen + O``, ``M = R_v^T R_g``, ``s = |C - O| / d_g``, so its reference camera
   lands exactly on the virtual camera; every rig camera's focal length is scaled by
   ``f_v / f_g`` (the zoom of the crop), so a generated view is read as seen through the same
   lens as the condition image (a weak-perspective reading of the generator's FoV).
5. **Sampling** (engine/sampling/aware.py) with the rig at those cameras and *all* photos as
   anchors at their own cameras (weight ``photo_weight``; generated views weight 1), RVC on by
   default (engine/sampling/rvc.py).
6. Optionally (``refine_cameras``) the cameras are refined against each other *before* steps
   2-4 (engine/poses/sparse.py ``refine_photo_rig``), so the rig is placed and the model fitted at
   the refined cameras. Photos that do not match (texture-less objects) are refined after
   sampling by silhouette coherence (``refine_silhouettes``, engine/poses/silhouette.py): the
   reference photo and the generated views form a frame that carries only the reference's pose
   error; the rig is moved to agree with the reference photo's outline, the other photos into
   that frame, and the model refitted (plus one RVC correction when RVC is on). Or
   (``refine_fallback``) they are refined against the model (render-match-PnP), the rig re-placed
   and the model refitted. Then the mesh stage (engine/mesh) bakes the photos and the views.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .cameras import Camera
from .errors import ImageError, InputError, OutputError
from .io.types import Mesh, PosedSet
from .mvgen import DEFAULT_MODEL
from .progress import CancelToken, ProgressCallback, check, report

if TYPE_CHECKING:  # pragma: no cover
    from .mvgen.base import ConditionImage
    from .sampling.anchors import Anchor
    from .splat.model import Splats

log = logging.getLogger(__name__)

COMPLETE_SUFFIXES = (".glb", ".ply")
#: Longer side (pixels, never upsampled) of the photos given to the pose refinement.
REFINE_SIZE = 512
#: Said (metrics ``warnings``, the job's summary) when two photos' cameras are refined: how far the
#: two turn towards each other is not observable from them (docs/poses.md section 3, "Two photos").
TWO_PHOTOS_WARNING = ("two photos cannot pin how far their cameras turn towards each other: add a third photo "
                      "from another height")


@dataclass(frozen=True)
class CompleteConfig:
    """Settings of :func:`complete`.

    model: generator registry id or local model folder (default DEFAULT_MODEL, Zero123++ v1.2).
    steps: sampling steps K (default 4). seed: noise seed. device: "auto", "cpu", "cuda", "mps".
    allow_download: fetch missing weights (default False: a DependencyError says how).
    rvc: rendering-aware velocity compensation (default True); rvc_strength (lambda, 0.1),
        rvc_steps (Adam steps per application, 100), rvc_t_max (active for t < 0.5 T).
    photo_weight: each photo's weight in every fit, relative to a generated view (default 4).
    reference: index of the reference photo (None: the rule of the module docstring).
    fill: the object's share of the condition image side (default 0.8, as prepare_image).
    photo_size: longer side of the photos in the fits, pixels (default 256).
    fit_iterations, warm_iterations: the sampler's first and later fits.
    refine_cameras: refine the photo cameras against each other before sampling (feature
        matches; :func:`refine_photos_first`); the rig is placed from the refined cameras.
    refine_silhouettes: photos that the feature stage did not refine (no matches: texture-less
        objects) are refined after sampling by silhouette coherence against the reference photo
        plus the generated views (engine/poses/silhouette.py; the views are then sampled against
        the trusted photos only, the rig moved with the views' frame, not re-placed, the model
        refitted with all photos; default True; docs/poses.md section 4).
    refine_fallback: when the photos do not match each other, refine them after sampling against
        the model (render-match-PnP), re-place the rig and refit (default False: unreliable here;
        :func:`refine_against_model`); it replaces the silhouette stage when set.
    final_fit: without RVC, the model ends with one more warm fit (``warm_iterations``) of the
        views and the photos (default True). With RVC the model already ends with one after the
        last correction (RVCConfig ``final_fit``), so RVC and no RVC spend the same fit budget and
        compare fairly (docs/completion.md).
    make_mesh: run the mesh stage (default True; a .glb output needs it).
    faces, texture_size: mesh face budget and texture side.
    mesh: overrides of MeshConfig fields. fit: overrides of the sampler's FitConfig fields.
    """

    model: str = DEFAULT_MODEL
    steps: int = 4
    seed: int = 0
    device: str = "auto"
    allow_download: bool = False
    rvc: bool = True
    rvc_strength: float = 0.1
    rvc_steps: int = 100
    rvc_t_max: float = 0.5
    photo_weight: float = 4.0
    reference: int | None = None
    fill: float = 0.8
    photo_size: int = 256
    fit_iterations: int = 1000
    warm_iterations: int = 300
    refine_cameras: bool = False
    refine_silhouettes: bool = True
    refine_fallback: bool = False
    final_fit: bool = True
    make_mesh: bool = True
    faces: int = 30000
    texture_size: int = 1024
    mesh: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)


@dataclass
class RigPlacement:
    """The generator's rig in the scene: ``p_scene = scale * rotation @ p_gen + centre``.

    reference: the virtual reference camera (the condition image's). cameras: the rig.
    focal_ratio: f_v / f_g, the zoom applied to every rig camera's focal length."""

    scale: float
    rotation: np.ndarray
    centre: np.ndarray
    reference: Camera
    cameras: list[Camera]
    focal_ratio: float

    def to_scene(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.centre


@dataclass
class CompleteResult:
    """splats: the model (scene frame). mesh: the textured mesh (None without make_mesh).
    cameras: the photos' cameras as used at the end (refined when asked), at the photos' working
    size. rig: the placed rig; reference: index of the reference photo; views: the final
    generated views (RGBA at rig.cameras); photos: the photos as used (working size);
    output: the written file or None; metrics: seconds, evaluations, RVC reports, psnr_inputs."""

    splats: "Splats"
    mesh: Mesh | None
    cameras: list[Camera]
    rig: RigPlacement
    reference: int
    views: list[np.ndarray]
    photos: PosedSet
    output: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Geometry of the placement
# ---------------------------------------------------------------------------------------------


def _ray(cam: Camera, uv: np.ndarray) -> np.ndarray:
    """World direction (unit) of the ray through pixel ``uv`` (continuous coordinates)."""
    d_cam = np.array([(uv[0] - cam.cx) / cam.fx, (uv[1] - cam.cy) / cam.fy, 1.0])
    d = cam.R.T @ d_cam
    return d / np.linalg.norm(d)


def mask_centroid(mask: np.ndarray) -> np.ndarray:
    """(u, v) alpha-weighted centroid of a mask in continuous pixel coordinates."""
    m = np.asarray(mask, np.float64)
    total = m.sum()
    if total <= 0:
        raise ImageError("a photo's object mask is empty", "give photos that show the object (RGBA or a plain background)")
    ys, xs = np.mgrid[: m.shape[0], : m.shape[1]]
    return np.array([(m * (xs + 0.5)).sum() / total, (m * (ys + 0.5)).sum() / total])


def object_centre(cameras: Sequence[Camera], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, str]:
    """(3,) object centre and how it was found ("rays" or "one photo"): see the module docstring."""
    rays = [(c.center, _ray(c, mask_centroid(m))) for c, m in zip(cameras, masks)]
    if len(rays) >= 2:
        a = np.zeros((3, 3))
        b = np.zeros(3)
        for o, d in rays:
            p = np.eye(3) - np.outer(d, d)
            a += p
            b += p @ o
        w = np.linalg.eigvalsh(a)
        if w[0] > 1e-3 * len(rays):  # rays not (nearly) parallel
            x = np.linalg.solve(a, b)
            if all(float(d @ (x - o)) > 0 for o, d in rays):
                return x, "rays"
        log.warning("the photos' rays through the object are (nearly) parallel: centre from the first photo")
    o, d = rays[0]
    depth = float(d @ (np.zeros(3) - o))
    if depth <= 1e-6:
        depth = float(np.linalg.norm(o)) or 1.0
    return o + depth * d, "one photo"


def choose_reference(masks: Sequence[np.ndarray], threshold: float = 0.5) -> int:
    """Index of the reference photo: not touching the border, then the largest mask area."""
    best, key = 0, (-1, -1.0)
    for i, m in enumerate(masks):
        b = np.asarray(m) > threshold
        touches = bool(b[0].any() or b[-1].any() or b[:, 0].any() or b[:, -1].any())
        k = (0 if touches else 1, float(b.sum()) / b.size)
        if k > key:
            best, key = i, k
    return best


def virtual_reference(photo_cam: Camera, mask: np.ndarray, centre: np.ndarray, size: int, fill: float,
                      threshold: float = 0.5) -> Camera:
    """The square ``size`` px camera at the photo's centre looking at ``centre`` (roll from the
    photo) whose focal length makes the object (mask > threshold) span ``fill`` of the side."""
    c = photo_cam.center
    z = centre - c
    if np.linalg.norm(z) < 1e-9:
        raise InputError("a camera sits at the object centre", "place the cameras around the object")
    z = z / np.linalg.norm(z)
    x = photo_cam.R[0] - (photo_cam.R[0] @ z) * z
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(photo_cam.R[1], z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = -r @ c
    ys, xs = np.nonzero(np.asarray(mask) > threshold)
    if len(xs) == 0:
        raise ImageError(f"photo {photo_cam.name or ''} has an empty object mask", "give photos that show the object")
    step = max(1, len(xs) // 20000)
    pts = np.stack([xs[::step] + 0.5, ys[::step] + 0.5], 1)
    d_cam = np.stack([(pts[:, 0] - photo_cam.cx) / photo_cam.fx, (pts[:, 1] - photo_cam.cy) / photo_cam.fy,
                      np.ones(len(pts))], 1)
    d_v = d_cam @ (r @ photo_cam.R.T).T  # rays in the virtual camera's axes
    d_v = d_v[d_v[:, 2] > 1e-6]
    half = float(np.max(np.abs(d_v[:, :2] / d_v[:, 2:3]))) if len(d_v) else 0.5
    f = 0.5 * fill * size / max(half, 1e-6)
    return Camera(f, f, size / 2.0, size / 2.0, size, size, m, name="reference")


def place_rig(gen_cameras: Sequence[Camera], gen_reference: Camera, virtual: Camera, centre: np.ndarray) -> RigPlacement:
    """Map the generator's rig (object frame, reference camera ``gen_reference`` looking at the
    origin) so that its reference camera becomes ``virtual`` (module docstring)."""
    rg = gen_reference.R
    d_g = float(np.linalg.norm(gen_reference.center))
    if d_g <= 0:
        raise InputError("the generator's reference camera is at the origin", "use a generator whose rig orbits the object")
    dist = float(np.linalg.norm(virtual.center - centre))
    s = dist / d_g
    rot = virtual.R.T @ rg
    ratio = virtual.fx / (gen_reference.fx * virtual.width / gen_reference.width)
    cams = []
    for i, cam in enumerate(gen_cameras):
        w2c = np.eye(4)
        w2c[:3, :3] = cam.R @ rot.T
        w2c[:3, 3] = s * cam.t - cam.R @ rot.T @ centre
        cams.append(replace(cam, fx=cam.fx * ratio, fy=cam.fy * ratio, world_to_camera=w2c,
                            name=cam.name or f"rig{i}"))
    return RigPlacement(s, rot, np.asarray(centre, np.float64), virtual, cams, ratio)


def warp_to_camera(rgba: np.ndarray, src: Camera, dst: Camera) -> np.ndarray:
    """(dst.height, dst.width, 4) straight RGBA: the photo seen by ``dst``, a camera with the same
    centre (the homography ``K_d R_d R_s^T K_s^-1``), premultiplied resampling, transparent outside."""
    import cv2

    img = np.asarray(rgba, np.float32)
    s_cam = src
    zoom = dst.fx / src.fx
    if zoom < 0.5:  # shrink first, so the warp does not alias
        w, h = max(int(round(src.width * zoom * 2)), 1), max(int(round(src.height * zoom * 2)), 1)
        pm = np.concatenate([img[..., :3] * img[..., 3:4], img[..., 3:4]], 2)
        pm = cv2.resize(pm, (w, h), interpolation=cv2.INTER_AREA)
        img = pm
        s_cam = src.resized(w, h)
    else:
        img = np.concatenate([img[..., :3] * img[..., 3:4], img[..., 3:4]], 2)
    h_mat = dst.K_opencv @ dst.R @ s_cam.R.T @ np.linalg.inv(s_cam.K_opencv)
    out = cv2.warpPerspective(img, h_mat, (dst.width, dst.height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = out[..., 3:4]
    rgb = np.where(a > 1e-4, out[..., :3] / np.maximum(a, 1e-4), 1.0)
    return np.concatenate([np.clip(rgb, 0, 1), np.clip(a, 0, 1)], 2).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _check_photos(posed: Any) -> PosedSet:
    if posed is None:
        raise InputError("no photos", "give 1-4 photos of the object with their cameras")
    if not isinstance(posed, PosedSet):
        if isinstance(posed, (list, tuple)) and len(posed) == 0:
            raise InputError("no photos", "give 1-4 photos of the object with their cameras")
        raise InputError("the photos have no cameras (completion needs a posed set: images with cameras)",
                         "attach the photos to scene cameras, or estimate the poses first (structure from motion)")
    if len(posed) == 0:
        raise InputError("no photos", "give 1-4 photos of the object with their cameras")
    for c in posed.cameras:
        if c is None:
            raise InputError("a photo has no camera", "attach every photo to a camera")
    if len(posed) > 4:
        log.warning("%d photos: completion is meant for 1-4 (all are used as constraints)", len(posed))
    return posed


def prepare_photos(posed: PosedSet, size: int) -> PosedSet:
    """The photos at ``size`` px (longer side, never upsampled), undistorted cameras required,
    masks from alpha or border matting (an empty mask is an :class:`ImageError`)."""
    from .images import resize

    cams, imgs, masks = [], [], []
    for i, (cam, img) in enumerate(zip(posed.cameras, posed.images)):
        name = posed.names[i]
        if cam.distortion is not None:
            raise InputError(f"photo {name}'s camera has lens distortion", "load the photos with undistort=True")
        m = posed.masks[i] if posed.masks is not None else None
        if m is None:
            from .mvgen.prep import matte_border

            m = matte_border(np.asarray(img, np.float32))
        long_side = max(cam.width, cam.height)
        if long_side > size:
            w, h = max(int(round(cam.width * size / long_side)), 1), max(int(round(cam.height * size / long_side)), 1)
            rgba = resize(np.concatenate([img * m[..., None], m[..., None]], 2).astype(np.float32), w, h)
            a = np.clip(rgba[..., 3], 0, 1)
            img = np.where(a[..., None] > 1e-4, rgba[..., :3] / np.maximum(a[..., None], 1e-4), 1.0)
            m = a
            cam = cam.resized(w, h)
        if float(np.asarray(m).max()) < 0.5:
            raise ImageError(f"photo {name}: no object found (empty mask)",
                             "give RGBA photos or photos of the object on a plain background")
        cams.append(cam)
        imgs.append(np.clip(np.asarray(img, np.float32), 0, 1))
        masks.append(np.clip(np.asarray(m, np.float32), 0, 1))
    return PosedSet(cams, imgs, masks, list(posed.names), posed.meta)


def anchors_of(photos: PosedSet, weight: float) -> list["Anchor"]:
    from .sampling.anchors import Anchor

    assert photos.masks is not None
    return [Anchor(np.concatenate([i, m[..., None]], 2).astype(np.float32), c, weight, n)
            for c, i, m, n in zip(photos.cameras, photos.images, photos.masks, photos.names)]


@dataclass
class Layout:
    """Where the generator goes for a set of photos: centre, reference photo, placement, and the
    condition image (the reference photo warped into the virtual reference camera)."""

    centre: np.ndarray
    centre_method: str
    reference: int
    placement: RigPlacement
    condition: "ConditionImage"


def layout(photos: PosedSet, gen_cameras: Sequence[Camera], gen_reference: Camera, *, reference: int | None = None,
           fill: float = 0.8) -> Layout:
    """Centre, reference photo, rig placement and condition image for ``photos`` (with masks)."""
    from .mvgen.base import ConditionImage

    assert photos.masks is not None
    centre, how = object_centre(photos.cameras, photos.masks)
    ref = choose_reference(photos.masks) if reference is None else int(reference)
    if not 0 <= ref < len(photos):
        raise InputError(f"reference photo {ref} does not exist ({len(photos)} photos)",
                         f"give an index from 0 to {len(photos) - 1}")
    cam = photos.cameras[ref]
    virtual = virtual_reference(cam, photos.masks[ref], centre, gen_reference.width, fill)
    placement = place_rig(gen_cameras, gen_reference, virtual, centre)
    rgba = np.concatenate([photos.images[ref], photos.masks[ref][..., None]], 2)
    cond = ConditionImage(warp_to_camera(rgba, cam, virtual), fill=fill, source=photos.names[ref])
    return Layout(centre, how, ref, placement, cond)


# ---------------------------------------------------------------------------------------------
# The job: pose-refinement steps (replaceable through PoseRefiners), then complete()
# ---------------------------------------------------------------------------------------------

#: The note of a refinement that kept the input poses because the photos share no features.
KEPT_NOTE = "input poses kept (the photos do not match each other)"

#: Seeds of the fits after sampling, as offsets from ``CompleteConfig.seed``. The sampler's fits
#: use the seed itself and its RVC corrections ``seed + k`` (k the step index), so the refit after
#: the refinement, its RVC correction and the final fit each get a random stream of their own
#: (initial points, view order). The values are arbitrary; the figures of docs/completion.md were
#: measured with these, and changing one changes the results.
REFIT_SEED_OFFSET = 17
REFINED_RVC_SEED_OFFSET = 19
FINAL_FIT_SEED_OFFSET = 23


def refine_photos_first(posed: PosedSet, photos: PosedSet, progress, cancel) -> tuple[PosedSet, str | None]:
    """Before sampling: the photos' cameras refined against each other (engine/poses/sparse.py
    ``refine_photo_rig``: SIFT matches between the photos at up to REFINE_SIZE px, bundle
    adjustment with the centres held, the similarity back onto the input rig; a pose changes
    only where the photos' matches then agree better than at the input cameras). Returns the
    working-size photos at the refined cameras and a note, or ``photos`` and None when the photos
    do not match (weak texture; then the silhouette or the model-based step may run after
    sampling for the photos that kept their pose)."""
    from .poses.sparse import PhotoRigConfig, refine_photo_rig

    sharp = prepare_photos(posed, REFINE_SIZE) if REFINE_SIZE > max(max(c.width, c.height) for c in photos.cameras) \
        else photos
    rig = refine_photo_rig(sharp, PhotoRigConfig(max_size=REFINE_SIZE), progress=progress, cancel=cancel)
    if not any(rig.refined):
        log.info("pose refinement before sampling: %s", rig.note)
        return photos, None
    cams = [c.resized(p.width, p.height) for c, p in zip(rig.cameras, photos.cameras)]
    kept = [n for n, r in zip(photos.names, rig.refined) if not r]
    note = "refined against each other" + (
        f" ({len(kept)} of {len(photos)} kept their input pose: {', '.join(kept)})" if kept else "")
    log.info("pose refinement before sampling: %s", rig.note)
    return PosedSet(cams, photos.images, photos.masks, photos.names, photos.meta), note


def refine_against_model(photos: PosedSet, splats, device: str, progress, cancel) -> tuple[list[Camera], str]:
    """After sampling (``refine_fallback``), for photos that did not match each other: their
    cameras refined by render-match-PnP against ``splats`` on ``device`` (engine/poses/sparse.py
    ``refine_cameras_to_model``; views without reliable matches keep their input pose). The model
    was fitted to the photos at the input cameras and has absorbed their errors, which is why the
    step is off by default (docs/poses.md measures it on bench/sparse.py's Duck)."""
    from .poses.sparse import SparseRefineConfig, refine_cameras_to_model

    res = refine_cameras_to_model(photos, splats, SparseRefineConfig(device=device), progress=progress, cancel=cancel)
    kept = sum(not v.reliable for v in res.views)
    return list(res.cameras), "refined" if not kept else f"refined ({kept} of {len(res.views)} kept their input pose)"


#: Longer side (pixels, never upsampled) of the photos' masks in the silhouette refinement.
SILHOUETTE_SIZE = 256


def refine_silhouette_frame(posed: PosedSet, photos: PosedSet, lay: Layout, views: Sequence[np.ndarray],
                            which: Sequence[int], progress, cancel) -> tuple[list[Camera], RigPlacement, str]:
    """After sampling, photos ``which`` (not refined by features) refined by silhouette coherence
    against the reference photo plus the generated views at the rig (engine/poses/silhouette.py):
    the views were drawn for the reference photo, so with it they form a frame free of the other
    photos' pose errors. The views' frame is first matched to the reference photo's outline (a
    rotation about the reference centre and a scale about the object centre: the placement was
    computed from the unrefined cameras), then the other photos are moved into it. Masks at up to
    SILHOUETTE_SIZE px; the hull field on a cube of 1.6 times the object's radius in the virtual
    reference camera (``fill`` of its side) around the rig centre. Returns the cameras at the
    working size, the rig placement (moved with the views' frame when photos moved) and a note."""
    from .poses.silhouette import SilhouetteConfig, frame_move, refine_by_silhouettes

    sil = prepare_photos(posed, SILHOUETTE_SIZE) if SILHOUETTE_SIZE > max(max(c.width, c.height)
                                                                           for c in photos.cameras) else photos
    assert sil.masks is not None
    cams = [c.resized(p.width, p.height) for c, p in zip(photos.cameras, sil.cameras)]
    pl = lay.placement
    v = pl.reference
    dist = float(np.linalg.norm(v.center - lay.centre))
    half = 1.6 * dist * 0.5 * lay.condition.fill * v.width / v.fx
    res = refine_by_silhouettes(cams, list(sil.masks), lay.reference, pl.cameras,
                                [np.asarray(x)[..., 3] for x in views], lay.centre, half, which,
                                SilhouetteConfig(), progress=progress, cancel=cancel)
    out = [c.resized(p.width, p.height) for c, p in zip(res.cameras, photos.cameras)]
    if res.frame_moved:  # p' = B (z (p - O) + O - C_ref) + C_ref for the rig: p_scene = s M p_gen + O
        b, z, c_ref = res.frame_rotation, res.frame_zoom, cams[lay.reference].center
        pl = RigPlacement(z * pl.scale, b @ pl.rotation, b @ (lay.centre - c_ref) + c_ref,
                          frame_move(pl.reference, b, z, lay.centre, c_ref), list(res.frame_cameras), pl.focal_ratio)
    return out, pl, res.note


@dataclass(frozen=True)
class PoseRefiners:
    """The pose-refinement steps of :func:`complete`, each replaceable (tests and benchmarks pass
    stand-ins here instead of patching the module).

    before: ``(posed, photos, progress, cancel) -> (photos, note or None)``, the photos against
        each other before sampling (``refine_cameras``); None as the note: nothing was refined.
    against_model: ``(photos, splats, device, progress, cancel) -> (cameras, note)``, after
        sampling against the model (``refine_fallback``).
    silhouettes: ``(posed, photos, layout, views, which, progress, cancel) -> (cameras,
        placement, note)``, after sampling by silhouette coherence (``refine_silhouettes``)."""

    before: Callable[..., tuple[PosedSet, str | None]] = refine_photos_first
    against_model: Callable[..., tuple[list[Camera], str]] = refine_against_model
    silhouettes: Callable[..., tuple[list[Camera], RigPlacement, str]] = refine_silhouette_frame


def after_sampling_step(config: CompleteConfig, first_note: str | None, unrefined: Sequence[int]) -> str | None:
    """Which pose refinement follows sampling: "model" (``refine_fallback``, when the step before
    sampling refined nothing), "silhouettes" (``refine_silhouettes`` without the fallback, when
    photos other than the reference kept their input pose), "kept" (nothing refined and no step
    to run: the input poses stay) or None (no refinement asked, or none needed)."""
    if not config.refine_cameras:
        return None
    if config.refine_fallback:
        return "model" if first_note is None else None
    if config.refine_silhouettes and unrefined:
        return "silhouettes"
    return "kept" if first_note is None else None


def _check_request(posed: Any, output, config: CompleteConfig) -> tuple[PosedSet, Path | None]:
    """The photos and the output path checked before any work (InputError / OutputError)."""
    posed = _check_photos(posed)
    out = None
    if output is not None:
        from .io.atomic import check_output_path

        out = check_output_path(output)
        if out.suffix.lower() not in COMPLETE_SUFFIXES:
            raise OutputError(f"output {out.name}: '{out.suffix}' is not an output format of completion",
                              "use .glb (textured mesh) or .ply (Gaussian splats)")
        if out.suffix.lower() == ".glb" and not config.make_mesh:
            raise InputError("a .glb output needs the mesh stage", "set make_mesh=True or write .ply")
    if config.steps < 1:
        raise InputError(f"{config.steps} sampling steps", "use at least 1 step (4 is the default)")
    return posed, out


def _moved(a: Sequence[Camera], b: Sequence[Camera]) -> list[bool]:
    return [not np.array_equal(x.world_to_camera, y.world_to_camera) for x, y in zip(a, b)]


def _evaluate(splats, photos: PosedSet, anchors, device: str) -> dict[str, Any]:
    """input_losses (RVC's losses at the anchors) and psnr_inputs (renders at the photos' cameras
    against the photos, on white)."""
    from .metrics import composite_on_white, psnr
    from .sampling.aware import render_views
    from .sampling.rvc import anchor_losses

    losses = [round(x, 4) for x in anchor_losses(splats, anchors, device=device)]
    renders = render_views(splats, photos.cameras, device=device)
    return {"input_losses": losses,
            "psnr_inputs": float(np.mean([psnr(composite_on_white(r[..., :3], r[..., 3]), composite_on_white(i, m))
                                          for r, i, m in zip(renders, photos.images, photos.masks)]))}


def _mesh_stage(splats, photos: PosedSet, lay: Layout, views: Sequence[np.ndarray], config: CompleteConfig,
                device: str, name: str, progress, cancel):
    """The mesh baked from the photos and the generated views at the rig (engine/mesh)."""
    from .mesh.pipeline import MeshConfig, splats_to_mesh

    rig = lay.placement.cameras
    bake = PosedSet(list(photos.cameras) + list(rig),
                    list(photos.images) + [np.ascontiguousarray(v[..., :3]) for v in views],
                    list(photos.masks) + [np.ascontiguousarray(v[..., 3]) for v in views],
                    list(photos.names) + [c.name or f"view{i}" for i, c in enumerate(rig)])
    mcfg = replace(MeshConfig(faces=config.faces, texture_size=config.texture_size, device=device), **config.mesh)
    return splats_to_mesh(splats, bake, mcfg, name=name, progress=progress, cancel=cancel)


def _write(splats, mesh: Mesh | None, out: Path) -> None:
    if out.suffix.lower() == ".ply":
        from .splat.model import write_splat_ply

        write_splat_ply(splats, out)
    else:
        from .io.mesh import write_mesh

        assert mesh is not None
        write_mesh(mesh, out)


def complete(
    posed: PosedSet,
    output: str | os.PathLike | None = None,
    config: CompleteConfig = CompleteConfig(),
    *,
    generator: Any = None,
    refiners: PoseRefiners = PoseRefiners(),
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> CompleteResult:
    """Photos with cameras -> a complete model in the cameras' frame (module docstring).

    output: None (nothing written), a .glb (textured mesh) or a .ply (Gaussian splats); nothing is
    written there on failure or cancel. generator: an already loaded generator (tests, benchmarks)
    instead of ``config.model`` (loaded through the registry: missing weights raise a
    DependencyError that says how to get them). refiners: the pose-refinement steps.
    ``config.device`` is resolved once here and handed to every stage."""
    from .device import resolve_device
    from .mvgen.base import load_generator
    from .sampling.aware import SamplerConfig, fit_anchored, sample
    from .sampling.rvc import RVCConfig

    posed, out = _check_request(posed, output, config)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    photos = prepare_photos(posed, int(config.photo_size))
    seconds["prepare"] = time.perf_counter() - t
    check(cancel)
    device = str(resolve_device(config.device))
    t = time.perf_counter()
    gen = generator if generator is not None else load_generator(
        config.model, device=device, allow_download=config.allow_download, progress=progress)
    seconds["load_model"] = time.perf_counter() - t
    check(cancel)

    # 1. the photos against each other first: sampling then uses consistent cameras
    refine_note = None
    refined = [False] * len(photos)
    warnings = [TWO_PHOTOS_WARNING] if config.refine_cameras and len(photos) == 2 else []
    for w in warnings:
        log.warning("%s", w)
    if config.refine_cameras:
        t = time.perf_counter()
        unrefined_cams = list(photos.cameras)
        photos, refine_note = refiners.before(posed, photos, progress, cancel)
        refined = _moved(photos.cameras, unrefined_cams)
        seconds["refine_cameras"] = time.perf_counter() - t

    # 2. the rig placed, the views sampled
    lay = layout(photos, gen.cameras(), gen.reference_camera(), reference=config.reference, fill=config.fill)
    log.info("completion: %d photos, reference %s, centre %s (%s), rig scale %.3f", len(photos),
             photos.names[lay.reference], np.round(lay.centre, 3).tolist(), lay.centre_method, lay.placement.scale)
    anchors = anchors_of(photos, config.photo_weight)
    scfg = SamplerConfig(method="aware", steps=config.steps, seed=config.seed, fit_iterations=config.fit_iterations,
                         warm_iterations=config.warm_iterations, reference_weight=config.photo_weight)
    scfg = replace(scfg, fit=replace(scfg.fit, device=device, **config.fit))
    rvc = RVCConfig(strength=config.rvc_strength, steps=config.rvc_steps, t_max=config.rvc_t_max) if config.rvc else None
    unrefined = [j for j in range(len(photos)) if not refined[j] and j != lay.reference]
    after = after_sampling_step(config, refine_note, unrefined)
    silhouettes = after == "silhouettes"
    # with the silhouette stage ahead, the views are sampled against the photos whose poses are
    # trusted only (the reference, the ones the features refined): the photos at wrong poses would
    # pull the views into disagreement with the reference, the frame the stage relies on
    sample_anchors = [a for j, a in enumerate(anchors) if j not in unrefined] if silhouettes else anchors
    # ... and without RVC: the correction waits for the refined cameras (after the stage, below).
    # In the sampler it would pull the views towards the reference photo alone and move the
    # frame the stage reads (docs/completion.md, "Why RVC lowers held-out PSNR")
    res = sample(gen, lay.condition, scfg, cameras=lay.placement.cameras, anchors=sample_anchors,
                 rvc=None if silhouettes else rvc, progress=progress, cancel=cancel)
    seconds.update({f"sample_{k}": v for k, v in res.seconds.items() if k != "total"})
    splats, cams = res.splats, list(photos.cameras)

    # 3. the poses refined after sampling
    t_after = time.perf_counter()
    if after == "model":
        # the refinement matches features: it gets the photos at up to REFINE_SIZE px, not the fit's size
        sharp = prepare_photos(posed, REFINE_SIZE) if REFINE_SIZE > config.photo_size else photos
        new, refine_note = refiners.against_model(sharp, splats, device, progress, cancel)
        cams = [c.resized(p.width, p.height) for c, p in zip(new, photos.cameras)]
    elif after == "silhouettes":
        cams, placement, note = refiners.silhouettes(posed, photos, lay, res.views, unrefined, progress, cancel)
        lay = replace(lay, placement=placement, centre=placement.centre)
        refine_note = note if refine_note is None else f"{refine_note}; {note}"
        seconds["refine_silhouettes"] = time.perf_counter() - t_after
    elif after == "kept":
        refine_note = KEPT_NOTE
    # the model ends with one more warm fit of the views + photos: without RVC for the budget of
    # RVC's final fit (CompleteConfig.final_fit); with RVC corrected after the refinement below, as
    # the sampler does after a last-step correction, from R* (RVCConfig.final_fit). With RVC in the
    # sampler, the sampler did it.
    final_fit = rvc is None and config.final_fit

    # 4. the model refitted at the refined cameras; it also runs when the silhouette stage kept
    # every pose: the views were then sampled without the photos it was to refine, and the model
    # must still hold every photo
    if after in ("model", "silhouettes") and (any(_moved(cams, photos.cameras)) or silhouettes):
        photos = PosedSet(cams, photos.images, photos.masks, photos.names, photos.meta)
        anchors = anchors_of(photos, config.photo_weight)
        if after == "model":
            # the generator drew its views for the reference photo's true pose: re-place the rig
            # from the refined reference camera (the PnP may move it). The silhouette stage keeps
            # the reference and moves the rig itself (its frame matched to the reference photo):
            # a new layout from all photos would break the views' agreement with the reference.
            lay = layout(photos, gen.cameras(), gen.reference_camera(), reference=lay.reference, fill=config.fill)
        # refit photos + views from scratch (a warm start from the model at the old cameras
        # recovers too slowly)
        splats = fit_anchored(res.views, lay.placement.cameras, anchors,
                              iterations=config.fit_iterations + config.warm_iterations, init=None, config=scfg,
                              seed=config.seed + REFIT_SEED_OFFSET, cancel=cancel)
        if rvc is not None:  # the final correction against the photos at their refined cameras
            from .sampling.rvc import compensate

            comp = compensate(splats, anchors, lay.placement.cameras, rvc, fit=scfg.fit,
                              seed=config.seed + REFINED_RVC_SEED_OFFSET, cancel=cancel)
            splats = comp.splats
            res.rvc.append({"t": 0, "after_refinement": True, **comp.report()})
            final_fit = rvc.final_fit
        seconds["refine_cameras_after"] = time.perf_counter() - t_after

    # 5. the final warm fit
    if final_fit:
        t = time.perf_counter()
        splats = fit_anchored(res.views, lay.placement.cameras, anchors, iterations=config.warm_iterations,
                              init=splats, config=scfg, seed=config.seed + FINAL_FIT_SEED_OFFSET, cancel=cancel)
        seconds["final_fit"] = time.perf_counter() - t
    check(cancel)

    # 6. metrics, mesh, output
    metrics: dict[str, Any] = {
        "generator": gen.info.id, "steps": config.steps, "generator_evals": res.evaluations,
        "photos": len(photos), "reference": photos.names[lay.reference], "centre": np.round(lay.centre, 4).tolist(),
        "centre_method": lay.centre_method, "rig_scale": round(lay.placement.scale, 5), "rvc": res.rvc,
        "rvc_enabled": bool(config.rvc), "num_gaussians": splats.num, "cameras_refined": refine_note,
        "warnings": warnings,
    }
    metrics.update(_evaluate(splats, photos, anchors, device))
    mesh = None
    if config.make_mesh:
        t = time.perf_counter()
        name = out.stem if out is not None else "viewforge_completion"
        mres = _mesh_stage(splats, photos, lay, res.views, config, device, name, progress, cancel)
        mesh = mres.mesh
        seconds.update({f"mesh_{k}": v for k, v in mres.seconds.items()})
        seconds["mesh"] = time.perf_counter() - t
        metrics["num_faces"] = mesh.num_faces
    metrics["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    check(cancel)
    if out is not None:
        _write(splats, mesh, out)
    report(progress, "complete", 1, 1, "done")
    return CompleteResult(splats, mesh, cams, lay.placement, lay.reference, res.views, photos, out, metrics)
