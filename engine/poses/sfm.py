"""Structure from motion for photos without cameras (pycolmap), in an artist-friendly world frame.

:func:`estimate_poses` takes image files and returns our :class:`~viewforge.engine.cameras.Camera`
for every photo it could register, a :class:`~viewforge.engine.io.types.PosedSet` of those photos,
the others by name with the reason, a per-view reliability and the sparse points. docs/poses.md
describes the steps and the options with the measured figures; in short:

1. **Load + duplicates.** Every photo is decoded (:func:`viewforge.engine.images.load_image`);
   photos with identical pixels are kept once (a warning names the dropped ones). Fewer than two
   distinct photos is an :class:`~viewforge.engine.errors.InputError`.
2. **Features** (COLMAP SIFT, ``domain_size_pooling`` on by default: more matches across wide
   baselines). Photos with alpha are composited on white and the eroded alpha is COLMAP's mask,
   so no keypoint sits on the background or on the silhouette.
3. **Matching**: exhaustive, with COLMAP's geometric verification (fundamental/essential/
   homography by RANSAC, relative pose kept).
4. **View-graph filter**: objects with repeated or symmetric parts (lego's two tracks) give pairs
   whose matches are geometrically consistent but wrong (the relative rotation is off by ~180
   degrees). Spanning trees of the match graph, drawn at random with a bias for pairs with many
   inliers, each give every photo an orientation; the tree whose orientations agree with the most
   pairs (within ``graph_max_residual_deg``, weighted by sqrt(inliers)) wins and the pairs it
   contradicts are deleted before mapping.
5. **Incremental mapping** (COLMAP), relaxed registration thresholds for sparse captures.
   Several models: the largest wins, photos only in the others are named (a different object, or
   too little overlap).
6. **Silhouette check** (photos with alpha): the model's sparse points projected into each
   registered photo must fall inside its (dilated) alpha. A photo registered onto a symmetric
   "ghost" pose fails; the pairs that placed it are deleted and the mapping runs again
   (``silhouette_rounds``); photos still failing are reported unregistered.
7. **Leftover pass** (``leftover_pass``, photos with alpha): the filter of step 4 and the pair
   deletions of step 6 also remove correct pairs, and a group of photos whose only surviving
   links are wrong ends up unregistered (or as a separate model). The mapping continues from
   the model (its photos' poses fixed) on the original verified pairs, less the deleted pairs
   between two registered photos; the leftover photos then register against the model's
   points, where the correct pairs agree and the wrong ones do not. The silhouette check runs
   again: the photos it adds that fail are taken out with all their pairs and the pass runs once
   more (photos failing then are reported unregistered); if a photo of the model fails, the
   pass is discarded. On lego (24 photos) this registers 21 instead of 14. ``leftover_guided``
   (off by default): photos still left out get one more pass on guided-matched pairs with
   relaxed absolute-pose thresholds.
8. **Undistort** (``undistort``): images and alpha resampled to the ideal pinhole, cameras
   without distortion (Blender cameras cannot represent it).
9. **World frame** (``normalize_frame``), chosen for an artist: +Z up = the average of the
   registered cameras' up directions (photos are mostly taken upright); the centre (origin) is the
   per-axis median of the sparse points (vertical and two horizontal axes); the scale makes the 2nd-98th percentile box of the points
   2 units along its longest side (the object spans about [-1, 1], the frame ``viewforge
   render-views`` uses); the heading puts the first registered photo's camera on the -Y side of
   the object, so Blender's front view (numpad 1) looks roughly as that photo does.

pycolmap is imported inside the functions (``import viewforge.engine.poses.sfm`` stays light).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cameras import Camera, Distortion, orthonormal_pose, rotation_angle_deg
from ..errors import DependencyError, InputError
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback, check, report
from .features import ViewReliability

log = logging.getLogger(__name__)

#: COLMAP camera models this module accepts (all map onto :class:`Camera` + :class:`Distortion`).
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


@dataclass(frozen=True)
class SfmConfig:
    """Settings of :func:`estimate_poses`.

    max_image_size: photos are downscaled for features so that their longer side is at most this
        (the cameras are returned at the photos' own size).
    max_features: SIFT keypoints per photo.
    domain_size_pooling: COLMAP's DSP-SIFT descriptors (more correct matches across wide
        baselines; feature extraction takes about twice as long).
    camera_model: the COLMAP camera model; "SIMPLE_RADIAL" (focal, principal point, k1) suits
        photos from real lenses, "SIMPLE_PINHOLE" renders.
    single_camera: one shared camera (intrinsics) for all photos when they all have the same size.
    mask_erode_px: photos with alpha: keypoints only where the alpha, eroded by this many pixels,
        is above 0.5.
    min_pair_inliers: a photo pair needs this many verified matches.
    graph_max_residual_deg, graph_trials: the view-graph filter (module docstring); 0 trials = off.
    abs_pose_min_inliers, init_min_inliers, init_min_tri_angle_deg: COLMAP incremental mapper
        thresholds (COLMAP's own defaults are 30, 100 and 16; these suit 10-30 photos around an
        object).
    silhouette_max_outside: photos with alpha: a registered photo with a larger fraction of the
        model's points projecting outside its dilated alpha is a wrong registration.
    silhouette_rounds: re-mapping rounds after removing the pairs of wrongly registered photos.
    leftover_pass: photos with alpha: after mapping, photos left out get a second chance (module
        docstring, step 7):
        the mapping continues from the model with their pairs restored and the registered photos
        fixed; each photo it adds must pass the silhouette check.
    leftover_guided: photos still left out after that: the pairs are matched again with guided
        matching and the leftover pass repeats with the relaxed absolute-pose thresholds
        ``leftover_abs_pose_min_inliers`` and ``leftover_abs_pose_min_inlier_ratio`` (otherwise
        ``abs_pose_min_inliers`` and COLMAP's 0.25). Off by default: on lego it places 2 more of
        the 24 photos with one seed and none with another, for a second matching (+40 % time).
    undistort: return undistorted images and pinhole cameras.
    normalize_frame: put the result in the artist's frame (module docstring); otherwise COLMAP's.
    num_threads: threads of COLMAP's stages (-1 = all cores).
    seed: random seed (COLMAP's RANSAC and mapper, the view-graph filter).
    """

    max_image_size: int = 1600
    max_features: int = 8192
    domain_size_pooling: bool = True
    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool = True
    mask_erode_px: int = 3
    min_pair_inliers: int = 15
    graph_max_residual_deg: float = 20.0
    graph_trials: int = 300
    abs_pose_min_inliers: int = 15
    init_min_inliers: int = 50
    init_min_tri_angle_deg: float = 8.0
    silhouette_max_outside: float = 0.1
    silhouette_rounds: int = 2
    leftover_pass: bool = True
    leftover_guided: bool = False
    leftover_abs_pose_min_inliers: int = 8
    leftover_abs_pose_min_inlier_ratio: float = 0.1
    undistort: bool = True
    normalize_frame: bool = True
    num_threads: int = -1
    seed: int = 0


@dataclass
class SfmResult:
    """What :func:`estimate_poses` found.

    cameras: the registered photos' cameras (input order), OpenCV world-to-camera, in the output
        frame; pinhole when ``config.undistort``.
    posed: the registered photos with those cameras (images undistorted when asked; alpha as
        masks when every registered photo has alpha, else None); names are the file stems.
    unregistered: photo name -> reason, for the distinct photos SfM could not place.
    duplicates: dropped photo name -> the name of the identical photo that was kept.
    views: one reliability per registered photo (``observations``: registered feature points,
        ``rms_px``: their RMS reprojection error in pixels of the photo, ``score`` in [0, 1]:
        ``min(1, n / 100) * min(1, 1 px / rms)``; ``reliable``: score >= 0.3).
    points: (N, 3) float64 sparse points in the output frame; colors: (N, 3) uint8.
    to_output: (4, 4) similarity mapping COLMAP's frame to the output frame (x' = s Q (x - c)).
    warnings: the warnings also sent to the log, one line each.
    seconds: wall time per stage ("load", "features", "matching", "mapping", "total").
    """

    cameras: list[Camera]
    posed: PosedSet
    unregistered: dict[str, str]
    duplicates: dict[str, str]
    views: list[ViewReliability]
    points: np.ndarray
    colors: np.ndarray
    to_output: np.ndarray
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def registered(self) -> list[str]:
        return list(self.posed.names)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _pycolmap():
    try:
        import pycolmap
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DependencyError(
            f"pycolmap is not installed ({e})",
            "install the engine dependencies (README set-up command, or the add-on preferences)",
        ) from None
    return pycolmap


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names, seen = [], {}
    for p in paths:
        base = p.stem or "image"
        k = seen.get(base, 0)
        seen[base] = k + 1
        names.append(base if k == 0 else f"{base}_{k}")
    return names


def filter_view_graph(
    num_views: int,
    edges: Sequence[tuple[int, int, np.ndarray, int]],
    max_residual_deg: float = 20.0,
    trials: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """Keep mask (E,) of the pairs consistent with the best spanning tree of the match graph.

    edges: (i, j, R_ji, inliers) with R_ji the rotation of camera j relative to camera i
    (x_j = R_ji x_i + t). Each trial draws a spanning tree (Kruskal: the first trial on
    log(inliers), the maximum spanning tree; then alternately uniformly random trees and trees on
    log(inliers) + 3 x Gumbel noise, because a wrong pair can have many inliers), chains the rotations along it
    (R_j = R_ji R_i), and scores the pairs whose residual angle(R_j R_i^T R_ji^T) is below
    ``max_residual_deg`` by sum(sqrt(inliers)). The best trial's consistent pairs are kept (re-checked
    once along the maximum spanning tree of those pairs alone, which accumulates less noise).
    """
    m = len(edges)
    if m == 0:
        return np.zeros(0, bool)
    rng = np.random.default_rng(seed)
    w = np.array([max(int(e[3]), 1) for e in edges], dtype=np.float64)
    rel = [np.asarray(e[2], dtype=np.float64) for e in edges]

    def residuals(order: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        parent = list(range(num_views))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        adj: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(num_views)]
        for k in order:
            if not allowed[k]:
                continue
            i, j = int(edges[k][0]), int(edges[k][1])
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[ri] = rj
                adj[i].append((j, rel[k]))
                adj[j].append((i, rel[k].T))
        rot: list[np.ndarray | None] = [None] * num_views
        for s0 in range(num_views):
            if rot[s0] is not None:
                continue
            rot[s0] = np.eye(3)
            stack = [s0]
            while stack:
                a = stack.pop()
                for b, r_ba in adj[a]:
                    if rot[b] is None:
                        rot[b] = r_ba @ rot[a]
                        stack.append(b)
        return np.array([rotation_angle_deg(np.eye(3), rot[int(e[1])] @ rot[int(e[0])].T @ r.T)
                         for e, r in zip(edges, rel)])

    everything = np.ones(m, bool)
    best, best_score = everything, -1.0
    for trial in range(max(1, trials)):
        if trial == 0:
            key = np.log(w)  # the maximum spanning tree
        elif trial % 2:
            key = rng.random(m)  # a uniformly random spanning tree
        else:
            key = np.log(w) + 3.0 * rng.gumbel(size=m)  # biased towards pairs with many inliers
        inl = residuals(np.argsort(-key), everything) < max_residual_deg
        score = float(np.sqrt(w)[inl].sum())
        if score > best_score:
            best_score, best = score, inl
    # re-chain along the maximum spanning tree of the consistent pairs only
    final = residuals(np.argsort(-np.log(w)), best) < max_residual_deg
    return final if float(np.sqrt(w)[final].sum()) >= best_score else best


class _CancelBridge:
    """Forwards our CancelToken to a pycolmap CancellationToken while a COLMAP stage runs."""

    def __init__(self, pycolmap, cancel: CancelToken | None) -> None:
        self.token = pycolmap.CancellationToken() if cancel is not None else None
        self._cancel = cancel
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.token is not None:
            def watch():
                while not self._stop.wait(0.1):
                    if self._cancel.cancelled:
                        self.token.cancel()
                        return

            self._thread = threading.Thread(target=watch, daemon=True)
            self._thread.start()
        return self.token

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        check(self._cancel)


def _camera_from_colmap(cam, name: str) -> Camera:
    model = cam.model_name
    p = [float(v) for v in cam.params]
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], None
    elif model == "PINHOLE":
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], None
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], Distortion(k1=p[3])
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], Distortion(k1=p[3], k2=p[4])
    elif model == "OPENCV":
        fx, fy, cx, cy = p[:4]
        dist = Distortion(k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    else:  # pragma: no cover - guarded by SfmConfig validation
        raise InputError(f"COLMAP camera model {model} is not supported", f"use one of {', '.join(CAMERA_MODELS)}")
    return Camera(fx, fy, cx, cy, int(cam.width), int(cam.height), np.eye(4), dist, name)


def _pose_of(image) -> np.ndarray:
    w2c = np.eye(4)
    w2c[:3, :4] = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
    return orthonormal_pose(w2c)


def _frame_transform(cams: list[Camera], points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation Q (3, 3), scale s and centre c of the artist frame x' = s Q (x - c)."""
    ups = np.stack([-c.R[1] for c in cams])  # camera -y (image up) in world coordinates
    up = ups.mean(0)
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-9 else np.array([0.0, 0.0, 1.0])
    pts = points if len(points) >= 8 else np.stack([c.center for c in cams])
    # centre: per-axis median in a frame whose third axis is up (horizontal axes: any)
    h0 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    h0 /= np.linalg.norm(h0)
    q0 = np.stack([h0, np.cross(up, h0), up])
    mean = pts.mean(0)
    c = mean + q0.T @ np.median((pts - mean) @ q0.T, axis=0)
    # heading: the first camera's horizontal offset from the centre goes to -Y
    d = cams[0].center - c
    d = d - up * (d @ up)
    if np.linalg.norm(d) < 1e-9:
        d = -cams[0].R[2] - up * (-cams[0].R[2] @ up)
    if np.linalg.norm(d) < 1e-9:
        d = h0
    y = -d / np.linalg.norm(d)
    x = np.cross(y, up)
    q = np.stack([x / np.linalg.norm(x), y, up])  # rows: new axes in old coordinates
    local = (pts - c) @ q.T
    if len(local) >= 8:
        extent = np.percentile(local, 98, axis=0) - np.percentile(local, 2, axis=0)
    else:
        extent = local.max(0) - local.min(0)
    size = float(extent.max())
    s = 2.0 / size if size > 1e-12 else 1.0
    return q, s, c


