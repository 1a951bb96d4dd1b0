"""Fit 3D Gaussians to a posed set; the training cameras can be refined through a hook.

Loss: (1 - w_ssim) L1 + w_ssim (1 - SSIM) on images composited on a random background (when
the set has masks, so alpha must match them), plus w_mask |alpha - mask|. Densify and prune with
gsplat's ``DefaultStrategy`` (plain torch; it runs on the CPU). SH degree grows from 0 to
``sh_degree``. Means' learning rate decays exponentially, scaled by the scene size (gsplat's
simple_trainer recipe, shortened for few-thousand-iteration CPU runs).

Camera refinement is not decided here: the loop calls a :class:`CameraRefiner` (its hooks give
the view matrix of each step, may re-align every camera before a step, step their own
parameters after each backward pass and give the final cameras). The pose methods of
``FitConfig.pose_method`` are built in engine/poses/refine.py, whose ``fit_splats`` is the entry
point for fits with ``pose_refine``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from ..cameras import Camera, orthonormal_pose
from ..device import resolve_device
from ..errors import InputError, NumericalError, PosedSetError, ResourceError
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback, check, report
from .model import Splats, init_splats, random_points, scene_scale, visual_hull_points

log = logging.getLogger(__name__)


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
    pose_refine: refine the camera poses, by ``pose_method`` (run through
        engine/poses/refine.py's ``fit_splats``; this module's raises without a refiner).
    pose_method: "auto" (default): "features+photometric" when the photos used for features
        (``feature_set`` of engine/poses/refine.py's ``fit_splats``, else the training photos)
        have a longer side of at least ``AUTO_FEATURES_MIN_SIZE`` px (engine/poses/refine.py),
        else "photometric" (SIFT finds too little on thumbnails).
        "features": feature matches between the photos + bundle adjustment before the fit
        (engine/poses/features.py, settings ``pose_features``, a ``FeatureConfig``; None =
        defaults);
        "photometric": per-camera SE(3) corrections learnt jointly with the model (from
        ``pose_start``) and, at the fractions ``pose_rounds`` of the run, each camera aligned to
        the current model by render-and-compare (engine/poses/photometric.py);
        "features+photometric": the features, then the model is fitted with those cameras and,
        at the end, each camera is aligned to it once by render-and-compare (no joint
        corrections). Their accuracies are measured in docs/reconstruction.md.
    pose_lr: Adam learning rate of the joint corrections; pose_align_steps: steps per camera
        in each alignment round.
    device: "auto" (CUDA, else MPS, else CPU), "cpu", "cuda" or "mps"; a job resolves it once
        (engine/device.py) and hands the torch.device to :func:`fit_splats`.
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
    pose_features: Any = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    backend: str = "auto"
    seed: int = 0


@dataclass
class FitResult:
    """splats: the fitted Gaussians (CPU). cameras: the training cameras (refined if asked).
    seconds: wall time per stage. history: (step, loss) samples. iterations: steps run.
    pose_views: per-view reliability of the feature pose refinement (engine/poses/features.py's
    ``ViewReliability``; None when it did not run).
    warnings: one line each for the user: cameras the pose refinement could not refine and why
    (the fit then used them as given)."""

    splats: Splats
    cameras: list[Camera]
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)
    iterations: int = 0
    pose_views: "list[Any] | None" = None
    warnings: list[str] = field(default_factory=list)


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
        raise InputError(f"view_weights must be {n} positive numbers, got {list(w)}", "give one weight > 0 per view")
    return np.repeat(np.arange(n), np.maximum(np.round(w / w.min()), 1).astype(int))


def _initial(posed: PosedSet, cfg: FitConfig) -> Splats:
    if posed.masks is not None:
        pts, cols, spacing = visual_hull_points(posed, cfg.init_points, seed=cfg.seed, min_views=cfg.init_min_views)
    else:
        pts, cols, spacing = random_points(posed.cameras, cfg.init_points, seed=cfg.seed)
    return init_splats(pts, cols, spacing, cfg.sh_degree, cfg.init_opacity, cfg.seed)


class CameraRefiner:
    """Hooks through which the fit loop refines its training cameras. This base class leaves
    them as given; engine/poses/photometric.py has the refiners of ``FitConfig.pose_method``.

    ``w2c`` is the (C, 4, 4) float32 world-to-camera tensor of the training cameras on the fit's
    device; ``params`` the model's parameters (dict of tensors, as :meth:`Splats.as_dict`)."""

    #: wall time per stage this refiner ran (added to FitResult.seconds after the fit).
    seconds: dict[str, float]

    def start(self, num_cameras: int, device) -> None:
        """Called once before the first step."""

    def before_step(self, step: int, params, w2c):
        """Called before each step; returns the (possibly re-aligned) ``w2c``."""
        return w2c

    def viewmat(self, i: int, w2c_i):
        """The (1, 4, 4) view matrix of camera ``i`` at this step, from its row ``w2c_i``."""
        return w2c_i

    def after_step(self, step: int, i: int) -> None:
        """Called after the model's optimisers stepped on camera ``i``'s loss."""

    def finish(self, params, w2c) -> "np.ndarray | None":
        """The final (C, 4, 4) world-to-camera matrices, or None to keep the cameras as given."""
        return None


