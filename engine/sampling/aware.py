"""Few-step multi-view sampling with 3D reconstruction in the loop (AlignCVC) or between rounds
(IM-3D), on any :class:`~viewforge.engine.mvgen.base.MultiViewGenerator`.

Notation (docs/generation.md has the derivation): ``x_t = a_t x0 + s_t eps`` (the generator's
:class:`~viewforge.engine.mvgen.base.NoiseSchedule`), K descending timesteps ``t_1 > ... > t_K``
("trailing" spacing: ``t_1 = T - 1``), ``D(x_t, t)`` the generator's clean prediction, ``R`` a
Gaussian-splat fit of views at the rig cameras plus the condition image at the reference camera,
``P(R)`` its renders at the rig, ``E``/``Dec`` the generator's encode/decode.

- **oneshot**: plain sampling, ``x_{t_{k+1}} = a' x0_k + s' n_k`` with ``x0_k = D(x_{t_k}, t_k)``,
  then one fit ``R`` of ``Dec(x0_K)``.
- **aware** (AlignCVC's 3D-aware sampling): at every step ``R_k = fit(Dec(x0_k); init R_{k-1})``
  and the *renders* are re-noised: ``x_{t_{k+1}} = a' E(P(R_k)) + s' n_k``. The result is ``R_K``.
- **im3d** (IM-3D): oneshot, then ``rounds`` times: re-noise ``E(P(R))`` to ``t_s = strength * T``,
  run ``im3d_steps`` plain steps from there, refit (warm).

``n_k = sqrt(1 - eta^2) eps_k + eta z`` with ``eps_k`` the noise the prediction implies
(DDIM's direction) and ``z`` fresh noise. Network evaluations are counted by the generator.

**Anchors** (completion from photos, engine/complete.py): by default the fit's one hard
constraint is the condition image at the generator's reference camera. ``sample(...,
cameras=, anchors=)`` instead reconstructs in another frame (the rig ``cameras`` placed in the
scene) with any number of :class:`Anchor` photos, each at its own camera with its own weight, in
every fit. ``rvc=`` (aware only) adds rendering-aware velocity compensation at the steps with
``t < rvc.t_max T`` (engine/sampling/rvc.py, docs/completion.md).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from ..progress import CancelToken, ProgressCallback, ProgressEvent, check, report
from ..splat.fit import FitConfig
from .anchors import Anchor

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..mvgen.base import ConditionImage, MultiViewGenerator
    from ..splat.model import Splats
    from .rvc import RVCConfig

log = logging.getLogger(__name__)

METHODS = ("oneshot", "aware", "im3d")

#: Fit settings inside the sampler: views are few and small, so a light model (SH degree 1, no
#: random backgrounds needed beyond the masks) fits in a few hundred steps.
SAMPLER_FIT = FitConfig(iterations=1000, sh_degree=1, sh_interval=300, init_points=8000, refine_start=200,
                        refine_every=100, max_gaussians=60000)


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of :func:`sample`.

    method: "oneshot", "aware" (default) or "im3d" (module docstring).
    steps: denoising steps K (default 4).
    eta: 1 re-noises with fresh noise (default), 0 with the noise the prediction implies (DDIM).
    reference_weight: the condition image's weight in every fit: it is visited this many times
        per pass over the generated views (default 4: the input is the one view we trust).
    fit_iterations: steps of the first fit (default 1000).
    warm_iterations: steps of each later fit, warm-started from the last one (default 300).
        oneshot's single fit gets fit_iterations + (steps - 1) * warm_iterations (the same budget).
    rounds: IM-3D regeneration rounds after the first pass (default 2).
    im3d_steps: plain steps per IM-3D round (default 2). im3d_strength: the noise level a round
        starts from, as a fraction of the schedule (default 0.5).
    fit: the fit's other settings (iterations are set from the fields above).
    seed: noise seed (also the generator's condition noise: Zero123++'s reference-latent noise).
    input_elevation: elevation in degrees of the condition image's camera above the object
        (default 0: the photo is assumed level); the default anchor's camera is raised by it.
    """

    method: Literal["oneshot", "aware", "im3d"] = "aware"
    steps: int = 4
    eta: float = 1.0
    reference_weight: float = 4.0
    fit_iterations: int = 1000
    warm_iterations: int = 300
    rounds: int = 2
    im3d_steps: int = 2
    im3d_strength: float = 0.5
    fit: FitConfig = SAMPLER_FIT
    seed: int = 0
    input_elevation: float = 0.0


