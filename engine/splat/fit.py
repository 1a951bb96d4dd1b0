"""Fit 3D Gaussians to a posed set (and optionally refine the camera poses).

Loss: (1 - w_ssim) L1 + w_ssim (1 - SSIM) on images composited on a random background (when
the set has masks, so alpha must match them), plus w_mask |alpha - mask|. Densify and prune with
gsplat's ``DefaultStrategy`` (plain torch; it runs on the CPU). SH degree grows from 0 to
``sh_degree``. Means' learning rate decays exponentially, scaled by the scene size (gsplat's
simple_trainer recipe, shortened for few-thousand-iteration CPU runs).

Pose refinement (``pose_refine``), by ``pose_method``:
- "features": before the fit, SIFT matches between the photos and bundle adjustment
  (engine/poses/features.py) refine the cameras; the fit then uses them as they are.
- "photometric": per camera a 6-vector (axis-angle, translation) ``delta``, world-to-camera
  becomes ``exp(delta) @ w2c``; Adam with its own learning rate, started after a warm-up, plus
  render-and-compare alignment rounds (engine/poses/photometric.py).
- "features+photometric": the features, then the fit with those cameras, then each camera
  aligned once to the finished model by render-and-compare.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from ..cameras import Camera
from ..device import resolve_device
from ..errors import CameraError, NumericalError, PosedSetError, ResourceError
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback, check, report
from .model import Splats, init_splats, random_points, scene_scale, visual_hull_points

if TYPE_CHECKING:
    from ..poses.features import FeatureConfig, ViewReliability

log = logging.getLogger(__name__)

#: pose_method "auto" uses features from photos at least this large (longer side, pixels).
AUTO_FEATURES_MIN_SIZE = 160


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_splats`. Defaults suit ~24 views at ~200 px on a laptop CPU.

    iterations: optimisation steps, one training view each.
    sh_degree: final spherical-harmonics degree (0-3); raised by one every ``sh_interval`` steps.
    init_points: number of initial Gaussians (visual hull from masks, else uniform in the bounds).
    init_opacity: initial opacity.
    init_min_views: a visual-hull point is kept only when at least this many cameras see it (all
        of them when there are fewer); 2 leaves out the scene cube's corners that one occluded
        camera sees and nothing carves, which otherwise stay as floaters.
    ssim_weight: weight of (1 - SSIM) against L1.
    mask_weight: weight of the |alpha - mask| loss (sets with masks only).
    random_background: composite targets on a random colour each step (needs masks).
    lr_means, lr_means_final: means' learning rate (x scene scale), decayed exponentially.
    lr_scales, lr_quats, lr_opacities, lr_sh0, lr_shN: Adam learning rates.
    densify: use gsplat's DefaultStrategy (grow/split/prune).
    refine_start, refine_stop, refine_every, reset_every: strategy schedule in steps
        (refine_stop <= 0 means half of ``iterations``).
    grow_grad2d: screen-space gradient threshold for growing.
    max_gaussians: growing stops above this count (CPU time grows with it).
    pose_refine: refine the camera poses, by ``pose_method``.
    pose_method: "auto" (default): "features+photometric" when the photos used for features
        (``feature_set`` of :func:`fit_splats`, else the training photos) have a longer side of
        at least ``AUTO_FEATURES_MIN_SIZE`` px, else "photometric" (SIFT finds too little on
        thumbnails).
        "features": feature matches between the photos + bundle adjustment before the fit
        (engine/poses/features.py, settings ``pose_features``; None = defaults);
        "photometric": per-camera SE(3) corrections learnt jointly with the model (from
        ``pose_start``) and, at the fractions ``pose_rounds`` of the run, each camera aligned to
        the current model by render-and-compare (engine/poses/photometric.py);
        "features+photometric": the features, then the model is fitted with those cameras and,
        at the end, each camera is aligned to it once by render-and-compare (no joint
        corrections). Measured on lego, 3 degree / 3 % perturbations (docs/reconstruction.md):
        features 0.21 degrees median after alignment with 100 views, 0.56-0.72 with 24 (three
        seeds), features + the final alignment 0.35-0.57 with 24; the photometric mechanisms
        alone 2.3 with 24.
    pose_lr: Adam learning rate of the joint corrections; pose_align_steps: steps per camera
        in each alignment round.
    device: "auto" (CUDA, else MPS, else CPU), "cpu", "cuda" or "mps".
    backend: rasterizer backend, see rasterize.py ("auto": gsplat on CUDA, ours elsewhere).
    seed: random seed (initialisation, view order, backgrounds).
    """

    iterations: int = 3000
    sh_degree: int = 3
    sh_interval: int = 500
    init_points: int = 20000
    init_opacity: float = 0.1
    init_min_views: int = 2
    ssim_weight: float = 0.2
    mask_weight: float = 0.1
    random_background: bool = True
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    densify: bool = True
    refine_start: int = 300
    refine_stop: int = 0
    refine_every: int = 100
    reset_every: int = 100000
    grow_grad2d: float = 0.0002
    max_gaussians: int = 200000
    pose_refine: bool = False
    pose_lr: float = 1e-3
    pose_start: int = 100
    pose_rounds: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65)
    pose_align_steps: int = 100
    pose_method: Literal["auto", "features", "photometric", "features+photometric"] = "auto"
    pose_features: "FeatureConfig | None" = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    backend: str = "auto"
    seed: int = 0


