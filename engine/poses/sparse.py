"""Sparse pose refinement against a model (ReconViaGen's refinement): render, match, PnP.

For each photo i with current world-to-camera pose W_i (docs/poses.md has the derivation):

1. Render the model (Gaussian splats) at W_i (:func:`viewforge.engine.splat.fit.render_splats`,
   colour on white, alpha and expected depth D(u)), at a working size whose longer side is at
   most ``max_size`` (intrinsics K scaled with it). The photo is downscaled the same way and
   composited on white where it has alpha.
2. SIFT keypoints on both (the photo's inside its eroded alpha when it has one; the render's only
   where alpha > ``min_alpha`` and the depth is smooth: max - min depth over a
   (2 ``edge_px`` + 1)^2 window below ``max_depth_jump`` x depth, so no keypoint sits on a depth
   edge where the expected depth mixes surfaces). Mutual nearest neighbours (RootSIFT, L2) that
   pass Lowe's ratio test ``ratio``.
   Rounds after the first follow corners of the render into the photo by Lucas-Kanade
   (``track_rounds``). Any round with fewer than ``dense_below`` correspondences (weakly textured
   objects) uses dense optical flow (DIS) on a grid of valid render pixels instead.
3. Lift each matched render keypoint u (continuous pixel coordinates) to 3D with the rendered
   depth: X_c = D(u) K^-1 (u, 1)^T in the render's camera frame, X = W_i^-1 X_c in the world.
4. ``cv2.solvePnPRansac`` (iterative solver, ``useExtrinsicGuess`` from W_i, reprojection
   threshold ``ransac_px``) on the pairs (X, photo keypoint), then ``cv2.solvePnPRefineLM`` on
   the inliers: the pose minimising sum_k || pi(K (R X_k + t)) - x_k ||^2.
5. Accept the new pose when it has >= ``min_inliers`` inliers, an inlier RMS <= ``max_rms_px``
   and moved less than ``max_step_deg``; re-render at it and repeat (``iterations`` rounds: the
   first round's depths come from a render at the wrong pose, a little off; later rounds match
   a render that nearly coincides with the photo). A view never accepted keeps its input pose.

Each view gets a :class:`~viewforge.engine.poses.features.ViewReliability`: PnP inliers, their
RMS reprojection error in working pixels, score ``min(1, n / (4 min_inliers)) * max(0, 1 -
rms / max_rms_px)`` and reliable = accepted at least once.

Optionally (``photometric``) a second stage aligns the reliable cameras photometrically to the
model (:func:`viewforge.engine.poses.photometric.align_cameras`, L-BFGS on the image and alpha
error); docs/poses.md reports what each stage gives.

:func:`refine_photo_rig` is the few-photo stage that completion runs first: the photos against
each other, without a model (feature matches + bundle adjustment with the centres held, accepted
only where the matches then agree better than at the input cameras); docs/poses.md section 3.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..cameras import Camera, rotation_angle_deg
from ..device import resolve_device
from ..errors import InputError
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback, check, report
from .features import ViewReliability

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparseRefineConfig:
    """Settings of :func:`refine_cameras_to_model`.

    iterations: render-match-PnP rounds per view.
    max_size: working size (longer side, pixels) of the renders and the photos.
    max_features: SIFT keypoints per image; contrast_threshold: SIFT's (OpenCV default 0.04; lower
        finds more keypoints on renders, which are smoother than photos).
    ratio: Lowe's ratio test threshold.
    min_alpha: render keypoints only where the rendered alpha exceeds this.
    edge_px, max_depth_jump: render keypoints only where the depth varies by less than
        ``max_depth_jump`` x depth within ``edge_px`` pixels.
    mask_erode_px: photo keypoints only inside its alpha eroded by this many pixels.
    ransac_px: PnP RANSAC reprojection threshold (working pixels).
    min_inliers, max_rms_px, max_step_deg: acceptance of a round's pose (module docstring).
    track_rounds: rounds after the first match by tracking instead of SIFT: corners of the render
        (Shi-Tomasi, at most ``track_corners``) followed into the photo by pyramidal Lucas-Kanade
        (``track_window`` px window), kept when tracking back returns within ``track_fb_px``.
        After the first round the render nearly coincides with the photo, so tracking gives more,
        sub-pixel correspondences than SIFT's detector.
    dense_below, dense_step: when a round finds fewer than ``dense_below`` correspondences (weakly
        textured objects: Duck gives SIFT 7-12 matches), it uses dense optical flow instead (DIS,
        OpenCV), render -> photo and back, on a ``dense_step`` px grid of valid render pixels,
        kept where the round trip returns within ``track_fb_px``; 0 = off.
    photometric: then align the reliable views photometrically (photometric.align_cameras).
    photometric_steps, photometric_size: its L-BFGS steps and working size.
    device: device of the renders ("auto", "cpu", "cuda", "mps").
    seed: OpenCV's RNG seed (RANSAC).
    """

    iterations: int = 3
    max_size: int = 512
    max_features: int = 4000
    contrast_threshold: float = 0.02
    ratio: float = 0.85
    min_alpha: float = 0.9
    edge_px: int = 1
    max_depth_jump: float = 0.05
    mask_erode_px: int = 2
    ransac_px: float = 2.0
    min_inliers: int = 15
    max_rms_px: float = 1.5
    max_step_deg: float = 10.0
    dense_below: int = 60
    dense_step: int = 4
    track_rounds: bool = True
    track_corners: int = 3000
    track_window: int = 15
    track_fb_px: float = 0.5
    photometric: bool = False
    photometric_steps: int = 100
    photometric_size: int = 256
    device: str = "auto"
    seed: int = 0


@dataclass
class SparseRefineResult:
    """cameras: the refined cameras (input order and size; unreliable views keep the input pose).
    views: one reliability per view (of the last accepted PnP round, or of the last attempt).
    seconds: wall time per stage ("pnp", "photometric", "total")."""

    cameras: list[Camera]
    views: list[ViewReliability]
    seconds: dict[str, float] = field(default_factory=dict)


def _rootsift(desc: np.ndarray | None) -> np.ndarray:
    if desc is None or len(desc) == 0:
        return np.zeros((0, 128), np.float32)
    d = desc / np.maximum(np.abs(desc).sum(1, keepdims=True), 1e-12)
    return np.sqrt(d).astype(np.float32)


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    u8 = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY)


def _mutual_ratio_matches(d1: np.ndarray, d2: np.ndarray, ratio: float) -> np.ndarray:
    """(M, 2) index pairs: mutual nearest neighbours passing the ratio test."""
    import cv2

    if len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), int)
    bf = cv2.BFMatcher(cv2.NORM_L2)
    fwd = bf.knnMatch(d1, d2, k=2)
    bwd = bf.match(d2, d1)
    back = {m.queryIdx: m.trainIdx for m in bwd}
    out = []
    for pair in fwd:
        if len(pair) < 2:
            continue
        a, b = pair
        if a.distance < ratio * b.distance and back.get(a.trainIdx) == a.queryIdx:
            out.append((a.queryIdx, a.trainIdx))
    return np.array(out, int).reshape(-1, 2)


def _track(gray_r: np.ndarray, gray_p: np.ndarray, valid: np.ndarray, cfg: SparseRefineConfig):
    """Corners of the render (inside ``valid``) tracked into the photo by pyramidal Lucas-Kanade,
    kept when tracking back lands within ``track_fb_px`` of the start. Returns (render xy, photo
    xy), (M, 2) each, OpenCV pixel coordinates."""
    import cv2

    m = cv2.erode(valid.astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    corners = cv2.goodFeaturesToTrack(gray_r, maxCorners=int(cfg.track_corners), qualityLevel=0.01,
                                      minDistance=3, mask=m)
    if corners is None or len(corners) < 6:
        return np.zeros((0, 2)), np.zeros((0, 2))
    p0 = corners.reshape(-1, 1, 2).astype(np.float32)
    lk = dict(winSize=(cfg.track_window, cfg.track_window), maxLevel=3,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 0.01))
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_r, gray_p, p0, None, **lk)
    pb, st2, _ = cv2.calcOpticalFlowPyrLK(gray_p, gray_r, p1, None, **lk)
    fb = np.linalg.norm((pb - p0).reshape(-1, 2), axis=1)
    good = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < cfg.track_fb_px)
    return p0.reshape(-1, 2)[good].astype(np.float64), p1.reshape(-1, 2)[good].astype(np.float64)


def _dense_flow(gray_r: np.ndarray, gray_p: np.ndarray, valid: np.ndarray, photo_mask: np.ndarray | None,
                cfg: SparseRefineConfig):
    """Dense correspondences for weakly textured objects: DIS optical flow render -> photo and back
    on a ``dense_step`` px grid of valid render pixels, kept where the round trip returns within
    ``track_fb_px`` (and, with an alpha, lands inside the photo's). Returns (render xy, photo xy)."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd = dis.calc(gray_r, gray_p, None)
    bwd = dis.calc(gray_p, gray_r, None)
    h, w = gray_r.shape
    m = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    ys, xs = np.mgrid[0:h:cfg.dense_step, 0:w:cfg.dense_step]
    keep = m[ys, xs]
    xs, ys = xs[keep].astype(np.float32), ys[keep].astype(np.float32)
    if len(xs) < 6:
        return np.zeros((0, 2)), np.zeros((0, 2))
    f = fwd[ys.astype(int), xs.astype(int)]
    x1, y1 = xs + f[:, 0], ys + f[:, 1]
    bx = cv2.remap(bwd[..., 0], x1[None], y1[None], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1e6)[0]
    by = cv2.remap(bwd[..., 1], x1[None], y1[None], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1e6)[0]
    good = np.hypot(x1 + bx - xs, y1 + by - ys) < cfg.track_fb_px
    good &= (x1 >= 0) & (x1 <= w - 1) & (y1 >= 0) & (y1 <= h - 1)
    if photo_mask is not None:
        inside = np.zeros_like(good)
        inside[good] = photo_mask[np.round(y1[good]).astype(int), np.round(x1[good]).astype(int)] > 0
        good &= inside
    r = np.stack([xs, ys], 1)[good].astype(np.float64)
    p = np.stack([x1, y1], 1)[good].astype(np.float64)
    return r, p


def _refine_one(splats, cam: Camera, photo: np.ndarray, mask: np.ndarray | None, cfg: SparseRefineConfig,
                sift, device, cancel) -> tuple[np.ndarray, ViewReliability, bool]:
    """Refined world-to-camera (4, 4) of one view, its reliability and whether it was accepted."""
    import cv2

    from ..images import resize
    from ..splat.fit import render_splats

    factor = min(1.0, cfg.max_size / max(cam.width, cam.height))
    w = max(16, int(round(cam.width * factor)))
    h = max(16, int(round(cam.height * factor)))
    small = cam.resized(w, h).without_distortion()
    img = resize(photo, w, h) if (w, h) != (cam.width, cam.height) else photo
    photo_mask = None
    if mask is not None:
        m = resize(mask, w, h) if (w, h) != (cam.width, cam.height) else mask
        img = img * m[..., None] + (1.0 - m[..., None])
        photo_mask = (m > 0.5).astype(np.uint8) * 255
        if cfg.mask_erode_px > 0:
            k = 2 * cfg.mask_erode_px + 1
            photo_mask = cv2.erode(photo_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    gray_p = _gray(img)
    kp_p, desc_p = sift.detectAndCompute(gray_p, photo_mask)
    desc_p = _rootsift(desc_p)
    xy_p = np.array([k.pt for k in kp_p], np.float64).reshape(-1, 2)  # OpenCV pixel centres
    dist = cam.distortion.as_opencv() if cam.distortion is not None else None
    k_cv = small.K_opencv
    w2c = np.array(cam.world_to_camera, dtype=np.float64)
    accepted_any = False
    rel = ViewReliability(cam.name, 0, float("inf"), 0.0, False)
    for round_ in range(max(1, cfg.iterations)):
        check(cancel)
        cur = small.with_pose(w2c)
        r = render_splats(splats, [cur], background=(1.0, 1.0, 1.0), device=device, with_depth=True)[0]
        depth, alpha = r["depth"].astype(np.float64), r["alpha"]
        valid = (alpha > cfg.min_alpha) & np.isfinite(depth) & (depth > 0)
        if cfg.edge_px > 0:
            k = 2 * cfg.edge_px + 1
            big = np.where(valid, depth, 0.0).astype(np.float32)
            small_d = np.where(valid, depth, np.inf).astype(np.float32)
            dmax = cv2.dilate(big, np.ones((k, k), np.uint8))
            dmin = cv2.erode(small_d, np.ones((k, k), np.uint8))
            valid &= (dmax - dmin) < cfg.max_depth_jump * np.maximum(depth, 1e-9)
        gray_r = _gray(r["rgb"])
        need = max(6, cfg.min_inliers)
        if cfg.track_rounds and round_ >= 1:
            ur, xp = _track(gray_r, gray_p, valid, cfg)
        else:
            kp_r, desc_r = sift.detectAndCompute(gray_r, valid.astype(np.uint8) * 255)
            desc_r = _rootsift(desc_r)
            xy_r = np.array([k.pt for k in kp_r], np.float64).reshape(-1, 2)
            pairs = _mutual_ratio_matches(desc_r, desc_p, cfg.ratio)
            ur, xp = xy_r[pairs[:, 0]], xy_p[pairs[:, 1]]
        if len(ur) < cfg.dense_below and cfg.dense_step > 0:
            ur, xp = _dense_flow(gray_r, gray_p, valid, photo_mask, cfg)
        if len(ur) < need:
            rel = ViewReliability(cam.name, int(len(ur)), float("inf"), 0.0, accepted_any)
            break
        ix = np.clip(np.round(ur[:, 0]).astype(int), 0, w - 1)
        iy = np.clip(np.round(ur[:, 1]).astype(int), 0, h - 1)
        d = depth[iy, ix]
        ok = valid[iy, ix]
        ur, d, xp = ur[ok], d[ok], xp[ok]
        # continuous coordinates (+0.5) through the continuous-convention K
        rays = np.stack([(ur[:, 0] + 0.5 - cur.cx) / cur.fx, (ur[:, 1] + 0.5 - cur.cy) / cur.fy,
                         np.ones(len(ur))], axis=1)
        xc = rays * d[:, None]
        xw = (xc - w2c[:3, 3]) @ w2c[:3, :3]  # R^T (X_c - t)
        if len(xw) < max(6, cfg.min_inliers):
            rel = ViewReliability(cam.name, int(len(xw)), float("inf"), 0.0, accepted_any)
            break
        rvec0, _ = cv2.Rodrigues(w2c[:3, :3])
        tvec0 = w2c[:3, 3].reshape(3, 1).copy()
        ok_pnp, rvec, tvec, inl = cv2.solvePnPRansac(
            xw.astype(np.float64), xp.astype(np.float64), k_cv, dist, rvec=rvec0.copy(), tvec=tvec0.copy(),
            useExtrinsicGuess=True, iterationsCount=1000, reprojectionError=float(cfg.ransac_px),
            confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE,
        )
        if not ok_pnp or inl is None or len(inl) < cfg.min_inliers:
            rel = ViewReliability(cam.name, 0 if inl is None else int(len(inl)), float("inf"), 0.0, accepted_any)
            break
        inl = inl.reshape(-1)
        rvec, tvec = cv2.solvePnPRefineLM(xw[inl], xp[inl], k_cv, dist, rvec, tvec)
        proj, _ = cv2.projectPoints(xw[inl], rvec, tvec, k_cv, dist)
        rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - xp[inl]) ** 2, axis=1))))
        rot, _ = cv2.Rodrigues(rvec)
        step = rotation_angle_deg(rot.T, w2c[:3, :3].T)
        n = int(len(inl))
        score = min(1.0, n / (4.0 * cfg.min_inliers)) * max(0.0, 1.0 - rms / cfg.max_rms_px)
        if rms > cfg.max_rms_px or step > cfg.max_step_deg:
            rel = ViewReliability(cam.name, n, rms, 0.0, accepted_any)
            break
        new = np.eye(4)
        new[:3, :3] = rot
        new[:3, 3] = tvec.reshape(3)
        w2c = new
        accepted_any = True
        rel = ViewReliability(cam.name, n, rms, score, True)
    return w2c, rel, accepted_any