@dataclass
class SampleResult:
    """splats: the final reconstruction (object frame, or the frame of ``cameras`` given to
    :func:`sample`). views: the final generated views ((H, W, 4) RGBA at ``cameras``). cameras:
    the rig. reference_camera: the condition image's (the first anchor's when anchors are given).
    evaluations: generator network evaluations. steps: timesteps visited. seconds: per stage.
    rvc: one report per RVC application (timestep, per-anchor losses before/after, kept)."""

    splats: "Splats"
    views: list[np.ndarray]
    cameras: list[Camera]
    reference_camera: Camera
    evaluations: int
    steps: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    rvc: list[dict[str, Any]] = field(default_factory=list)


def _reference_view(image: "ConditionImage", cam: Camera) -> np.ndarray:
    from ..images import resize

    rgba = np.asarray(image.rgba, np.float32)
    if rgba.shape[:2] != (cam.height, cam.width):
        rgba = resize(rgba, cam.width, cam.height)
    return np.clip(rgba, 0, 1).astype(np.float32)


def render_views(splats: "Splats", cameras: Sequence[Camera], device: str = "auto") -> list[np.ndarray]:
    """(H, W, 4) straight RGBA renders of the splats."""
    from ..splat.fit import render_splats

    out = []
    for r in render_splats(splats, list(cameras), background=(1.0, 1.0, 1.0), device=device):
        a = r["alpha"][..., None]
        rgb = np.where(a > 1e-3, (r["rgb"] - (1.0 - a)) / np.maximum(a, 1e-3), 1.0)
        out.append(np.concatenate([np.clip(rgb, 0, 1), np.clip(a, 0, 1)], axis=2).astype(np.float32))
    return out


def fit_views(views: Sequence[np.ndarray], cameras: Sequence[Camera], reference: np.ndarray, reference_cam: Camera,
              *, iterations: int, init: "Splats | None" = None, config: SamplerConfig = SamplerConfig(),
              seed: int = 0, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None) -> "Splats":
    """Fit splats to RGBA ``views`` at ``cameras`` plus the condition view at its camera, weighted
    ``config.reference_weight``; warm-started from ``init`` (no densification then)."""
    return fit_anchored(views, cameras, [Anchor(reference, reference_cam)], iterations=iterations, init=init,
                        config=config, seed=seed, progress=progress, cancel=cancel)


