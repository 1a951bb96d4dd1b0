"""Fit splats with the camera poses refined: the entry point for ``FitConfig.pose_refine``.

:func:`fit_splats` picks the method (``FitConfig.pose_method``), runs the feature stage before
the fit ("features", "features+photometric": engine/poses/features.py), and hands the plain fit
(engine/splat/fit.py) the camera refiner of the method (engine/poses/photometric.py):

- "features": the fit uses the feature stage's cameras as they are;
- "photometric": per-camera corrections learnt jointly with the model plus alignment rounds
  (:class:`~viewforge.engine.poses.photometric.JointRefiner`);
- "features+photometric": the feature cameras, then each camera aligned once to the finished
  model (:class:`~viewforge.engine.poses.photometric.FinalAlignRefiner`). After the features the
  joint corrections only let the rig and the model turn together (docs/reconstruction.md).

Without ``pose_refine`` it is the plain fit.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from ..device import resolve_device
from ..errors import CameraError, InputError, PosedSetError
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback
from ..splat import fit as _fit
from ..splat.fit import FitConfig, FitResult, check_training_set
from ..splat.model import Splats

log = logging.getLogger(__name__)

#: pose_method "auto" uses features from photos at least this large (longer side, pixels).
AUTO_FEATURES_MIN_SIZE = 160

#: How the feature pose stage's failures read in a job's report (after "cameras kept as placed: ").
FEATURES_FIX = "photos with more texture and overlap, at 400 px or more, let it refine them"

POSE_METHODS = ("auto", "features", "photometric", "features+photometric")


def fit_splats(
    posed: PosedSet,
    config: FitConfig = FitConfig(),
    *,
    init: Splats | None = None,
    feature_set: PosedSet | None = None,
    view_weights: "Sequence[float] | None" = None,
    device=None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FitResult:
    """Fit Gaussians to ``posed``, refining its cameras when ``config.pose_refine`` (see
    :class:`~viewforge.engine.splat.fit.FitConfig`); the other arguments as
    :func:`viewforge.engine.splat.fit.fit_splats`.

    feature_set: the same views (same order and poses) at a higher resolution, used instead of
    ``posed`` by the feature pose refinement (features are found far better on 400-800 px photos
    than on the fit's working size).
    device: the torch.device the job resolved (None: resolved here, once, from
    ``config.device``)."""
    cfg = config
    check_training_set(posed)
    t0 = time.perf_counter()
    method = _method(cfg, posed, feature_set)
    seconds: dict[str, float] = {}
    pose_views = None
    warnings: list[str] = []
    if cfg.pose_refine and method.startswith("features"):
        refined = _refine_features(posed, feature_set, cfg, progress, cancel)
        if isinstance(refined, str):  # nothing to refine from: every camera as given, no alignment
            warnings.append(refined)
            method = "none"
        else:
            posed, pose_views, kept = refined
            warnings += kept
        seconds["poses_features"] = time.perf_counter() - t0
    for w in warnings:
        log.warning("%s", w)
    device = resolve_device(cfg.device) if device is None else device
    refiner = _refiner(cfg, method, posed, device, progress, cancel)
    res = _fit.fit_splats(posed, cfg, init=init, view_weights=view_weights, refiner=refiner, device=device,
                          progress=progress, cancel=cancel)
    seconds.update(res.seconds)
    res.seconds, res.pose_views, res.warnings = seconds, pose_views, warnings
    return res


def _method(cfg: FitConfig, posed: PosedSet, feature_set: PosedSet | None) -> str:
    """The pose method to run ("auto" resolved by the size of the photos for features)."""
    method = cfg.pose_method
    if cfg.pose_refine and method not in POSE_METHODS:
        raise InputError(
            f"unknown pose_method {method!r}", "use 'auto', 'features', 'photometric' or 'features+photometric'"
        )
    if method == "auto":
        src = feature_set if feature_set is not None else posed
        size = max(max(c.width, c.height) for c in src.cameras)
        method = "features+photometric" if size >= AUTO_FEATURES_MIN_SIZE else "photometric"
    if cfg.pose_refine:
        log.info("pose refinement: %s", method)
    return method


def _refiner(cfg: FitConfig, method: str, posed: PosedSet, device, progress, cancel) -> _fit.CameraRefiner:
    from .photometric import FinalAlignRefiner, JointRefiner

    if cfg.pose_refine and method == "photometric":
        return JointRefiner(posed, cfg, device, progress, cancel)
    if cfg.pose_refine and method == "features+photometric":
        return FinalAlignRefiner(posed, cfg, device, progress, cancel)
    return _fit.CameraRefiner()


def _refine_features(posed: PosedSet, feature_set: PosedSet | None, cfg: FitConfig, progress, cancel):
    """The feature pose stage: (the set at the refined cameras at ``posed``'s sizes, per-view
    reliability, one warning per kind of camera left unrefined), or one warning (a string) when
    the photos give too little to refine from (the stage's :class:`CameraError`, or an adjustment
    that does not make the photos agree better than the input cameras do): then every camera
    stays as given and the fit goes on with them."""
    from .features import FeatureConfig, refine_poses_features

    src = posed if feature_set is None else feature_set
    if len(src) != len(posed):
        raise PosedSetError(
            f"feature_set has {len(src)} views but the training set has {len(posed)}",
            "pass the same views at a higher resolution",
        )
    fcfg = cfg.pose_features or FeatureConfig()
    try:
        res = refine_poses_features(src, fcfg, progress=progress, cancel=cancel)
    except CameraError as e:
        return f"cameras kept as placed: {e.message} ({FEATURES_FIX})"
    if not res.rms_after < res.rms_input:
        return (f"cameras kept as placed: the feature matches agree no better at refined cameras "
                f"({res.rms_input:.2f} -> {res.rms_after:.2f} px)")
    cams = [c.with_pose(r.world_to_camera) for c, r in zip(posed.cameras, res.cameras)]
    n_ok = sum(v.reliable for v in res.views)
    log.info("feature pose refinement: %d/%d views reliable, rms %.2f -> %.2f px", n_ok, len(res.views),
             res.rms_before, res.rms_after)
    names = [posed.names[i] if posed.names else c.name or str(i) for i, c in enumerate(posed.cameras)]
    few = [n for n, v in zip(names, res.views) if v.observations < fcfg.min_view_observations]
    loose = [n for n, v in zip(names, res.views) if v.observations >= fcfg.min_view_observations and not v.reliable]
    kept = []
    if few:
        kept.append(f"{len(few)} of {len(names)} cameras kept as placed (too few feature matches): {', '.join(few)}")
    if loose:
        kept.append(f"{len(loose)} of {len(names)} cameras refined from loose matches "
                    f"(reprojection error above {fcfg.outlier_px / 2:g} px): {', '.join(loose)}")
    return PosedSet(cams, posed.images, posed.masks, posed.names, posed.meta), res.views, kept