def _transform_camera(cam: Camera, q: np.ndarray, s: float, c: np.ndarray) -> Camera:
    r, t = cam.R, cam.t
    w2c = np.eye(4)
    w2c[:3, :3] = r @ q.T
    w2c[:3, 3] = s * (r @ c + t)
    return cam.with_pose(w2c)


# ---------------------------------------------------------------------------------------------
# main entry
# ---------------------------------------------------------------------------------------------


def estimate_poses(
    image_paths: Sequence[str | Path],
    config: SfmConfig = SfmConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SfmResult:
    """Camera poses and intrinsics for photos without cameras (module docstring has the steps).

    Raises :class:`InputError` when fewer than two distinct photos are given or no two photos
    register together, :class:`ImageError` for an unreadable photo, :class:`DependencyError`
    without pycolmap, :class:`~viewforge.engine.errors.Cancelled` when cancelled. Photos that do
    not register, duplicates and photos of other objects are warnings (log + ``warnings``).
    """
    if config.camera_model not in CAMERA_MODELS:
        raise InputError(
            f"SfM camera model {config.camera_model!r} is not supported", f"use one of {', '.join(CAMERA_MODELS)}"
        )
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s", msg)

    paths = [Path(p).expanduser() for p in image_paths]
    if len(paths) < 2:
        raise InputError(
            f"structure from motion needs at least 2 overlapping photos, got {len(paths)}",
            "add more photos of the object taken from nearby viewpoints (10-30 around it work best), "
            "or give the photo a camera",
        )
    names = _unique_names(paths)
    photos = _load_photos(paths, names, progress, cancel)
    if photos.duplicates:
        warn(
            "identical photos dropped (each kept once): "
            + ", ".join(f"{d} (same as {k})" for d, k in photos.duplicates.items())
        )
    keep = photos.keep
    if len(keep) < 2:
        raise InputError(
            f"structure from motion needs at least 2 distinct overlapping photos; the {len(paths)} given are identical",
            "add photos of the object taken from other viewpoints",
        )
    seconds["load"] = time.perf_counter() - t_start

    pycolmap = _pycolmap()
    # COLMAP's own log lines (glog, also its "E..." lines for a failed model, which this function
    # turns into typed errors) stay out of the terminal while it runs; restored afterwards.
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 3
    pycolmap.set_random_seed(int(config.seed))
    work = Path(tempfile.mkdtemp(prefix="viewforge_sfm_"))
    try:
        ws = _write_workspace(work, photos, config)

        t0 = time.perf_counter()
        report(progress, "sfm", 1, 10, "features")
        _extract_features(pycolmap, ws, {photos.images[i].shape[:2] for i in keep}, config, cancel)
        seconds["features"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report(progress, "sfm", 4, 10, "matching")
        matching, verification = _match(pycolmap, ws.db_path, config, cancel)
        seconds["matching"] = time.perf_counter() - t0
        matched_db = work / "matched.db"  # the verified pairs before any deletion (leftover pass)
        shutil.copyfile(ws.db_path, matched_db)

        t0 = time.perf_counter()
        graph = _filter_pairs(pycolmap, ws.db_path, config)
        if not graph.pairs:
            raise InputError(
                f"structure from motion found no photo pair with {config.min_pair_inliers} or more matching features "
                f"among the {len(keep)} photos",
                "take photos that overlap more (about 15-30 degrees apart around the object), of a textured, "
                "non-shiny object, in focus",
            )
        masks_all = all(photos.alphas[i] is not None for i in keep)
        recon, other_models, banned = _map_with_silhouettes(pycolmap, config, ws, graph, photos.alphas, masks_all,
                                                            progress, cancel)
        if (config.leftover_pass and masks_all and config.silhouette_max_outside > 0 and recon is not None
                and recon.num_reg_images() >= 2):
            recon = _map_leftovers(pycolmap, config, recon, banned, ws, matched_db, photos.alphas, graph, len(keep),
                                   matching, verification, progress, cancel)
        seconds["mapping"] = time.perf_counter() - t0
        if recon is None or recon.num_reg_images() < 2:
            raise InputError(
                f"structure from motion could not register any two of the {len(keep)} photos together",
                "take photos that overlap more (about 15-30 degrees apart around the object), of a textured, "
                "non-shiny object, in focus",
            )

        reg, unregistered, in_others = _registration(recon, other_models, banned, ws, graph, names, keep)
        if in_others:
            warn(
                f"{len(in_others)} photo(s) form a separate reconstruction, left out (photos of a different object?): "
                + ", ".join(names[i] for i in sorted(in_others))
            )
        rest = [n for n, r in unregistered.items() if not r.startswith("registered only")]
        if rest:
            warn("structure from motion could not place: " + "; ".join(f"{n}: {unregistered[n]}" for n in rest))
        if len(reg) < 2:
            raise InputError(
                f"structure from motion could not register any two of the {len(keep)} photos together consistently",
                "take photos that overlap more (about 15-30 degrees apart around the object), of a textured, "
                "non-shiny object, in focus",
            )
        order_reg = sorted(reg)
        cams_colmap, views, pts, cols = _registered_cameras(recon, reg, order_reg, names)
        meta = {"viewforge_sfm": {"registered": len(order_reg), "photos": len(paths)}}
        out_cams, posed, pts_out, to_output = _output_frame(cams_colmap, order_reg, photos, pts, names, config, meta)
        seconds["total"] = time.perf_counter() - t_start
        report(progress, "sfm", 10, 10, f"{len(order_reg)}/{len(keep)} photos registered")
        log.info("SfM: %d of %d photos registered, %d points, %.1f s", len(order_reg), len(keep), len(pts_out),
                 seconds["total"])
        return SfmResult(out_cams, posed, unregistered, photos.duplicates, views, pts_out, cols, to_output, warnings,
                         seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        pycolmap.logging.minloglevel = previous_level


@dataclass
class _Photos:
    """The loaded photos (all of them; ``keep``: the indices of the distinct ones)."""

    images: list[np.ndarray]
    alphas: "list[np.ndarray | None]"
    keep: list[int]
    duplicates: dict[str, str]


@dataclass
class _Workspace:
    """COLMAP's inputs on disk: photos ``NNNN.png`` (composited on white) and their masks."""

    img_dir: Path
    mask_dir: Path
    db_path: Path
    colmap_name: dict[int, str]
    index_of: dict[str, int]
    any_mask: bool


@dataclass
class _ViewGraph:
    """The verified photo pairs after the view-graph filter."""

    id_to_name: dict[int, str]
    pairs: list[tuple[int, int]]
    matched: dict[int, int]
    kept_pairs: list


def _load_photos(paths: Sequence[Path], names: list[str], progress, cancel) -> _Photos:
    """Step 1: load every photo; identical photos (same pixels) are kept once."""
    from ..images import load_image

    images: list[np.ndarray] = []
    alphas: list[np.ndarray | None] = []
    keep: list[int] = []
    duplicates: dict[str, str] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        check(cancel)
        rgb, alpha = load_image(p)
        q = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        h = hashlib.sha1(q.tobytes() + str(q.shape).encode()).hexdigest()
        images.append(rgb)
        alphas.append(alpha)
        if h in seen:
            duplicates[names[i]] = names[seen[h]]
        else:
            seen[h] = i
            keep.append(i)
        report(progress, "sfm", i + 1, len(paths) * 10, f"loading photo {i + 1}/{len(paths)}")
    return _Photos(images, alphas, keep, duplicates)


def _write_workspace(work: Path, photos: _Photos, config: SfmConfig) -> _Workspace:
    import cv2

    img_dir, mask_dir = work / "images", work / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    colmap_name: dict[int, str] = {}
    any_mask = False
    for k, i in enumerate(photos.keep):
        fname = f"{k:04d}.png"
        colmap_name[i] = fname
        rgb, alpha = photos.images[i], photos.alphas[i]
        if alpha is not None:
            rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
            m = (alpha > 0.5).astype(np.uint8) * 255
            if config.mask_erode_px > 0:
                e = 2 * config.mask_erode_px + 1
                m = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (e, e)))
            cv2.imwrite(str(mask_dir / f"{fname}.png"), m)
            any_mask = True
        bgr = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)[..., ::-1]
        cv2.imwrite(str(img_dir / fname), np.ascontiguousarray(bgr))
    index_of = {v: k for k, v in colmap_name.items()}
    return _Workspace(img_dir, mask_dir, work / "database.db", colmap_name, index_of, any_mask)


