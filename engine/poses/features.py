"""Feature-based pose refinement: SIFT matches between the photos + bundle adjustment.

The photometric joint fit cannot fix pose errors on its own: the model, fitted to the wrong poses,
absorbs them (docs/reconstruction.md). Photo-to-photo feature matches do not depend on the model,
so this stage runs first, on the photos alone, and the splat fit then starts from good cameras.

1. **Features.** SIFT keypoints (RootSIFT descriptors) on each photo, downscaled so its longer
   side is at most ``max_size`` (the intrinsics scaled with it), restricted to the eroded alpha
   mask where the set has masks (keypoints on the silhouette are not fixed surface points).
2. **Pairs and matches.** Each view is matched to the views whose optical axes are within
   ``pair_max_angle_deg`` of its own (at most ``max_pairs_per_view``, nearest first). Guided
   matching: a candidate must lie within a band around the epipolar line that the *current*
   cameras predict (``band_schedule``: the first band is wide enough for the input error); among
   the candidates, mutual nearest neighbours passing Lowe's ratio test. A fundamental matrix fitted
   to the matches alone by RANSAC (OpenCV's MAGSAC++, ``ransac_px``) then keeps the epipolar
   inliers, so wrong cameras cannot make wrong matches look consistent. The band makes the ratio
   test compete only with features near the line: far more correct matches survive on repeated
   structure than with unguided matching.
3. **Tracks.** Matches are joined into tracks (union-find over (view, keypoint)); a track with two
   keypoints in one view is dropped. Each track is triangulated with the current cameras (linear
   DLT over all its views) and kept if it lies in front of every camera and its rays span at least
   ``min_triangulation_deg``.
4. **Bundle adjustment** (:func:`bundle_adjust`). Unknowns: the camera poses (left increments
   ``[R(omega) | tau] @ W``, the same correction as the splat fit's) and the 3D points. Residuals:
   reprojection errors in working pixels under a Huber loss (scale ``robust_px``), plus a weak
   prior ``prior_weight * f * (omega_i, tau_i / d_i)`` on each camera's total correction, which
   keeps the system well posed (the reprojection error is invariant to a similarity of the
   world). Levenberg-Marquardt with the points eliminated by the Schur complement. Observations
   far off before the first solve and after each solve are dropped (thresholds shrinking to
   ``outlier_px``). Each round of step 2 starts from the previous round's cameras.
5. **Gauge.** The adjusted rig is mapped back onto the input rig by the least-squares similarity
   (Umeyama on the camera centres and on points along each optical axis), so the result lives in
   the input cameras' world frame and scale.

What limits the accuracy (measured on lego, docs/reconstruction.md): for an object seen at ~40
degrees field of view, a camera orbiting the object (a rotation plus the matching sideways move)
changes the image only by the parallax between near and far surface points. The data pin that
mode only through many, long tracks; with 24 views 15-40 degrees apart the adjusted cameras keep
most of their input orbit error, with 100 views it is resolved.

Each view gets a reliability (:class:`ViewReliability`): its inlier observation count, their RMS
reprojection error, and a score in [0, 1]. A view with fewer than ``min_view_observations`` inliers
keeps its input pose (mapped by the similarity) and is marked unreliable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..cameras import Camera
from ..errors import CameraError
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of :func:`refine_poses_features`.

    max_size: photos are downscaled so their longer side is at most this (pixels) for features;
        all pixel thresholds below are at that working size.
    max_features: SIFT keypoints kept per photo (strongest first).
    mask_erode_px: the alpha mask is eroded by this many pixels before detection.
    pair_max_angle_deg, max_pairs_per_view: which views are matched (see module docstring).
    ratio: Lowe's ratio test threshold (first / second nearest descriptor distance).
    ransac_px: epipolar RANSAC threshold of the fundamental matrix.
    min_pair_inliers: a pair with fewer epipolar inliers is dropped.
    robust_px: scale of the Huber loss of the reprojection residuals.
    outlier_px: observations with a larger reprojection error after an adjustment are dropped.
    prior_weight: weight p of the prior on each camera's total correction, residual
        ``p * f * (omega, tau / distance)`` in pixels: keeps the system well posed and weakly
        observed cameras near their input (the gauge itself is fixed by a similarity afterwards).
        Measured on lego (24 views, median error after alignment over three seeds): 0.01 lets
        weakly observed cameras wander (0.65-3.9 degrees), 0.3 holds them (0.56-0.72), 1.0 holds
        them at the input (1.4-1.7).
    prior_weight_translation: the weight of the prior on the translation part ``tau / d`` alone
        (None: ``prior_weight``). Scene cameras whose positions are trusted more than their
        orientation (few photos; completion) hold the centres firmly and let the rotations follow
        the matches: with two photos the matches fix the relative rotation only once the
        baseline is held (docs/poses.md, few-photo refinement).
    sift_contrast: SIFT's contrast threshold (OpenCV's default 0.04; lower finds keypoints on
        weakly textured surfaces, e.g. 0.005 on unlit renders of smooth objects).
    max_nfev: Levenberg-Marquardt iterations per bundle adjustment.
    band_schedule: one matching + adjustment round per entry: the width of the epipolar band of
        the guided matching (fraction of the working image's longer side) around the epipolar
        lines of the current cameras (the input ones, then each round's result); 0 = unguided.
    min_view_observations: a view with fewer inlier observations keeps its input pose.
    min_triangulation_deg: points whose viewing rays span a smaller angle are not used.
    """

    max_size: int = 800
    max_features: int = 4000
    mask_erode_px: int = 3
    pair_max_angle_deg: float = 60.0
    max_pairs_per_view: int = 8
    ratio: float = 0.8
    ransac_px: float = 1.5
    min_pair_inliers: int = 10
    robust_px: float = 2.0
    outlier_px: float = 4.0
    prior_weight: float = 0.3
    prior_weight_translation: float | None = None
    sift_contrast: float = 0.04
    max_nfev: int = 100
    band_schedule: tuple[float, ...] = (0.06, 0.02, 0.01)
    min_view_observations: int = 20
    min_triangulation_deg: float = 2.0