@dataclass
class FitResult:
    """splats: the fitted Gaussians (CPU). cameras: the training cameras (refined if asked).
    seconds: wall time per stage. history: (step, loss) samples. iterations: steps run.
    pose_views: per-view reliability of the feature pose refinement (None when it did not run).
    warnings: one line each for the user: cameras the pose refinement could not refine and why
    (the fit then used them as given)."""

    splats: Splats
    cameras: list[Camera]
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)
    iterations: int = 0
    pose_views: "list[ViewReliability] | None" = None
    warnings: list[str] = field(default_factory=list)


def se3_exp(delta):
    """(C, 6) axis-angle + translation -> (C, 4, 4) rigid transforms (Rodrigues, differentiable)."""
    import torch

    w, t = delta[:, :3], delta[:, 3:]
    theta = torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-12)  # (C, 1)
    k = w / theta
    kx = torch.zeros(delta.shape[0], 3, 3, dtype=delta.dtype, device=delta.device)
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=delta.dtype, device=delta.device)
    r = eye + s * kx + (1 - c) * (kx @ kx)
    out = torch.eye(4, dtype=delta.dtype, device=delta.device).repeat(delta.shape[0], 1, 1)
    out[:, :3, :3] = r
    out[:, :3, 3] = t
    return out


def _tensors(posed: PosedSet, device):
    import torch

    imgs = [torch.from_numpy(np.ascontiguousarray(i)).to(device) for i in posed.images]
    masks = None if posed.masks is None else [torch.from_numpy(np.ascontiguousarray(m)).to(device) for m in posed.masks]
    return imgs, masks