def refine_cameras_to_model(
    posed: PosedSet,
    splats,
    config: SparseRefineConfig = SparseRefineConfig(),
    *,
    device=None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SparseRefineResult:
    """Refine each camera of ``posed`` against the fixed model ``splats`` by rendering, SIFT
    matching and PnP (module docstring); unreliable views keep their input pose.
    device: the torch.device the job resolved (None: resolved here from ``config.device``)."""
    import cv2

    if len(posed) == 0:
        raise InputError("no photos to refine", "give at least one photo with its camera")
    device = resolve_device(config.device) if device is None else device
    t0 = time.perf_counter()
    cv2.setRNGSeed(int(config.seed))
    sift = cv2.SIFT_create(nfeatures=int(config.max_features), contrastThreshold=float(config.contrast_threshold))
    cams: list[Camera] = []
    views: list[ViewReliability] = []
    n = len(posed)
    for i, cam in enumerate(posed.cameras):
        check(cancel)
        mask = None if posed.masks is None else posed.masks[i]
        w2c, rel, ok = _refine_one(splats, cam, posed.images[i], mask, config, sift, device, cancel)
        cams.append(cam.with_pose(w2c) if ok else cam)
        views.append(rel)
        report(progress, "poses", i + 1, n, f"camera {i + 1}/{n}")
    seconds = {"pnp": time.perf_counter() - t0}
    unreliable = [v.name for v in views if not v.reliable]
    if unreliable:
        log.warning("sparse pose refinement: %d view(s) kept their input pose (too few reliable matches): %s",
                    len(unreliable), ", ".join(unreliable))
    if config.photometric:
        t1 = time.perf_counter()
        from .photometric import AlignConfig, align_cameras

        idx = [i for i, v in enumerate(views) if v.reliable]
        if idx:
            sub = PosedSet([cams[i] for i in idx], [posed.images[i] for i in idx],
                           None if posed.masks is None else [posed.masks[i] for i in idx],
                           [posed.names[i] for i in idx])
            res = align_cameras(splats, sub, AlignConfig(steps=config.photometric_steps,
                                                         max_size=config.photometric_size),
                                device=device, cancel=cancel)
            for k, i in enumerate(idx):
                cams[i] = res.cameras[k]
        seconds["photometric"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    return SparseRefineResult(cams, views, seconds)


# -- photo to photo: the few-photo stage ------------------------------------------------------


@dataclass(frozen=True)
class PhotoRigConfig:
    """Settings of :func:`refine_photo_rig` (a few photos, as completion gets them).

    max_size: working size of the feature stage (longer side, pixels).
    contrasts: SIFT contrast thresholds, one attempt each (0.04: OpenCV's default; 0.005 finds
        keypoints on weakly textured, unlit surfaces); the accepted attempt with the most inlier
        observations is kept.
    min_matches: a pair needs this many epipolar inliers.
    min_observations: a view needs this many inlier observations to take its refined pose (with
        fewer the adjustment fits the matches and not the pose: Duck's 2 photos at SIFT contrast
        0.001, 17-19 matches each, went from 1.6 to 3.6-4.4 degrees after alignment).
    max_step_deg: a view whose refined pose turns by more than this keeps its input pose (the
        scene cameras are a few degrees off at most; a larger turn is a degenerate adjustment).
    band_schedule: the guided matching's epipolar bands per round (FeatureConfig's); the first
        round is unguided (0): a 3 degree error moves the epipolar lines by ~f * 0.05 px (18 px at
        256 px, 40 px at 480 px), more than FeatureConfig's first band (6 % of the side), so a
        guided first round keeps the matches that agree with the wrong cameras (docs/poses.md,
        "first matching round unguided").
    prior_rotation, prior_translation: the bundle adjustment's prior weights on each camera's
        rotation and on its translation (FeatureConfig ``prior_weight`` /
        ``prior_weight_translation``): scene cameras' positions are held, their orientations
        follow the matches (with two or three photos the orbit mode, a rotation plus a sideways
        move, is otherwise pinned only by the prior).
    outlier_px: observations whose reprojection error after an adjustment exceeds this (working
        pixels) are dropped (FeatureConfig ``outlier_px``, 4 there; a view is reliable below half
        of it). With two to four photos a few consistently wrong matches (view-dependent
        features, e.g. where one surface passes behind another) pull the few poses more than in
        a large set: 1.5 px measured better on three independent sets (docs/poses.md section 3,
        "Outlier threshold").
    features: other :class:`~viewforge.engine.poses.features.FeatureConfig` fields.
    """

    max_size: int = 512
    contrasts: tuple[float, ...] = (0.04, 0.005)
    min_matches: int = 8
    min_observations: int = 30
    max_step_deg: float = 10.0
    band_schedule: tuple[float, ...] = (0.0, 0.02, 0.01)
    prior_rotation: float = 0.1
    prior_translation: float = 3.0
    outlier_px: float = 1.5
    features: dict = field(default_factory=dict)


@dataclass
class PhotoRigResult:
    """cameras: the photos' cameras (input order and size), refined where ``refined``.
    refined: per view. rms_before / rms_after: the inlier matches' reprojection RMS (working
    pixels) at the input cameras (after triangulation) and after the adjustment (NaN when no
    attempt matched). contrast: the SIFT threshold that matched (None: none). note: one line."""

    cameras: list[Camera]
    refined: list[bool]
    rms_before: float = float("nan")
    rms_after: float = float("nan")
    contrast: float | None = None
    note: str = ""
    seconds: float = 0.0


def refine_photo_rig(posed: PosedSet, config: PhotoRigConfig = PhotoRigConfig(), *,
                     progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> PhotoRigResult:
    """Refine a few photos' cameras against each other, with no model: SIFT matches between the
    photos + bundle adjustment + the similarity back onto the input rig
    (:func:`viewforge.engine.poses.features.refine_poses_features`), once per SIFT contrast of
    ``config.contrasts``; the accepted attempt with the most inlier observations wins.

    Acceptance (a pose is changed only where the photos demonstrably agree better): the
    adjustment must lower the final inlier matches' reprojection RMS below their RMS at the
    input cameras (the same matches triangulated there);
    then each view that the features constrained (reliable) and that turned by less than
    ``max_step_deg`` takes its refined pose, the others keep theirs."""
    from ..errors import CameraError
    from .features import FeatureConfig, refine_poses_features

    t0 = time.perf_counter()
    n = len(posed)
    keep = PhotoRigResult(list(posed.cameras), [False] * n)
    if n < 2:
        keep.note = "one photo: nothing to match"
        return keep
    last = "no attempt"
    best, best_obs = None, -1
    for contrast in config.contrasts:
        check(cancel)
        fcfg = FeatureConfig(**{"max_size": config.max_size, "sift_contrast": contrast,
                                "min_pair_inliers": config.min_matches,
                                "min_view_observations": config.min_observations, "band_schedule": config.band_schedule,
                                "prior_weight": config.prior_rotation,
                                "prior_weight_translation": config.prior_translation,
                                "outlier_px": config.outlier_px, **config.features})
        try:
            res = refine_poses_features(posed, fcfg, progress=progress, cancel=cancel)
        except CameraError as e:
            last = e.message
            log.info("photo rig (SIFT contrast %g): %s", contrast, last)
            continue
        if not res.rms_after < res.rms_input:
            last = f"the adjustment did not lower the reprojection RMS ({res.rms_input:.2f} -> {res.rms_after:.2f} px)"
            continue
        cams, refined = list(posed.cameras), [False] * n
        for i, (v, c0, c1) in enumerate(zip(res.views, posed.cameras, res.cameras)):
            turn = rotation_angle_deg(c0.R, c1.R)
            if v.reliable and turn < config.max_step_deg:
                cams[i], refined[i] = c1, True
            elif v.reliable:
                log.warning("photo %s: refined pose turned %.1f degrees (> %g): input pose kept", v.name, turn,
                            config.max_step_deg)
        k = sum(refined)
        obs = sum(v.observations for v, r in zip(res.views, refined) if r)
        note = (f"photos matched (SIFT contrast {contrast:g}, {obs} observations, {res.rms_input:.2f} -> "
                f"{res.rms_after:.2f} px): {k} of {n} refined")
        log.info("photo rig: %s", note)
        if k < 2:  # one view alone moved onto a rig nobody else confirms: keep the input
            last = note
            continue
        if obs > best_obs:
            best_obs = obs
            best = PhotoRigResult(cams, refined, res.rms_input, res.rms_after, contrast, note)
    if best is not None:
        best.seconds = time.perf_counter() - t0
        return best
    keep.note = f"photos not matched ({last})"
    keep.seconds = time.perf_counter() - t0
    return keep


__all__ = ["SparseRefineConfig", "SparseRefineResult", "refine_cameras_to_model", "PhotoRigConfig", "PhotoRigResult",
           "refine_photo_rig"]