@dataclass
class ViewFeatures:
    """SIFT features of one photo. xy: (N, 2) keypoints in continuous pixel coordinates of the
    working-size camera ``camera``; desc: (N, 128) float32 RootSIFT descriptors (unit norm)."""

    camera: Camera
    xy: np.ndarray
    desc: np.ndarray


@dataclass
class Tracks:
    """Observations of 3D points: view index, point index and pixel position (working size)."""

    view: np.ndarray
    point: np.ndarray
    xy: np.ndarray
    num_points: int


@dataclass(frozen=True)
class ViewReliability:
    """How well one view is constrained. observations: inlier feature observations after the
    adjustment; rms_px: their RMS reprojection error (working pixels); score in [0, 1]:
    ``n / (n + min_view_observations) * max(0, 1 - rms / outlier_px)``; reliable: enough inliers
    (the view's pose was refined) and rms below outlier_px / 2."""

    name: str
    observations: int
    rms_px: float
    score: float
    reliable: bool


@dataclass
class FeatureRefineResult:
    """cameras: refined cameras at the input size and in the input frame. views: per-view
    reliability. points: (P, 3) adjusted 3D points (input frame). pairs: verified pairs with
    their inlier counts. rms_before/rms_after: RMS reprojection error (working px) of the
    inlier observations before/after the final adjustment. seconds: wall time per stage.
    rms_input: RMS reprojection error (working px) of the final inlier matches triangulated
    with the *input* cameras (the same matches as ``rms_after``: how much the adjustment made
    the photos agree; NaN when none triangulates)."""

    cameras: list[Camera]
    views: list[ViewReliability]
    points: np.ndarray
    pairs: dict[tuple[int, int], int]
    rms_before: float
    rms_after: float
    seconds: dict[str, float] = field(default_factory=dict)
    rms_input: float = float("nan")


# -- features and matching --------------------------------------------------------------------