def fit_anchored(views: Sequence[np.ndarray], cameras: Sequence[Camera], anchors: Sequence[Anchor], *,
                 iterations: int, init: "Splats | None" = None, config: SamplerConfig = SamplerConfig(),
                 seed: int = 0, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> "Splats":
    """Fit splats to RGBA ``views`` at ``cameras`` (weight 1 each) plus every anchor at its own
    camera (weight ``anchor.weight`` or ``config.reference_weight``); warm-started from ``init``
    (no densification then)."""
    from ..io.types import PosedSet
    from ..splat.fit import fit_splats

    imgs = [np.ascontiguousarray(v[..., :3]) for v in views] + [np.ascontiguousarray(a.rgba[..., :3]) for a in anchors]
    masks = [np.ascontiguousarray(v[..., 3]) for v in views] + [np.ascontiguousarray(a.rgba[..., 3]) for a in anchors]
    posed = PosedSet(list(cameras) + [a.camera for a in anchors],
                     [i.astype(np.float32) for i in imgs], [m.astype(np.float32) for m in masks])
    cfg = replace(config.fit, iterations=int(iterations), seed=int(seed),
                  densify=config.fit.densify and init is None)
    weights = [1.0] * len(views) + [float(config.reference_weight if a.weight is None else a.weight)
                                    for a in anchors]
    return fit_splats(posed, cfg, init=init, view_weights=weights, progress=progress, cancel=cancel).splats


def _renoise(gen: "MultiViewGenerator", x0_target, x0_pred, x_t, t: int, t_next: int, eta: float,
             g: "torch.Generator"):
    import torch

    eps = gen.schedule.to_eps(x0_pred, x_t, t)
    z = torch.randn(x_t.shape, generator=g).to(x_t.dtype).to(x_t.device)
    noise = math.sqrt(max(1.0 - eta * eta, 0.0)) * eps + eta * z
    return gen.schedule.add_noise(x0_target, noise, t_next)


class _Stage:
    """Progress of the sampler's own steps, with each fit's progress shown inside its step."""

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress, self.total, self.done = progress, max(total, 1), 0

    def sub(self, label: str) -> ProgressCallback | None:
        if self.progress is None:
            return None
        base, total, outer = self.done, self.total, self.progress

        def cb(ev: ProgressEvent) -> None:
            outer(ProgressEvent("sample", (base + ev.fraction) / total, f"{label}: {ev.message}", base, total))

        return cb

    def step(self, label: str) -> None:
        self.done += 1
        report(self.progress, "sample", self.done, self.total, label)


def sample(gen: "MultiViewGenerator", image: "ConditionImage", config: SamplerConfig = SamplerConfig(), *,
           cameras: Sequence[Camera] | None = None, anchors: Sequence[Anchor] | None = None,
           rvc: "RVCConfig | None" = None, progress: ProgressCallback | None = None,
           cancel: CancelToken | None = None) -> SampleResult:
    """Generate views of the object in ``image`` and reconstruct it (see the module docstring).

    cameras: the generator's rig in the frame to reconstruct in (default ``gen.cameras()``, the
    object frame); one per generated view. anchors: the fits' hard constraints (default: the
    condition image at ``gen.reference_camera()``). rvc: rendering-aware velocity compensation
    against the anchors (method "aware" only; None: off)."""
    import torch

    cfg = config
    if cfg.method not in METHODS:
        raise InputError(f"unknown sampling method {cfg.method!r}", f"use one of {', '.join(METHODS)}")
    if cfg.steps < 1 or cfg.steps > 1000:
        raise InputError(f"{cfg.steps} sampling steps", "use between 1 and 1000 steps (4 is the default)")
    if not 0.0 <= cfg.eta <= 1.0:
        raise InputError(f"eta {cfg.eta} is outside [0, 1]", "use 1 (fresh noise) or 0 (DDIM)")
    sched = gen.schedule
    cams = gen.cameras() if cameras is None else list(cameras)
    if cameras is not None and len(cams) != len(gen.cameras()):
        raise InputError(f"{len(cams)} rig cameras for a generator of {len(gen.cameras())} views",
                         "give one camera per generated view")
    if anchors is None:
        if not -89.0 <= float(cfg.input_elevation) <= 89.0:
            raise InputError(f"input elevation {cfg.input_elevation} degrees is outside [-89, 89]",
                             "give the photo's camera elevation above the object in degrees (0: level)")
        ref_cam = gen.reference_camera(float(cfg.input_elevation)) if cfg.input_elevation else gen.reference_camera()
        anchors = [Anchor(_reference_view(image, ref_cam), ref_cam, name="condition")]
    else:
        anchors = list(anchors)
        if not anchors:
            raise InputError("no anchor views", "give at least one photo with its camera")
        ref_cam = anchors[0].camera
    if rvc is not None and cfg.method != "aware":
        raise InputError(f"RVC is implemented for the 'aware' sampler, not {cfg.method!r}",
                         "use method 'aware' or turn RVC off")
    g = torch.Generator().manual_seed(int(cfg.seed) + 1)
    seconds: dict[str, float] = {"generate": 0.0, "fit": 0.0, "render": 0.0}
    ts = sched.timesteps(cfg.steps)
    T = sched.num_train_timesteps
    rvc_steps = [t for t in ts if rvc is not None and rvc.active(t, T)]
    n_fits = {"oneshot": 1, "aware": cfg.steps, "im3d": 1 + cfg.rounds}[cfg.method]
    n_gen = cfg.steps + (cfg.rounds * cfg.im3d_steps if cfg.method == "im3d" else 0)
    final_fit = bool(rvc_steps) and rvc_steps[-1] == ts[-1] and rvc is not None and rvc.final_fit
    stage = _Stage(progress, n_gen + n_fits + len(rvc_steps) + int(final_fit))
    visited: list[int] = []
    reports: list[dict[str, Any]] = []

    def denoise(x, t):
        check(cancel)
        t0 = time.perf_counter()
        with torch.no_grad():
            x0 = gen.denoise(x, t, cond)
        seconds["generate"] += time.perf_counter() - t0
        visited.append(int(t))
        stage.step(f"denoise t={t}")
        return x0

    def fit(views, init, iterations, label):
        t0 = time.perf_counter()
        out = fit_anchored(views, cams, anchors, iterations=iterations, init=init, config=cfg, seed=cfg.seed,
                           progress=stage.sub(label), cancel=cancel)
        seconds["fit"] += time.perf_counter() - t0
        stage.step(label)
        return out

    def renders_of(splats):
        t0 = time.perf_counter()
        out = render_views(splats, cams, device=cfg.fit.device)
        seconds["render"] += time.perf_counter() - t0
        return out

    def plain(x, steps):
        x0 = None
        for k, t in enumerate(steps):
            x0 = denoise(x, t)
            if k + 1 < len(steps):
                x = _renoise(gen, x0, x0, x, t, steps[k + 1], cfg.eta, g)
        return x0

    evals0 = int(gen.evaluations)
    t_start = time.perf_counter()
    cond = gen.condition(image, seed=int(cfg.seed))
    seconds["condition"] = time.perf_counter() - t_start
    x = gen.initial_noise(cfg.seed)
    splats = None
    if cfg.method == "aware":
        views: list[np.ndarray] = []
        for k, t in enumerate(ts):
            x0 = denoise(x, t)
            views = gen.decode(x0)
            iters = cfg.fit_iterations if splats is None else cfg.warm_iterations
            splats = fit(views, splats, iters, f"step {k + 1}/{len(ts)} fit")
            delta = None
            if t in rvc_steps:
                from .rvc import compensate

                t0 = time.perf_counter()
                before = renders_of(splats)
                comp = compensate(splats, anchors, cams, rvc, fit=cfg.fit, seed=cfg.seed + k,
                                  progress=stage.sub(f"step {k + 1}/{len(ts)} rvc"), cancel=cancel)
                # the change of the predicted clean sample: x0' = x0 + E(P(R*)) - E(P(R))
                delta = gen.encode(renders_of(comp.splats)) - gen.encode(before)
                splats = comp.splats
                reports.append({"t": int(t), **comp.report()})
                seconds["rvc"] = seconds.get("rvc", 0.0) + time.perf_counter() - t0
                stage.step(f"step {k + 1}/{len(ts)} rvc")
            if k + 1 < len(ts):
                x = _renoise(gen, gen.encode(renders_of(splats)), x0, x, t, ts[k + 1], cfg.eta, g)
            elif delta is not None:
                if rvc is not None and rvc.final_fit:  # the generator's views and the photos, from R*
                    splats = fit(views, splats, cfg.warm_iterations, f"step {k + 1}/{len(ts)} final fit")
                views = gen.decode(x0 + delta.to(x0.dtype).to(x0.device))
    else:
        x0 = plain(x, ts)
        views = gen.decode(x0)
        budget = cfg.fit_iterations + (cfg.steps - 1) * cfg.warm_iterations
        splats = fit(views, None, cfg.fit_iterations if cfg.method == "im3d" else budget, "fit")
        if cfg.method == "im3d":
            T = sched.num_train_timesteps
            t_s = int(round(min(max(cfg.im3d_strength, 0.0), 1.0) * (T - 1)))
            sub = sorted({int(round(t_s * (1.0 - i / cfg.im3d_steps))) for i in range(cfg.im3d_steps)}, reverse=True)
            for r in range(cfg.rounds):
                z = torch.randn(x.shape, generator=g).to(x.dtype)
                x = sched.add_noise(gen.encode(renders_of(splats)), z, sub[0])
                views = gen.decode(plain(x, sub))
                splats = fit(views, splats, 2 * cfg.warm_iterations, f"round {r + 1}/{cfg.rounds} fit")
    assert splats is not None
    seconds["total"] = time.perf_counter() - t_start
    evaluations = int(gen.evaluations) - evals0
    log.info("%s sampling: %d evaluations, %s", cfg.method, evaluations,
             ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return SampleResult(splats, views, cams, ref_cam, evaluations, visited, seconds, reports)