def _view_schedule(n: int, weights: "Sequence[float] | None") -> np.ndarray:
    """View indices of one pass: view i repeated round(w_i / min(w)) times."""
    if weights is None:
        return np.arange(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        from ..errors import InputError

        raise InputError(f"view_weights must be {n} positive numbers, got {list(w)}", "give one weight > 0 per view")
    return np.repeat(np.arange(n), np.maximum(np.round(w / w.min()), 1).astype(int))


def _initial(posed: PosedSet, cfg: FitConfig) -> Splats:
    if posed.masks is not None:
        pts, cols, spacing = visual_hull_points(posed, cfg.init_points, seed=cfg.seed, min_views=cfg.init_min_views)
    else:
        pts, cols, spacing = random_points(posed.cameras, cfg.init_points, seed=cfg.seed)
    return init_splats(pts, cols, spacing, cfg.sh_degree, cfg.init_opacity, cfg.seed)


def fit_splats(
    posed: PosedSet,
    config: FitConfig = FitConfig(),
    *,
    init: Splats | None = None,
    feature_set: PosedSet | None = None,
    view_weights: "Sequence[float] | None" = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FitResult:
    """Fit Gaussians to ``posed`` (all its views are training views). See :class:`FitConfig`.

    init: start from these Gaussians (a warm start) instead of the visual hull.
    view_weights: one weight > 0 per view: a view with weight w is visited w / min(weights) times
    (rounded) per pass over the views, so it takes that many more optimisation steps (the
    3D-aware sampler gives the condition image a high weight). None: every view once per pass.

    feature_set: the same views (same order and poses) at a higher resolution, used instead of
    ``posed`` by the feature pose refinement (features are found far better on 400-800 px photos
    than on the fit's working size)."""
    import torch
    from pytorch_msssim import ssim

    from .rasterize import rasterize

    cfg = config
    if len(posed) < 1:
        raise PosedSetError("no training views", "give at least one image with its camera")
    if any(c.distortion is not None for c in posed.cameras):
        raise PosedSetError("training cameras still have lens distortion", "load the set with undistort=True")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    pose_views = None
    method = cfg.pose_method
    if cfg.pose_refine and method not in ("auto", "features", "photometric", "features+photometric"):
        from ..errors import InputError

        raise InputError(
            f"unknown pose_method {method!r}", "use 'auto', 'features', 'photometric' or 'features+photometric'"
        )
    if method == "auto":
        src = feature_set if feature_set is not None else posed
        size = max(max(c.width, c.height) for c in src.cameras)
        method = "features+photometric" if size >= AUTO_FEATURES_MIN_SIZE else "photometric"
    if cfg.pose_refine:
        log.info("pose refinement: %s", method)
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
        t0 = time.perf_counter()
    for w in warnings:
        log.warning("%s", w)
    # "photometric": joint corrections + alignment rounds during the fit. After the features the
    # joint corrections only let the rig and the model turn together (measured), so
    # "features+photometric" fits the model with the feature cameras and aligns each camera to
    # the finished model once.
    photometric = cfg.pose_refine and method == "photometric"
    final_align = cfg.pose_refine and method == "features+photometric"
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    splats = init if init is not None else _initial(posed, cfg)
    seconds["init"] = time.perf_counter() - t0

    scale = scene_scale(posed.cameras)
    params = {k: torch.nn.Parameter(v.to(device).clone()) for k, v in splats.as_dict().items()}
    lrs = {
        "means": cfg.lr_means * scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN,
    }
    optimizers = {k: torch.optim.Adam([params[k]], lr=lrs[k], eps=1e-15) for k in params}
    gamma = (cfg.lr_means_final / cfg.lr_means) ** (1.0 / max(cfg.iterations, 1))

    strategy = state = None
    if cfg.densify:
        from gsplat.strategy import DefaultStrategy

        strategy = DefaultStrategy(
            refine_start_iter=cfg.refine_start,
            refine_stop_iter=cfg.refine_stop if cfg.refine_stop > 0 else cfg.iterations // 2,
            refine_every=cfg.refine_every,
            reset_every=cfg.reset_every,
            grow_grad2d=cfg.grow_grad2d,
            verbose=False,
        )
        strategy.check_sanity(params, optimizers)
        state = strategy.initialize_state(scene_scale=scale)

    w2c0 = torch.tensor(np.stack([c.world_to_camera for c in posed.cameras]), dtype=torch.float32, device=device)
    Ks = torch.tensor(np.stack([c.K for c in posed.cameras]), dtype=torch.float32, device=device)
    pose_delta = None
    pose_opts: list = []
    if photometric:
        # one (6,) parameter and one Adam per camera: a camera's moments only move on its own steps
        pose_delta = [torch.nn.Parameter(torch.zeros(1, 6, device=device)) for _ in range(len(posed))]
        pose_opts = [torch.optim.Adam([d], lr=cfg.pose_lr) for d in pose_delta]
    imgs, masks = _tensors(posed, device)
    sizes = [(c.width, c.height) for c in posed.cameras]
    seconds["setup"] = time.perf_counter() - t0 - seconds["init"]

    align_steps = {int(f * cfg.iterations) for f in cfg.pose_rounds} if photometric else set()
    history: list[tuple[int, float]] = []
    snapshot = {k: v.detach().clone() for k, v in params.items()}
    failures = 0
    order: list[int] = []
    schedule = _view_schedule(len(posed), view_weights)
    t_fit = time.perf_counter()
    step = 0
    while step < cfg.iterations:
        check(cancel)
        if not order:
            order = list(rng.permutation(schedule))
        if step in align_steps:
            align_steps.discard(step)
            w2c0 = _align_round(params, posed, w2c0, pose_delta, cfg, device, progress, cancel)
        i = order.pop()
        w, h = sizes[i]
        sh_deg = min(step // max(cfg.sh_interval, 1), cfg.sh_degree)
        viewmat = w2c0[i : i + 1]
        if pose_delta is not None:
            viewmat = se3_exp(pose_delta[i]) @ viewmat
        if masks is not None and cfg.random_background:
            bg = torch.rand(1, 3, device=device)
        else:
            bg = torch.ones(1, 3, device=device)
        try:
            colors = torch.cat([params["sh0"], params["shN"]], dim=1)
            render, alpha, info = rasterize(
                params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
                colors, viewmat, Ks[i : i + 1], w, h, sh_degree=sh_deg, backgrounds=bg, backend=cfg.backend,
            )
            gt = imgs[i]
            if masks is not None:
                m = masks[i][..., None]
                gt = gt * m + bg[0] * (1 - m)
            pred = render[0]
            l1 = (pred - gt).abs().mean()
            s = ssim(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None], data_range=1.0, size_average=True)
            loss = (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * (1 - s)
            if masks is not None and cfg.mask_weight > 0:
                loss = loss + cfg.mask_weight * (alpha[0, ..., 0] - masks[i]).abs().mean()
            if not torch.isfinite(loss):
                raise FloatingPointError
            if strategy is not None:
                strategy.step_pre_backward(params, optimizers, state, step, info)
            loss.backward()
            grads_ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in params.values())
            if not grads_ok:
                raise FloatingPointError
        except FloatingPointError:
            failures += 1
            if failures > 3:
                raise NumericalError(
                    f"the fit diverged (NaN/Inf loss) at step {step} and did not recover after 3 restarts",
                    "lower the resolution or the learning rates, or change the seed",
                ) from None
            log.warning("non-finite loss at step %d: restoring the last snapshot, halving learning rates", step)
            _restore(params, optimizers, snapshot, strategy, state)
            for opt in optimizers.values():
                for g in opt.param_groups:
                    g["lr"] *= 0.5
            continue
        except (torch.OutOfMemoryError, MemoryError) as e:
            raise ResourceError(
                f"out of memory at {params['means'].shape[0]} Gaussians, {w}x{h} px ({type(e).__name__})",
                "lower --resolution, the number of views or max_gaussians",
            ) from None
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if pose_opts:
            if step >= cfg.pose_start:
                pose_opts[i].step()
            pose_opts[i].zero_grad(set_to_none=True)
        for g in optimizers["means"].param_groups:
            g["lr"] *= gamma
        if strategy is not None:
            n_before = params["means"].shape[0]
            if n_before < cfg.max_gaussians:
                strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
            elif state.get("grad2d") is not None:
                state["grad2d"] = state["count"] = state["radii"] = None  # stop accumulating
        if step % 100 == 0:
            history.append((step, float(loss.detach())))
            snapshot = {k: v.detach().clone() for k, v in params.items()}
        step += 1
        report(progress, "fit", step, cfg.iterations, f"step {step}/{cfg.iterations}, {params['means'].shape[0]} Gaussians")
    seconds["fit"] = time.perf_counter() - t_fit

    cameras = list(posed.cameras)
    if final_align:
        t_align = time.perf_counter()
        w2c = _align_round(params, posed, w2c0, None, cfg, device, progress, cancel)
        cameras = [c.with_pose(_orthonormal_pose(m)) for c, m in zip(posed.cameras, w2c.cpu().double().numpy())]
        seconds["poses_align"] = time.perf_counter() - t_align
    if pose_delta is not None:
        with torch.no_grad():
            refined = (se3_exp(torch.cat(pose_delta)) @ w2c0).cpu().double().numpy()
        cameras = [c.with_pose(_orthonormal_pose(m)) for c, m in zip(posed.cameras, refined)]
    out = Splats.from_dict({k: v for k, v in params.items()})
    return FitResult(out, cameras, seconds, history, step, pose_views, warnings)


#: How the feature pose stage's failures read in a job's report (after "cameras kept as placed: ").
FEATURES_FIX = "photos with more texture and overlap, at 400 px or more, let it refine them"


def _refine_features(posed: PosedSet, feature_set: PosedSet | None, cfg: FitConfig, progress, cancel):
    """The feature pose stage: (the set at the refined cameras at ``posed``'s sizes, per-view
    reliability, one warning per kind of camera left unrefined), or one warning (a string) when
    the photos give too little to refine from (the stage's :class:`CameraError`, or an adjustment
    that does not make the photos agree better than the input cameras do): then every camera
    stays as given and the fit goes on with them."""
    from ..poses.features import FeatureConfig, refine_poses_features

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


def _align_round(params, posed, w2c0, pose_delta, cfg, device, progress, cancel):
    """Bake the joint corrections into the poses, align every camera to the current model, and
    return the new (C, 4, 4) world-to-camera tensor (the joint corrections restart at zero)."""
    import torch

    from ..poses.photometric import AlignConfig, align_cameras

    with torch.no_grad():
        if pose_delta is not None:
            w2c0 = torch.cat([se3_exp(d) @ w2c0[i : i + 1] for i, d in enumerate(pose_delta)])
            for d in pose_delta:
                d.zero_()
        cams = [c.with_pose(_orthonormal_pose(m)) for c, m in zip(posed.cameras, w2c0.cpu().double().numpy())]
    current = Splats.from_dict(params)
    res = align_cameras(
        current, PosedSet(cams, posed.images, posed.masks, posed.names), AlignConfig(steps=cfg.pose_align_steps),
        device=device, backend=cfg.backend, progress=progress, cancel=cancel,
    )
    log.info("pose alignment: mean loss %.4f -> %.4f", float(np.mean(res.loss_before)), float(np.mean(res.loss_after)))
    return torch.tensor(np.stack([c.world_to_camera for c in res.cameras]), dtype=torch.float32, device=device)


def _orthonormal_pose(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = m[:3, 3]
    return out


def _restore(params, optimizers, snapshot, strategy, state) -> None:
    import torch

    for k, v in snapshot.items():
        params[k] = torch.nn.Parameter(v.clone())
        opt = optimizers[k]
        opt.param_groups[0]["params"] = [params[k]]
        opt.state.clear()
    if state is not None:
        for key in ("grad2d", "count", "radii"):
            state[key] = None


def render_splats(
    splats: Splats,
    cameras: list[Camera],
    *,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    device: str = "auto",
    backend: str = "auto",
    with_depth: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Render each camera: dicts with "rgb" (H,W,3), "alpha" (H,W) and optionally "depth" (H,W)."""
    import torch

    from .rasterize import rasterize

    dev = resolve_device(device)
    p = {k: v.to(dev) for k, v in splats.as_dict().items()}
    colors = torch.cat([p["sh0"], p["shN"]], dim=1)
    out = []
    with torch.no_grad():
        for cam in cameras:
            vm = torch.tensor(cam.world_to_camera, dtype=torch.float32, device=dev)[None]
            K = torch.tensor(cam.K, dtype=torch.float32, device=dev)[None]
            bg = torch.tensor([background], dtype=torch.float32, device=dev)
            r, a, _ = rasterize(
                p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors, vm, K,
                cam.width, cam.height, sh_degree=splats.sh_degree, backgrounds=bg, backend=backend,
                render_mode="RGB+ED" if with_depth else "RGB",
            )
            d = {"rgb": r[0, ..., :3].clamp(0, 1).cpu().numpy(), "alpha": a[0, ..., 0].cpu().numpy()}
            if with_depth:
                d["depth"] = r[0, ..., 3].cpu().numpy()
            out.append(d)
    return out