@dataclass
class _Model:
    """The model's parameters and what optimises them."""

    params: dict
    optimizers: dict
    gamma: float
    strategy: Any
    state: Any


@dataclass
class _Views:
    """The training views on the fit's device."""

    w2c: Any
    Ks: Any
    imgs: list
    masks: "list | None"
    sizes: list[tuple[int, int]]


def check_training_set(posed: PosedSet) -> None:
    """Raise PosedSetError unless ``posed`` has views, all undistorted."""
    if len(posed) < 1:
        raise PosedSetError("no training views", "give at least one image with its camera")
    if any(c.distortion is not None for c in posed.cameras):
        raise PosedSetError("training cameras still have lens distortion", "load the set with undistort=True")


def _optimisation(splats: Splats, cfg: FitConfig, scale: float, device) -> _Model:
    """Parameters on ``device``, one Adam each, the means' decay and the densification strategy."""
    import torch

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
    return _Model(params, optimizers, gamma, strategy, state)


def _views(posed: PosedSet, device) -> _Views:
    import torch

    w2c = torch.tensor(np.stack([c.world_to_camera for c in posed.cameras]), dtype=torch.float32, device=device)
    Ks = torch.tensor(np.stack([c.K for c in posed.cameras]), dtype=torch.float32, device=device)
    imgs, masks = _tensors(posed, device)
    return _Views(w2c, Ks, imgs, masks, [(c.width, c.height) for c in posed.cameras])


def _step_loss(model: _Model, views: _Views, viewmat, i: int, sh_deg: int, cfg: FitConfig, step: int, device):
    """Render view ``i`` at ``viewmat``, its loss, backward (raises FloatingPointError on a
    non-finite loss or gradient)."""
    import torch
    from pytorch_msssim import ssim

    from .rasterize import rasterize_params

    params, masks = model.params, views.masks
    w, h = views.sizes[i]
    if masks is not None and cfg.random_background:
        bg = torch.rand(1, 3, device=device)
    else:
        bg = torch.ones(1, 3, device=device)
    render, alpha, info = rasterize_params(
        params, viewmat, views.Ks[i : i + 1], w, h, sh_degree=sh_deg, backgrounds=bg, backend=cfg.backend,
    )
    gt = views.imgs[i]
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
    if model.strategy is not None:
        model.strategy.step_pre_backward(params, model.optimizers, model.state, step, info)
    loss.backward()
    grads_ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in params.values())
    if not grads_ok:
        raise FloatingPointError
    return loss, info


def _recover(model: _Model, snapshot, failures: int, step: int) -> None:
    """After a non-finite step: restore the last snapshot and halve the learning rates, or
    raise NumericalError after the third time."""
    if failures > 3:
        raise NumericalError(
            f"the fit diverged (NaN/Inf loss) at step {step} and did not recover after 3 restarts",
            "lower the resolution or the learning rates, or change the seed",
        ) from None
    log.warning("non-finite loss at step %d: restoring the last snapshot, halving learning rates", step)
    _restore(model.params, model.optimizers, snapshot, model.strategy, model.state)
    for opt in model.optimizers.values():
        for g in opt.param_groups:
            g["lr"] *= 0.5


def _update(model: _Model, step: int, info, cfg: FitConfig) -> None:
    """Step the optimisers, decay the means' learning rate, densify/prune."""
    for opt in model.optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    for g in model.optimizers["means"].param_groups:
        g["lr"] *= model.gamma
    if model.strategy is not None:
        state = model.state
        n_before = model.params["means"].shape[0]
        if n_before < cfg.max_gaussians:
            model.strategy.step_post_backward(model.params, model.optimizers, state, step, info, packed=False)
        elif state.get("grad2d") is not None:
            state["grad2d"] = state["count"] = state["radii"] = None  # stop accumulating