def detect_features(
    posed: PosedSet,
    config: FeatureConfig = FeatureConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[ViewFeatures]:
    """SIFT (RootSIFT descriptors) on every photo of ``posed`` at <= ``config.max_size`` px."""
    import cv2

    sift = cv2.SIFT_create(nfeatures=config.max_features, contrastThreshold=config.sift_contrast)
    out = []
    for i, (cam, img) in enumerate(zip(posed.cameras, posed.images)):
        check(cancel)
        factor = min(1.0, config.max_size / max(cam.width, cam.height))
        w, h = max(8, int(round(cam.width * factor))), max(8, int(round(cam.height * factor)))
        small = cam.resized(w, h)
        rgb = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        if (w, h) != (cam.width, cam.height):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor((rgb * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)
        mask = None
        if posed.masks is not None:
            m = np.asarray(posed.masks[i], dtype=np.float32)
            if (w, h) != (cam.width, cam.height):
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
            mask = (m > 0.5).astype(np.uint8) * 255
            if config.mask_erode_px > 0:
                k = 2 * config.mask_erode_px + 1
                mask = cv2.erode(mask, np.ones((k, k), np.uint8))
        kps, desc = sift.detectAndCompute(gray, mask)
        if desc is None or len(kps) == 0:
            xy, d = np.zeros((0, 2)), np.zeros((0, 128), np.float32)
        else:
            xy = np.array([k.pt for k in kps], dtype=np.float64) + 0.5  # OpenCV centres -> continuous
            d = desc.astype(np.float32)
            d /= np.maximum(d.sum(1, keepdims=True), 1e-9)  # RootSIFT: L1-normalise, square root
            d = np.sqrt(d)
        out.append(ViewFeatures(small, xy, d))
        report(progress, "poses", i + 1, len(posed), f"features {i + 1}/{len(posed)}")
    return out


def select_pairs(cameras: Sequence[Camera], config: FeatureConfig = FeatureConfig()) -> list[tuple[int, int]]:
    """Pairs (i < j) of views to match: per view, the views whose optical axes are within
    ``pair_max_angle_deg``, at most ``max_pairs_per_view`` nearest first."""
    axes = np.stack([c.R[2] for c in cameras])
    ang = np.degrees(np.arccos(np.clip(axes @ axes.T, -1.0, 1.0)))
    pairs = set()
    for i in range(len(cameras)):
        order = [j for j in np.argsort(ang[i]) if j != i and ang[i, j] <= config.pair_max_angle_deg]
        for j in order[: config.max_pairs_per_view]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _top2(dist: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index of the smallest entry along ``axis`` and the two smallest values."""
    part = np.partition(dist, 1, axis=axis)
    first = np.take(part, 0, axis=axis)
    second = np.take(part, 1, axis=axis)
    return np.argmin(dist, axis=axis), first, second


def match_descriptors(
    da: np.ndarray, db: np.ndarray, ratio: float, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Mutual nearest neighbours passing the ratio test in both directions: (K, 2) index pairs.
    ``allowed`` (Na, Nb) bool restricts the candidates (the ratio test is taken among them)."""
    if len(da) < 2 or len(db) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # squared L2 between unit vectors = 2 - 2 cos
    dist = np.maximum(2.0 - 2.0 * (da @ db.T), 0.0)
    if allowed is not None:
        dist = np.where(allowed, dist, np.inf)
    ia, fa, sa = _top2(dist, 1)
    ib, fb, sb = _top2(dist, 0)
    r2 = ratio * ratio
    ok_a = np.isfinite(fa) & (fa < r2 * sa)
    ok_b = np.isfinite(fb) & (fb < r2 * sb)
    a = np.nonzero(ok_a)[0]
    b = ia[a]
    keep = ok_b[b] & (ib[b] == a)
    return np.stack([a[keep], b[keep]], 1).astype(np.int64)


def _fundamental(ca: Camera, cb: Camera) -> np.ndarray:
    """F with x_b^T F x_a = 0 (continuous pixel coordinates) from two calibrated cameras."""
    rel = cb.world_to_camera @ np.linalg.inv(ca.world_to_camera)
    r, t = rel[:3, :3], rel[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(cb.K).T @ tx @ r @ np.linalg.inv(ca.K)


def _epipolar_band(ca: Camera, cb: Camera, xa: np.ndarray, xb: np.ndarray, px: float) -> np.ndarray:
    """(Na, Nb) bool: symmetric point-to-epipolar-line distances both below ``px``."""
    F = _fundamental(ca, cb)
    ha = np.c_[xa, np.ones(len(xa))]
    hb = np.c_[xb, np.ones(len(xb))]
    la = ha @ F.T  # lines in b of the points of a
    lb = hb @ F  # lines in a of the points of b
    num = np.abs(la @ hb.T)  # (Na, Nb) = |x_b^T F x_a|
    da = num / np.maximum(np.hypot(la[:, 0], la[:, 1]), 1e-12)[:, None]
    db = num / np.maximum(np.hypot(lb[:, 0], lb[:, 1]), 1e-12)[None, :]
    return (da < px) & (db < px)


def _verify_fundamental(xa: np.ndarray, xb: np.ndarray, px: float) -> np.ndarray:
    """Epipolar inlier mask of a fundamental matrix fitted by MAGSAC++ (all False if it fails).
    Independent of the cameras, so a wrong pose cannot make wrong matches look consistent."""
    import cv2

    if len(xa) < 8:
        return np.zeros(len(xa), dtype=bool)
    a, b = xa.astype(np.float64), xb.astype(np.float64)
    try:
        _, inl = cv2.findFundamentalMat(a, b, cv2.USAC_MAGSAC, px, 0.9999, 10000)
    except cv2.error:  # MAGSAC++ asserts on some degenerate samples; plain RANSAC does not
        _, inl = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, px, 0.999)
    if inl is None or len(inl) != len(xa):
        return np.zeros(len(xa), dtype=bool)
    return inl.ravel().astype(bool)


def match_pairs(
    feats: Sequence[ViewFeatures],
    pairs: Sequence[tuple[int, int]],
    config: FeatureConfig = FeatureConfig(),
    *,
    cameras: Sequence[Camera] | None = None,
    band_px: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Verified matches per pair: {(i, j): (K, 2) keypoint indices}: mutual nearest neighbours
    passing the ratio test, then a fundamental matrix by RANSAC keeps the epipolar inliers. With
    ``cameras`` (working size, the current poses) and ``band_px`` > 0 the candidates are first
    restricted to the band of that width around the epipolar lines of those cameras (guided
    matching: the ratio test then only competes with features near the line)."""
    out: dict[tuple[int, int], np.ndarray] = {}
    for n, (i, j) in enumerate(pairs):
        check(cancel)
        fa, fb = feats[i], feats[j]
        band = None
        if cameras is not None and band_px > 0:
            band = _epipolar_band(cameras[i], cameras[j], fa.xy, fb.xy, band_px)
        m = match_descriptors(fa.desc, fb.desc, config.ratio, band)
        if len(m):
            m = m[_verify_fundamental(fa.xy[m[:, 0]], fb.xy[m[:, 1]], config.ransac_px)]
        if len(m) >= config.min_pair_inliers:
            out[(i, j)] = m
        report(progress, "poses", n + 1, len(pairs), f"matching pair {n + 1}/{len(pairs)}")
    return out


def build_tracks(feats: Sequence[ViewFeatures], matches: dict[tuple[int, int], np.ndarray]) -> Tracks:
    """Join pairwise matches into tracks (union-find); drop tracks with two keypoints in one view
    and tracks seen in fewer than two views."""
    offsets = np.cumsum([0] + [len(f.xy) for f in feats])
    parent = np.arange(offsets[-1])

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for (i, j), m in matches.items():
        for a, b in m:
            ra, rb = find(offsets[i] + a), find(offsets[j] + b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    ends = [np.r_[offsets[i] + m[:, 0], offsets[j] + m[:, 1]] for (i, j), m in matches.items()]
    used = np.unique(np.concatenate(ends)) if ends else np.zeros(0, dtype=np.int64)
    roots = np.array([find(int(u)) for u in used], dtype=np.int64)
    views = np.searchsorted(offsets, used, side="right") - 1
    # drop tracks with two keypoints in one view, and singletons
    _, root_id = np.unique(roots, return_inverse=True)
    key = root_id * len(feats) + views
    uniq, counts = np.unique(key, return_counts=True)
    bad_roots = np.unique(uniq[counts > 1] // len(feats))
    track_len = np.bincount(root_id)
    keep = ~np.isin(root_id, bad_roots) & (track_len[root_id] >= 2)
    used, views, root_id = used[keep], views[keep], root_id[keep]
    _, point = np.unique(root_id, return_inverse=True)
    xy = np.stack([feats[v].xy[u - offsets[v]] for u, v in zip(used, views)]) if len(used) else np.zeros((0, 2))
    return Tracks(views.astype(np.int64), point.astype(np.int64), xy, int(point.max() + 1) if len(point) else 0)


def triangulate(
    cameras: Sequence[Camera], tracks: Tracks, min_angle_deg: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Linear (DLT) triangulation of every track with ``cameras``: (P, 3) points and a (P,) mask
    of the well-conditioned ones: seen in two views or more, in front of all their cameras (depth
    above 1 % of the point's distance from the camera) and seen under rays spanning
    ``min_angle_deg`` or more. A point seen once has no depth: its DLT solution is an arbitrary
    vector of a 2-D null space (it differs between BLAS builds), so it is never well-conditioned."""
    P = np.stack([c.K @ c.world_to_camera[:3] for c in cameras])  # (C, 3, 4)
    rows_u = tracks.xy[:, :1] * P[tracks.view, 2] - P[tracks.view, 0]  # (M, 4)
    rows_v = tracks.xy[:, 1:] * P[tracks.view, 2] - P[tracks.view, 1]
    A = np.zeros((tracks.num_points, 4, 4))
    for rows in (rows_u, rows_v):
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        np.add.at(A, tracks.point, rows[:, :, None] * rows[:, None, :])
    _, vecs = np.linalg.eigh(A)
    X = vecs[:, :, 0]
    w = X[:, 3]
    ok = np.abs(w) > 1e-12
    pts = X[:, :3] / np.where(ok, w, 1.0)[:, None]
    R = np.stack([c.R for c in cameras])
    t = np.stack([c.t for c in cameras])
    z = np.einsum("mj,mj->m", R[tracks.view, 2], pts[tracks.point]) + t[tracks.view, 2]
    centres = np.stack([c.center for c in cameras])
    rays = pts[tracks.point] - centres[tracks.view]
    dist = np.linalg.norm(rays, axis=1)
    rays = rays / np.maximum(dist, 1e-12)[:, None]
    front = np.ones(tracks.num_points, dtype=bool)
    np.logical_and.at(front, tracks.point, z > 0.01 * dist.clip(min=1e-12))
    mean = np.zeros((tracks.num_points, 3))
    np.add.at(mean, tracks.point, rays)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    spread = np.zeros(tracks.num_points)
    np.maximum.at(spread, tracks.point, np.degrees(np.arccos(np.clip((rays * mean[tracks.point]).sum(1), -1, 1))))
    seen = np.bincount(tracks.point, minlength=tracks.num_points) >= 2
    return pts, seen & front & ok & (2.0 * spread >= min_angle_deg)


# -- bundle adjustment ------------------------------------------------------------------------


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """(N, 3) axis-angle -> (N, 3, 3) rotations."""
    theta = np.linalg.norm(w, axis=1)
    k = w / np.maximum(theta, 1e-12)[:, None]
    kx = np.zeros((len(w), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3)[None] + s * kx + (1 - c) * (kx @ kx)


@dataclass
class BundleResult:
    """cameras: adjusted (working-size) cameras; points: (P, 3); residuals: (M,) reprojection
    error norms (px) of every observation; cost: final robust cost."""

    cameras: list[Camera]
    points: np.ndarray
    residuals: np.ndarray
    cost: float


def bundle_adjust(
    cameras: Sequence[Camera],
    tracks: Tracks,
    points: np.ndarray,
    config: FeatureConfig = FeatureConfig(),
    *,
    fixed: Sequence[bool] | None = None,
) -> BundleResult:
    """Adjust the camera poses and the points to minimise the robust reprojection error (module
    docstring, step 4). Intrinsics are fixed; ``fixed`` cameras do not move.

    Levenberg-Marquardt with the Schur complement on the points (the classic sparse BA): per
    observation the 2x6 Jacobian with respect to a left pose increment ``(d_omega, d_tau)``
    (``d pc = -[pc]x d_omega + d_tau`` for the point ``pc`` in camera coordinates) and the 2x3
    one with respect to its point; Huber weights (scale ``robust_px``) by iterative reweighting;
    the points are eliminated and the 6C x 6C reduced camera system solved densely.
    """
    from scipy.sparse import csr_matrix

    C, Pn, M = len(cameras), tracks.num_points, len(tracks.view)
    v, p = tracks.view, tracks.point
    R = np.stack([c.R for c in cameras])
    t = np.stack([c.t for c in cameras])
    R0, t0 = R.copy(), t.copy()
    f = np.array([[c.fx, c.fy] for c in cameras])
    cxy = np.array([[c.cx, c.cy] for c in cameras])
    dist = np.array([max(float(np.linalg.norm(c.center)), 1e-9) for c in cameras])
    fm = f.mean(1)
    # prior stiffness per camera parameter, in pixels per unit correction
    p_rot = config.prior_weight
    p_tr = config.prior_weight if config.prior_weight_translation is None else config.prior_weight_translation
    prior = np.c_[p_rot * np.repeat(fm[:, None], 3, 1), p_tr * np.repeat((fm / dist)[:, None], 3, 1)]
    free = np.ones(C, dtype=bool) if fixed is None else ~np.asarray(fixed, dtype=bool)
    X = np.asarray(points, dtype=np.float64).copy()
    # index patterns of the block-sparse matrices (fixed for the whole solve)
    w_rows = np.broadcast_to(6 * v[:, None, None] + np.arange(6)[None, :, None], (M, 6, 3))
    w_cols = np.broadcast_to(3 * p[:, None, None] + np.arange(3)[None, None, :], (M, 6, 3))
    v_rows = np.broadcast_to(3 * np.arange(Pn)[:, None, None] + np.arange(3)[None, :, None], (Pn, 3, 3))
    v_cols = np.broadcast_to(3 * np.arange(Pn)[:, None, None] + np.arange(3)[None, None, :], (Pn, 3, 3))
    u_rows = np.broadcast_to(6 * np.arange(C)[:, None, None] + np.arange(6)[None, :, None], (C, 6, 6)).ravel()
    u_cols = np.broadcast_to(6 * np.arange(C)[:, None, None] + np.arange(6)[None, None, :], (C, 6, 6)).ravel()

    def corrections(R_, t_):
        """Left correction (omega, tau) of the current poses from the initial ones."""
        dR = R_ @ np.transpose(R0, (0, 2, 1))
        return np.c_[_log_rotation(dR), t_ - np.einsum("cij,cj->ci", dR, t0)]

    def residuals(R_, t_, X_):
        pc = np.einsum("mij,mj->mi", R_[v], X_[p]) + t_[v]
        z = np.where(np.abs(pc[:, 2]) < 1e-9, 1e-9, pc[:, 2])
        return pc, z, pc[:, :2] / z[:, None] * f[v] + cxy[v] - tracks.xy

    def robust_cost(r, xi):
        n = np.linalg.norm(r, axis=1)
        s = config.robust_px
        rho = np.where(n <= s, 0.5 * n * n, s * (n - 0.5 * s))
        return float(rho.sum() + 0.5 * ((prior * xi)[free] ** 2).sum())

    pc, z, r = residuals(R, t, X)
    cost = robust_cost(r, corrections(R, t))
    lam = 1e-3
    for _ in range(config.max_nfev):
        n = np.linalg.norm(r, axis=1)
        w = np.where(n <= config.robust_px, 1.0, config.robust_px / np.maximum(n, 1e-12))  # Huber IRLS
        x, y = pc[:, 0], pc[:, 1]
        Jproj = np.zeros((M, 2, 3))
        Jproj[:, 0, 0] = f[v, 0] / z
        Jproj[:, 0, 2] = -f[v, 0] * x / z**2
        Jproj[:, 1, 1] = f[v, 1] / z
        Jproj[:, 1, 2] = -f[v, 1] * y / z**2
        skew = np.zeros((M, 3, 3))
        skew[:, 0, 1], skew[:, 0, 2] = pc[:, 2], -pc[:, 1]
        skew[:, 1, 0], skew[:, 1, 2] = -pc[:, 2], pc[:, 0]
        skew[:, 2, 0], skew[:, 2, 1] = pc[:, 1], -pc[:, 0]  # = -[pc]x
        Jc = np.concatenate([Jproj @ skew, Jproj], axis=2)  # (M, 2, 6)
        Jc[~free[v]] = 0.0
        Jp = Jproj @ R[v]  # (M, 2, 3)
        wJc, wJp = Jc * w[:, None, None], Jp * w[:, None, None]
        U = np.zeros((C, 6, 6))
        np.add.at(U, v, np.einsum("mki,mkj->mij", wJc, Jc))
        V = np.zeros((Pn, 3, 3))
        np.add.at(V, p, np.einsum("mki,mkj->mij", wJp, Jp))
        Wm = np.einsum("mki,mkj->mij", wJc, Jp)  # (M, 6, 3)
        gc = np.zeros((C, 6))
        np.add.at(gc, v, np.einsum("mki,mk->mi", wJc, r))
        gp = np.zeros((Pn, 3))
        np.add.at(gp, p, np.einsum("mki,mk->mi", wJp, r))
        xi = corrections(R, t)
        U += np.eye(6)[None] * (prior**2)[:, None, :]
        gc += prior**2 * xi
        while True:
            Ud = U + lam * (U * np.eye(6)[None] + 1e-9 * np.eye(6)[None])
            Vd = V + lam * (V * np.eye(3)[None]) + 1e-9 * np.eye(3)[None]
            Vi = np.linalg.inv(Vd)
            Wsp = csr_matrix((Wm.ravel(), (w_rows.ravel(), w_cols.ravel())), shape=(6 * C, 3 * Pn))
            Visp = csr_matrix((Vi.ravel(), (v_rows.ravel(), v_cols.ravel())), shape=(3 * Pn, 3 * Pn))
            Y = Wsp @ Visp
            Sm = -(Y @ Wsp.T).toarray()
            Sm[u_rows, u_cols] += Ud.ravel()
            rhs = -gc.ravel() + Y @ gp.ravel()
            keep = np.repeat(free, 6)
            dc = np.zeros(6 * C)
            dc[keep] = np.linalg.solve(Sm[np.ix_(keep, keep)], rhs[keep])
            dc = dc.reshape(C, 6)
            tmp = -gp.copy()
            np.add.at(tmp, p, -np.einsum("mij,mi->mj", Wm, dc[v]))
            dp = np.einsum("pij,pj->pi", Vi, tmp)
            dR = _rodrigues(dc[:, :3])
            R_new = dR @ R
            t_new = np.einsum("cij,cj->ci", dR, t) + dc[:, 3:]
            X_new = X + dp
            pc_n, z_n, r_n = residuals(R_new, t_new, X_new)
            cost_new = robust_cost(r_n, corrections(R_new, t_new)) if np.all(np.isfinite(r_n)) else np.inf
            log.debug("BA lam %.1e cost %.4f -> %.4f", lam, cost, cost_new)
            if cost_new < cost:
                done = (cost - cost_new) < 1e-6 * cost
                R, t, X, pc, z, r, cost = R_new, t_new, X_new, pc_n, z_n, r_n, cost_new
                lam = max(lam / 3.0, 1e-9)
                break
            lam *= 4.0
            if lam > 1e8:
                done = True
                break
        if done:
            break
    out = []
    for cam, Rc, tc in zip(cameras, R, t):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = Rc, tc
        out.append(cam.with_pose(m))
    return BundleResult(out, X, np.linalg.norm(r, axis=1), cost)


def _log_rotation(Rm: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations -> (N, 3) axis-angle (angles below pi)."""
    cos = np.clip((np.trace(Rm, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    vec = np.stack([Rm[:, 2, 1] - Rm[:, 1, 2], Rm[:, 0, 2] - Rm[:, 2, 0], Rm[:, 1, 0] - Rm[:, 0, 1]], 1)
    s = np.sin(theta)
    scale = np.where(s > 1e-9, theta / np.maximum(2 * s, 1e-12), 0.5)
    return vec * scale[:, None]


# -- gauge ------------------------------------------------------------------------------------


def similarity_to(
    cameras: Sequence[Camera], reference: Sequence[Camera], weights: np.ndarray | None = None
) -> np.ndarray:
    """The (4, 4) similarity S (world -> world, ``x' = s R x + t``) that best maps ``cameras``
    onto ``reference``: Umeyama on the camera centres and on points along each optical axis (one
    median centre-to-centroid distance of that rig away), so the rotation is fixed even for a
    degenerate centre layout. ``weights``: optional per-camera weights."""
    def pts(cams):
        centres = np.stack([c.center for c in cams])
        d = float(np.median(np.linalg.norm(centres - centres.mean(0), axis=1))) or 1.0  # scales with the rig
        return np.concatenate([centres, centres + d * np.stack([c.R[2] for c in cams])])

    a, b = pts(cameras), pts(reference)
    w = np.ones(len(a)) if weights is None else np.r_[weights, weights].astype(np.float64)
    w = w / w.sum()
    ma, mb = w @ a, w @ b
    A, B = a - ma, b - mb
    cov = (B * w[:, None]).T @ A
    u, s, vt = np.linalg.svd(cov)
    e = np.eye(3)
    if np.linalg.det(u @ vt) < 0:
        e[2, 2] = -1
    R = u @ e @ vt
    var = float((w * (A * A).sum(1)).sum())
    scale = float(np.trace(np.diag(s) @ e) / var) if var > 0 else 1.0
    S = np.eye(4)
    S[:3, :3] = scale * R
    S[:3, 3] = mb - scale * R @ ma
    return S


def transform_cameras(cameras: Sequence[Camera], S: np.ndarray) -> list[Camera]:
    """Cameras moved by the world similarity S (``x' = s R x + t``): W' = W @ S^-1 with the
    scale taken out of the rotation block and applied to the translation."""
    s = float(np.cbrt(np.linalg.det(S[:3, :3])))
    R, t = S[:3, :3] / s, S[:3, 3]
    out = []
    for c in cameras:
        Rc, tc = c.R, c.t
        m = np.eye(4)
        m[:3, :3] = Rc @ R.T
        m[:3, 3] = s * tc - Rc @ R.T @ t
        out.append(c.with_pose(m))
    return out


# -- the stage --------------------------------------------------------------------------------


def _adjust(cams, feats, matches, config, progress, cancel, label):
    """Tracks -> triangulation -> robust BA rounds with shrinking outlier thresholds.

    Observations far off before the first adjustment (> ``max(outlier_px, 4 x median)``: the
    current poses may be degrees off, so every residual is large) and after each adjustment
    (> ``max(outlier_px, 3 x median)``, finally > ``outlier_px``) are dropped, with the points left
    in fewer than two views: one wrong match with a huge residual (its Jacobian grows as 1/depth)
    otherwise bends a whole chain of views (measured on lego: 9 degrees drift from the true poses)."""
    tracks = build_tracks(feats, matches)
    if tracks.num_points < 8:
        raise CameraError(
            f"pose refinement by features found only {tracks.num_points} matched points between the photos",
            "use photos with more overlap and texture, or pose_method='photometric'",
        )
    pts, ok = triangulate(cams, tracks, config.min_triangulation_deg)
    tracks, pts = _keep_points(tracks, pts, ok)
    err = _reprojection(cams, tracks, pts)
    rms_before = float(np.sqrt(np.mean(err**2))) if len(err) else 0.0
    tracks, pts = _drop_observations(tracks, pts, err < max(config.outlier_px, 4.0 * float(np.median(err))))
    ba = None
    for limit in (3.0, 0.0):
        check(cancel)
        report(progress, "poses", 0, 1, f"bundle adjustment ({label}, {tracks.num_points} points)")
        _check_points(tracks, label)
        ba = bundle_adjust(cams if ba is None else ba.cameras, tracks, pts, config)
        tracks, pts = _drop_observations(
            tracks, ba.points, ba.residuals < max(config.outlier_px, limit * float(np.median(ba.residuals)))
        )
    _check_points(tracks, label)
    ba = bundle_adjust(ba.cameras, tracks, pts, config)
    log.info("%s: %d points, %d observations, rms %.2f px (%.2f px before)",
             label, tracks.num_points, len(tracks.view), float(np.sqrt(np.mean(ba.residuals**2))), rms_before)
    return ba, tracks, rms_before


def _check_points(tracks: Tracks, label: str) -> None:
    if tracks.num_points < 8:
        raise CameraError(
            f"pose refinement by features ({label}): only {tracks.num_points} consistent points are left",
            "use photos with more overlap and texture, or pose_method='photometric'",
        )


def _reprojection(cams: Sequence[Camera], tracks: Tracks, pts: np.ndarray) -> np.ndarray:
    """(M,) reprojection error norms of the observations."""
    out = np.empty(len(tracks.view))
    for c, cam in enumerate(cams):
        sel = tracks.view == c
        if sel.any():
            uv, _ = cam.project(pts[tracks.point[sel]])
            out[sel] = np.linalg.norm(uv - tracks.xy[sel], axis=1)
    return out


def _drop_observations(tracks: Tracks, pts: np.ndarray, keep_obs: np.ndarray) -> tuple[Tracks, np.ndarray]:
    """Keep the observations ``keep_obs`` and the points still seen in two views or more."""
    tracks = Tracks(tracks.view[keep_obs], tracks.point[keep_obs], tracks.xy[keep_obs], tracks.num_points)
    counts = np.bincount(tracks.point, minlength=tracks.num_points)
    return _keep_points(tracks, pts, counts >= 2)


def _keep_points(tracks: Tracks, pts: np.ndarray, keep: np.ndarray) -> tuple[Tracks, np.ndarray]:
    new_id = -np.ones(len(keep), dtype=np.int64)
    new_id[keep] = np.arange(int(keep.sum()))
    obs = keep[tracks.point]
    return Tracks(tracks.view[obs], new_id[tracks.point[obs]], tracks.xy[obs], int(keep.sum())), pts[keep]


def refine_poses_features(
    posed: PosedSet,
    config: FeatureConfig = FeatureConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FeatureRefineResult:
    """Refine the cameras of ``posed`` from feature matches between its photos (module docstring).

    Raises :class:`CameraError` when fewer than two views can be constrained (too few matches).
    """
    if len(posed) < 2:
        raise CameraError("pose refinement needs at least two views", "add photos of the object from more viewpoints")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    feats = detect_features(posed, config, progress=progress, cancel=cancel)
    seconds["features"] = time.perf_counter() - t
    cams0 = [f.camera for f in feats]
    t = time.perf_counter()
    pairs = select_pairs(cams0, config)
    seconds["match"] = time.perf_counter() - t
    seconds["adjust"] = 0.0
    size = max(max(c.width, c.height) for c in cams0)
    cams, rms_before, ba, tracks, matches = cams0, float("nan"), None, None, {}
    for r, frac in enumerate(config.band_schedule):
        t = time.perf_counter()
        matches = match_pairs(feats, pairs, config, cameras=cams, band_px=frac * size, progress=progress, cancel=cancel)
        seconds["match"] += time.perf_counter() - t
        if not matches:
            raise CameraError(
                f"pose refinement by features found no photo pair with {config.min_pair_inliers}+ consistent matches",
                "use photos with more overlap and texture (neighbouring views within "
                f"{config.pair_max_angle_deg:g} degrees), or pose_method='photometric'",
            )
        t = time.perf_counter()
        ba, tracks, rms0 = _adjust(cams, feats, matches, config, progress, cancel, f"round {r + 1} (band {frac * size:.0f} px)")
        if r == 0:
            rms_before = rms0
        cams = ba.cameras
        seconds["adjust"] += time.perf_counter() - t

    n_obs = np.bincount(tracks.view, minlength=len(posed))
    sq = np.bincount(tracks.view, weights=ba.residuals**2, minlength=len(posed))
    rms = np.sqrt(sq / np.maximum(n_obs, 1))
    refined_ok = n_obs >= config.min_view_observations
    if refined_ok.sum() < 2:
        raise CameraError(
            f"pose refinement by features constrained only {int(refined_ok.sum())} view(s) "
            f"(each needs {config.min_view_observations}+ matched points)",
            "use photos with more overlap and texture, or pose_method='photometric'",
        )
    # gauge: the similarity taking the reliable refined cameras onto their input poses
    S = similarity_to([ba.cameras[i] for i in np.nonzero(refined_ok)[0]], [cams0[i] for i in np.nonzero(refined_ok)[0]])
    adjusted = transform_cameras(ba.cameras, S)
    s = float(np.cbrt(np.linalg.det(S[:3, :3])))
    points = ba.points @ S[:3, :3].T + S[:3, 3]
    out_cams, views = [], []
    for i, cam in enumerate(posed.cameras):
        pose = adjusted[i].world_to_camera if refined_ok[i] else cam.world_to_camera
        out_cams.append(cam.with_pose(pose))
        n = int(n_obs[i])
        score = n / (n + config.min_view_observations) * max(0.0, 1.0 - float(rms[i]) / config.outlier_px)
        reliable = bool(refined_ok[i] and rms[i] < config.outlier_px / 2)
        name = posed.names[i] if posed.names else cam.name
        views.append(ViewReliability(name, n, float(rms[i]), float(score), reliable))
        if not reliable:
            log.warning("view %s: pose not reliable (%d observations, rms %.2f px)", views[-1].name, n, rms[i])
    log.info("feature pose refinement: %d/%d views refined, similarity scale %.4f", int(refined_ok.sum()), len(posed), s)
    pts0, ok0 = triangulate(cams0, tracks, 0.0)
    err0 = _reprojection(cams0, tracks, pts0)[ok0[tracks.point]]
    return FeatureRefineResult(
        out_cams, views, points, {k: len(m) for k, m in matches.items()}, rms_before,
        float(np.sqrt(np.mean(ba.residuals**2))), seconds,
        float(np.sqrt(np.mean(err0**2))) if len(err0) else float("nan"),
    )


__all__ = [
    "FeatureConfig", "ViewFeatures", "Tracks", "ViewReliability", "FeatureRefineResult", "BundleResult",
    "detect_features", "select_pairs", "match_descriptors", "match_pairs", "build_tracks", "triangulate",
    "bundle_adjust", "similarity_to", "transform_cameras", "refine_poses_features",
]