def _extract_features(pycolmap, ws: _Workspace, sizes: set, config: SfmConfig, cancel) -> None:
    """Step 2: SIFT features of every photo into the database (within the masks)."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model
    if ws.any_mask:
        reader.mask_path = str(ws.mask_dir)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(config.max_image_size)
    extraction.num_threads = int(config.num_threads)
    extraction.sift.max_num_features = int(config.max_features)
    extraction.sift.domain_size_pooling = bool(config.domain_size_pooling)
    mode = pycolmap.CameraMode.SINGLE if config.single_camera and len(sizes) == 1 else pycolmap.CameraMode.PER_IMAGE
    with _CancelBridge(pycolmap, cancel) as token:
        pycolmap.extract_features(ws.db_path, ws.img_dir, camera_mode=mode, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu,
                                  cancellation_token=token)


def _match(pycolmap, db_path: Path, config: SfmConfig, cancel):
    """Step 3: exhaustive matching with two-view verification; returns the options used (the
    guided leftover pass matches again with them)."""
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = int(config.num_threads)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = int(config.min_pair_inliers)
    verification.compute_relative_pose = True
    verification.ransac.random_seed = int(config.seed)
    with _CancelBridge(pycolmap, cancel) as token:
        pycolmap.match_exhaustive(db_path, matching_options=matching, verification_options=verification,
                                  device=pycolmap.Device.cpu, cancellation_token=token)
    return matching, verification


def _filter_pairs(pycolmap, db_path: Path, config: SfmConfig) -> _ViewGraph:
    """Step 4: the verified pairs; those whose relative rotation contradicts the others
    (:func:`filter_view_graph`) lose their matches in the database."""
    db = pycolmap.Database.open(db_path)
    try:
        id_to_name = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
        pairs: list[tuple[int, int]] = []
        edges: list[tuple[int, int, np.ndarray, int]] = []
        order = sorted(id_to_name)
        pos = {iid: k for k, iid in enumerate(order)}
        for pid, g in zip(pair_ids, geometries):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            n_inl = len(g.inlier_matches)
            if n_inl < config.min_pair_inliers:
                continue
            pairs.append((a, b))
            edges.append((pos[a], pos[b], np.asarray(g.cam2_from_cam1.rotation.matrix()), n_inl))
        matched: dict[int, int] = {}
        for a, b in pairs:
            matched[a] = matched.get(a, 0) + 1
            matched[b] = matched.get(b, 0) + 1
        if config.graph_trials > 0 and edges:
            ok = filter_view_graph(len(order), edges, config.graph_max_residual_deg, config.graph_trials,
                                   config.seed)
            for (a, b), k in zip(pairs, ok):
                if not k:
                    db.delete_inlier_matches(a, b)
            dropped = int((~ok).sum())
            if dropped:
                log.info("view-graph filter: %d of %d photo pairs contradict the others; dropped", dropped,
                         len(edges))
        kept_pairs = [(a, b, e) for (a, b), e, k in zip(pairs, edges, ok if edges and config.graph_trials > 0
                                                           else np.ones(len(edges), bool)) if k]
    finally:
        db.close()
    return _ViewGraph(id_to_name, pairs, matched, kept_pairs)


def _map_with_silhouettes(pycolmap, config: SfmConfig, ws: _Workspace, graph: _ViewGraph, alphas, masks_all: bool,
                          progress, cancel):
    """Steps 5-6: incremental mapping; while registered photos contradict the silhouettes, the
    pairs supporting them are dropped and the mapping runs again (``silhouette_rounds``).
    Returns (the largest model or None, the other models, {photo name: why it was banned})."""
    banned: dict[str, str] = {}
    recon, other_models = None, []
    bad: dict[int, float] = {}

    def ban(model, failures: dict[int, float]) -> None:
        for image_id, frac in failures.items():
            banned[model.image(image_id).name] = (
                f"its pose contradicts the silhouettes of {100 * frac:.0f}% of the other photos "
                "(symmetric or repeated structure)"
            )

    for round_ in range(max(0, config.silhouette_rounds) + 1):
        check(cancel)
        report(progress, "sfm", min(9, 6 + round_), 10, "mapping")
        out_dir = ws.db_path.parent / f"sparse_{round_}"
        out_dir.mkdir()
        options = _mapping_options(pycolmap, config)
        with _CancelBridge(pycolmap, cancel) as token:
            models = pycolmap.incremental_mapping(ws.db_path, ws.img_dir, out_dir, options, cancellation_token=token)
        models = sorted(models.values(), key=lambda r: -r.num_reg_images())
        if not models:  # re-mapping failed: keep the previous model without its wrong photos
            if recon is not None:
                ban(recon, bad)
            break
        recon, other_models = models[0], models[1:]
        if not (masks_all and config.silhouette_max_outside > 0):
            break
        bad = _silhouette_failures(recon, ws.index_of, alphas, config.silhouette_max_outside)
        if not bad:
            break
        if round_ == config.silhouette_rounds:
            ban(recon, bad)
            break
        _drop_pairs_supporting(pycolmap, ws.db_path, recon, bad, graph.kept_pairs, config.graph_max_residual_deg)
    return recon, other_models, banned


def _map_leftovers(pycolmap, config: SfmConfig, recon, banned, ws: _Workspace, matched_db: Path, alphas,
                   graph: _ViewGraph, n_keep: int, matching, verification, progress, cancel):
    """The photos the mapping left out get a second try (:func:`_leftover_pass`), then, with
    ``leftover_guided``, a third after guided matching."""
    work = ws.db_path.parent
    check(cancel)
    report(progress, "sfm", 9, 10, "mapping the leftover photos")
    recon, used_db = _leftover_pass(pycolmap, config, recon, banned, ws.db_path, matched_db, ws.img_dir, work,
                                    ws.index_of, alphas, graph.id_to_name, n_keep, cancel)
    registered_now = {im.name for im in recon.images.values() if im.has_pose and im.name not in banned}
    if config.leftover_guided and len(registered_now) < n_keep:
        # guided matching (epipolar geometry of each verified pair) finds more matches on the
        # wide baselines; the photos still left out get a second try with relaxed thresholds
        report(progress, "sfm", 9, 10, "guided matching for the leftover photos")
        guided_db = work / "guided.db"
        shutil.copyfile(matched_db, guided_db)
        db = pycolmap.Database.open(guided_db)
        try:
            db.clear_matches()
            db.clear_two_view_geometries()
        finally:
            db.close()
        matching.guided_matching = True
        with _CancelBridge(pycolmap, cancel) as token:
            pycolmap.match_exhaustive(guided_db, matching_options=matching,
                                      verification_options=verification, device=pycolmap.Device.cpu,
                                      cancellation_token=token)
        recon, _ = _leftover_pass(pycolmap, config, recon, banned, used_db or ws.db_path, guided_db, ws.img_dir,
                                  work, ws.index_of, alphas, graph.id_to_name, n_keep, cancel, stage=1,
                                  relaxed=True)
    return recon


def _registration(recon, other_models, banned, ws: _Workspace, graph: _ViewGraph, names: list[str],
                  keep: list[int]):
    """Step 7: ({photo index: registered COLMAP image}, {photo name: why it was not placed},
    indices of the photos registered only in another model)."""
    reg: dict[int, object] = {}
    for image_id, im in recon.images.items():
        if not im.has_pose or im.name in banned:
            continue
        reg[ws.index_of[im.name]] = im
    in_others: set[int] = set()
    for r in other_models:
        for image_id, im in r.images.items():
            if im.has_pose and ws.index_of[im.name] not in reg:
                in_others.add(ws.index_of[im.name])
    unregistered: dict[str, str] = {}
    name_to_id = {v: k for k, v in graph.id_to_name.items()}
    for i in keep:
        if i in reg:
            continue
        cname = ws.colmap_name[i]
        if cname in banned:
            unregistered[names[i]] = banned[cname]
        elif i in in_others:
            unregistered[names[i]] = (
                "registered only in a separate model (a different object, or too little overlap with the others)"
            )
        elif graph.matched.get(name_to_id.get(cname, -1), 0) == 0:
            unregistered[names[i]] = (
                "no matching features with any other photo (too little overlap or texture, or another object)"
            )
        else:
            unregistered[names[i]] = "matched other photos but too few features to place it"
    return reg, unregistered, in_others


def _registered_cameras(recon, reg: dict, order_reg: list[int], names: list[str]):
    """The registered photos' cameras (COLMAP's frame), their reliability, and the 3D points
    (and colours) they observe."""
    cams_colmap: list[Camera] = []
    views: list[ViewReliability] = []
    pts_ids = list(recon.point3D_ids())
    pid_index = {pid: k for k, pid in enumerate(pts_ids)}
    pts = np.array([recon.point3D(pid).xyz for pid in pts_ids], dtype=np.float64).reshape(-1, 3)
    cols = np.array([recon.point3D(pid).color for pid in pts_ids], dtype=np.uint8).reshape(-1, 3)
    used_points = np.zeros(len(pts), bool)
    for i in order_reg:
        im = reg[i]
        cam = _camera_from_colmap(recon.camera(im.camera_id), names[i]).with_pose(_pose_of(im))
        obs_xy, obs_p = [], []
        for p2 in im.points2D:
            if p2.has_point3D():
                obs_xy.append(p2.xy)
                obs_p.append(pid_index[p2.point3D_id])
        n_obs = len(obs_p)
        if n_obs:
            used_points[obs_p] = True
            uv, _ = cam.project(pts[obs_p])
            rms = float(np.sqrt(np.mean(np.sum((uv - np.asarray(obs_xy)) ** 2, axis=1))))
        else:
            rms = float("inf")
        score = min(1.0, n_obs / 100.0) * min(1.0, 1.0 / max(rms, 1e-9))
        views.append(ViewReliability(names[i], n_obs, rms, score, score >= 0.3))
        cams_colmap.append(cam)
    return cams_colmap, views, pts[used_points], cols[used_points]


def _output_frame(cams_colmap: list[Camera], order_reg: list[int], photos: _Photos, pts: np.ndarray,
                  names: list[str], config: SfmConfig, meta: dict):
    """Step 8: undistort the photos, map cameras and points into the output frame: (cameras,
    the posed set, points, the (4, 4) COLMAP -> output transform)."""
    from ..images import undistort as undistort_image

    out_images, out_alphas, out_cams = [], [], []
    for cam, i in zip(cams_colmap, order_reg):
        rgb, alpha = photos.images[i], photos.alphas[i]
        if config.undistort and cam.distortion is not None:
            rgb, alpha, cam = undistort_image(rgb, cam, alpha)
        out_images.append(np.clip(rgb, 0, 1).astype(np.float32))
        out_alphas.append(alpha)
        out_cams.append(cam)
    if config.normalize_frame:
        q, s, c = _frame_transform(out_cams, pts)
    else:
        q, s, c = np.eye(3), 1.0, np.zeros(3)
    out_cams = [_transform_camera(cam, q, s, c) for cam in out_cams]
    pts_out = s * (pts - c) @ q.T
    to_output = np.eye(4)
    to_output[:3, :3] = s * q
    to_output[:3, 3] = -s * q @ c
    masks = None
    if all(a is not None for a in out_alphas):
        masks = [np.clip(a, 0, 1).astype(np.float32) for a in out_alphas]
    posed = PosedSet(out_cams, out_images, masks, [names[i] for i in order_reg], meta)
    return out_cams, posed, pts_out, to_output


def _mapping_options(pycolmap, config: SfmConfig):
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = int(config.num_threads)
    options.random_seed = int(config.seed)
    options.min_model_size = 2
    options.min_num_matches = int(config.min_pair_inliers)
    options.ba_refine_principal_point = False
    options.mapper.abs_pose_min_num_inliers = int(config.abs_pose_min_inliers)
    options.mapper.init_min_num_inliers = int(config.init_min_inliers)
    options.mapper.init_min_tri_angle = float(config.init_min_tri_angle_deg)
    options.mapper.random_seed = int(config.seed)
    return options


def _leftover_pass(pycolmap, config: SfmConfig, recon, banned: dict[str, str], db_path: Path, pairs_db: Path,
                   img_dir: Path, work: Path, index_of: dict[str, int], alphas, id_to_name: dict[int, str],
                   num_photos: int, cancel: CancelToken | None, stage: int = 0, relaxed: bool = False):
    """Step 7 of the module docstring: continue the mapping from ``recon`` (its photos fixed) on the
    verified pairs of ``pairs_db`` less the pairs between two of its photos that ``db_path`` (the
    database ``recon`` was mapped from) lacks; ``relaxed``: the absolute-pose thresholds of
    ``config.leftover_abs_pose_*``. Returns the extended model (photos it adds that fail the
    silhouette check go into ``banned``) and its database, or ``recon`` and None."""
    old = {im.name for im in recon.images.values() if im.has_pose and im.name not in banned}
    if len(old) >= num_photos:
        return recon, None
    # the photos banned by the silhouette rounds leave the input model (they are leftovers too)
    for im in list(recon.images.values()):
        if im.has_pose and im.name in banned:
            recon.deregister_frame(im.frame_id)
    current = pycolmap.Database.open(db_path)
    try:
        kept = set(pid for pid, g in zip(*current.read_two_view_geometries()) if len(g.inlier_matches) > 0)
    finally:
        current.close()
    excluded: set[str] = set()  # photos that failed the silhouette check: all their pairs go
    for attempt in range(2):
        db2 = work / f"leftover_{stage}_{attempt}.db"
        shutil.copyfile(pairs_db, db2)
        db = pycolmap.Database.open(db2)
        try:
            for pid, _ in zip(*db.read_two_view_geometries()):
                a, b = pycolmap.pair_id_to_image_pair(pid)
                na, nb = id_to_name[a], id_to_name[b]
                if (na in old and nb in old and pid not in kept) or na in excluded or nb in excluded:
                    db.delete_inlier_matches(a, b)
        finally:
            db.close()
        in_dir, out_dir = work / f"leftover_in_{stage}_{attempt}", work / f"leftover_out_{stage}_{attempt}"
        in_dir.mkdir()
        out_dir.mkdir()
        recon.write(in_dir)
        options = _mapping_options(pycolmap, config)
        options.fix_existing_frames = True
        options.mapper.fix_existing_frames = True
        if relaxed:
            options.mapper.abs_pose_min_num_inliers = int(config.leftover_abs_pose_min_inliers)
            options.mapper.abs_pose_min_inlier_ratio = float(config.leftover_abs_pose_min_inlier_ratio)
        try:
            with _CancelBridge(pycolmap, cancel) as token:
                models = pycolmap.incremental_mapping(db2, img_dir, out_dir, options, input_path=in_dir,
                                                      cancellation_token=token)
        except (RuntimeError, IndexError, ValueError) as e:  # COLMAP failures: keep the model as it is
            log.info("SfM: the leftover pass failed (%s); skipped", e)
            return recon, None
        models = sorted(models.values(), key=lambda r: -r.num_reg_images())
        if not models:
            return recon, None
        new = models[0]
        names = {im.name for im in new.images.values() if im.has_pose}
        added = names - old
        if not old <= names or not added:
            return recon, None
        failing = {new.image(iid).name: frac for iid, frac in
                   _silhouette_failures(new, index_of, alphas, config.silhouette_max_outside).items()}
        if set(failing) & old:
            log.info("SfM: the leftover pass contradicts the registered photos' silhouettes; discarded")
            return recon, None
        for name, frac in failing.items():
            banned[name] = (
                f"its pose contradicts the silhouettes of {100 * frac:.0f}% of the other photos "
                "(symmetric or repeated structure)"
            )
        if not failing or attempt == 1:  # the photos that pass stay, the failing ones are reported
            for name in added - set(failing):
                banned.pop(name, None)
            log.info("SfM: the leftover pass registered %d more photo(s)", len(added - set(failing)))
            return new, db2
        excluded |= set(failing)
    return recon, None


def _silhouette_failures(recon, index_of: dict[str, int], alphas, max_outside: float) -> dict[int, float]:
    """image_id -> conflict fraction, for the registered images whose pose contradicts the others'
    silhouettes. C[i, j] = fraction of the points image i observes that project (in front of the
    camera) outside image j's dilated alpha. Images i, j conflict when max(C[i, j], C[j, i]) >
    ``max_outside``. A wrongly placed group of images triangulates a misplaced copy of the object,
    so it conflicts with every correct image and vice versa; the image with the most conflicts is
    removed until none are left (the majority stays)."""
    import cv2

    ids = [iid for iid, im in recon.images.items() if im.has_pose]
    if len(ids) < 3:
        return {}
    observed: dict[int, np.ndarray] = {}
    cams: dict[int, Camera] = {}
    masks: dict[int, np.ndarray] = {}
    for iid in ids:
        im = recon.image(iid)
        observed[iid] = np.array([recon.point3D(p.point3D_id).xyz for p in im.points2D if p.has_point3D()],
                                 dtype=np.float64).reshape(-1, 3)
        cams[iid] = _camera_from_colmap(recon.camera(im.camera_id), im.name).with_pose(_pose_of(im))
        alpha = alphas[index_of[im.name]]
        h, w = alpha.shape
        r = max(2, int(round(0.02 * max(h, w))))
        masks[iid] = cv2.dilate((alpha > 0.5).astype(np.uint8),
                                cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    n = len(ids)
    c = np.zeros((n, n))
    for a, i in enumerate(ids):
        if len(observed[i]) < 10:
            continue
        for b, j in enumerate(ids):
            if a == b:
                continue
            uv, z = cams[j].project(observed[i])
            front = z > 0
            if front.sum() < 10:
                continue
            m = masks[j]
            h, w = m.shape
            x = np.floor(uv[front, 0]).astype(int)
            y = np.floor(uv[front, 1]).astype(int)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            hit = np.zeros(len(x), bool)
            hit[inside] = m[y[inside], x[inside]] > 0
            c[a, b] = 1.0 - float(hit.mean())
    conflict = np.maximum(c, c.T) > max_outside
    alive = np.ones(n, bool)
    bad: dict[int, float] = {}
    while True:
        counts = (conflict & alive[None, :] & alive[:, None]).sum(1)
        k = int(np.argmax(counts))
        if counts[k] == 0:
            break
        alive[k] = False
        bad[ids[k]] = float(counts[k]) / max(1, int(alive.sum()))
    return bad


def _drop_pairs_supporting(pycolmap, db_path: Path, recon, bad: dict[int, float], pairs, tol_deg: float) -> None:
    """Delete the pairs between a wrongly registered image and the others whose relative rotation
    agrees with the wrong pose (those placed it), so the next mapping round cannot repeat it."""
    poses = {iid: _pose_of(im) for iid, im in recon.images.items() if im.has_pose}
    db = pycolmap.Database.open(db_path)
    try:
        for a, b, e in pairs:
            if a not in bad and b not in bad:
                continue
            if a in poses and b in poses:
                r_ba = poses[b][:3, :3] @ poses[a][:3, :3].T
                if rotation_angle_deg(np.eye(3), r_ba @ np.asarray(e[2]).T) > tol_deg:
                    continue
            db.delete_inlier_matches(a, b)
    finally:
        db.close()
    log.info("SfM: %d photo(s) contradict their silhouettes; re-mapping without the pairs that placed them", len(bad))


def write_sfm_result(result: SfmResult, out_dir: str | Path) -> Path:
    """Write the registered photos and their cameras as a posed set (transforms.json + images,
    :func:`viewforge.engine.io.posed.write_posed_set`); returns the folder."""
    from ..io.posed import write_posed_set

    return write_posed_set(result.posed, out_dir)


__all__ = ["CAMERA_MODELS", "SfmConfig", "SfmResult", "estimate_poses", "filter_view_graph", "write_sfm_result"]