def _optimise(model: _Model, views: _Views, refiner: CameraRefiner, schedule: np.ndarray, rng, cfg: FitConfig,
              device, progress, cancel) -> tuple[Any, list[tuple[int, float]], int]:
    """The optimisation loop: (the training cameras' w2c after the refiner's re-alignments,
    (step, loss) history, steps run)."""
    import torch

    params = model.params
    w2c = views.w2c
    history: list[tuple[int, float]] = []
    snapshot = {k: v.detach().clone() for k, v in params.items()}
    failures = 0
    order: list[int] = []
    step = 0
    while step < cfg.iterations:
        check(cancel)
        if not order:
            order = list(rng.permutation(schedule))
        w2c = refiner.before_step(step, params, w2c)
        i = order.pop()
        sh_deg = min(step // max(cfg.sh_interval, 1), cfg.sh_degree)
        viewmat = refiner.viewmat(i, w2c[i : i + 1])
        try:
            loss, info = _step_loss(model, views, viewmat, i, sh_deg, cfg, step, device)
        except FloatingPointError:
            failures += 1
            _recover(model, snapshot, failures, step)
            params = model.params
            continue
        except (torch.OutOfMemoryError, MemoryError) as e:
            w, h = views.sizes[i]
            raise ResourceError(
                f"out of memory at {params['means'].shape[0]} Gaussians, {w}x{h} px ({type(e).__name__})",
                "lower --resolution, the number of views or max_gaussians",
            ) from None
        _update(model, step, info, cfg)
        refiner.after_step(step, i)
        if step % 100 == 0:
            history.append((step, float(loss.detach())))
            snapshot = {k: v.detach().clone() for k, v in params.items()}
        step += 1
        report(progress, "fit", step, cfg.iterations, f"step {step}/{cfg.iterations}, {params['means'].shape[0]} Gaussians")
    return w2c, history, step


def fit_splats(
    posed: PosedSet,
    config: FitConfig = FitConfig(),
    *,
    init: Splats | None = None,
    view_weights: "Sequence[float] | None" = None,
    refiner: CameraRefiner | None = None,
    device=None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FitResult:
    """Fit Gaussians to ``posed`` (all its views are training views). See :class:`FitConfig`.

    init: start from these Gaussians (a warm start) instead of the visual hull.
    view_weights: one weight > 0 per view: a view with weight w is visited w / min(weights) times
    (rounded) per pass over the views, so it takes that many more optimisation steps (the
    3D-aware sampler gives the condition image a high weight). None: every view once per pass.
    refiner: refines the training cameras during the fit (None: they stay as given). A config
    with ``pose_refine`` needs one: engine/poses/refine.py's ``fit_splats`` builds it.
    device: the torch.device the job resolved (None: resolved here from ``config.device``)."""
    import torch

    cfg = config
    check_training_set(posed)
    if refiner is None:
        if cfg.pose_refine:
            raise InputError(
                "pose refinement is run by the pose stage, not by the plain fit",
                "call viewforge.engine.poses.refine.fit_splats, or pass a refiner",
            )
        refiner = CameraRefiner()
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    device = resolve_device(cfg.device) if device is None else device
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    splats = init if init is not None else _initial(posed, cfg)
    seconds["init"] = time.perf_counter() - t0

    scale = scene_scale(posed.cameras)
    model = _optimisation(splats, cfg, scale, device)
    views = _views(posed, device)
    refiner.start(len(posed), device)
    seconds["setup"] = time.perf_counter() - t0 - seconds["init"]

    schedule = _view_schedule(len(posed), view_weights)
    t_fit = time.perf_counter()
    w2c, history, step = _optimise(model, views, refiner, schedule, rng, cfg, device, progress, cancel)
    seconds["fit"] = time.perf_counter() - t_fit

    cameras = list(posed.cameras)
    final = refiner.finish(model.params, w2c)
    seconds.update(getattr(refiner, "seconds", {}))
    if final is not None:
        cameras = [c.with_pose(orthonormal_pose(m)) for c, m in zip(posed.cameras, final)]
    out = Splats.from_dict({k: v for k, v in model.params.items()})
    return FitResult(out, cameras, seconds, history, step, None, [])


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
    device="auto",
    backend: str = "auto",
    with_depth: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Render each camera: dicts with "rgb" (H,W,3), "alpha" (H,W) and optionally "depth" (H,W).
    device: a torch.device (the job's), or a name for engine/device.py's ``resolve_device``."""
    import torch

    from .rasterize import rasterize_params

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    p = {k: v.to(dev) for k, v in splats.as_dict().items()}
    out = []
    with torch.no_grad():
        for cam in cameras:
            vm = torch.tensor(cam.world_to_camera, dtype=torch.float32, device=dev)[None]
            K = torch.tensor(cam.K, dtype=torch.float32, device=dev)[None]
            bg = torch.tensor([background], dtype=torch.float32, device=dev)
            r, a, _ = rasterize_params(
                p, vm, K, cam.width, cam.height, sh_degree=splats.sh_degree, backgrounds=bg, backend=backend,
                render_mode="RGB+ED" if with_depth else "RGB",
            )
            d = {"rgb": r[0, ..., :3].clamp(0, 1).cpu().numpy(), "alpha": a[0, ..., 0].cpu().numpy()}
            if with_depth:
                d["depth"] = r[0, ..., 3].cpu().numpy()
            out.append(d)
    return out
