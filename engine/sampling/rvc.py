"""Rendering-aware velocity compensation (RVC, after ReconViaGen) for multi-view samplers.

The paper corrects the predicted velocity of a 3D latent with the gradient of a rendering loss at
the input cameras: ``v' = v + lambda dv``, ``dv = -d L / d x0``, for ``t < 0.5``, dropping input
views whose loss exceeds 0.8. Our sample is a set of multi-view images (or their latents), not a
3D latent, so the loss cannot be differentiated with respect to it directly: the reconstruction
between them (a splat fit) is an optimisation. What is implemented (docs/completion.md has the
derivation):

1. Per anchor (input photo) ``i``: ``L_i = w_ssim (1 - SSIM) + w_l1 L1`` between the splats
   ``R`` fitted in the sampler's loop, rendered at the photo's camera on white, and the photo on
   white.
   Views with ``L_i > max_loss`` (0.8) are dropped as unreliable (a wrong pose, another object).
2. The corrected clean prediction is a *proximal* gradient step in the space of the model's
   views, solved through the splats:

       R* = argmin_theta  lambda * mean_{i kept} L_i(theta) + 1/2 mean_{j in H} || P_j(theta) - P_j(R) ||^2

   with ``P_j`` the render at camera ``j`` (on white, the squared norm a per-pixel mean) and ``H``
   the cameras that hold the model: the rig's plus ``prox_views`` (16) cameras spread over a
   sphere around the point the rig looks at (:func:`shell_cameras`). For a model that could
   change each view freely, the solution is ``x0* = x0 - lambda grad_x0 L`` to first order: the
   paper's ``x0 + lambda dv`` with the gradient in per-pixel units; the proximal form is the one
   that stays stable for any lambda. Holding the model at the rig alone left it free between the
   rig's six views, and the optimiser used that freedom: Gaussians off the surface, seen by no
   rig view, grew opaque to fit the photos (floaters at held-out cameras; docs/completion.md).
   The squared norm weighs the high band of each holding view (the render
   minus its Gaussian blur of std ``detail_sigma`` = 1.5 px) ``1 + detail_weight`` (21) times
   the low band: the photos are sharp but the model is not registered to the pixel, so detail
   finer than that, pasted from the photos, lands slightly off in every other view; the coarse
   appearance is corrected freely. It is solved by ``steps`` Adam steps (the fit's learning
   rates) from ``R``, each step one kept photo and ``prox_batch`` holding views, cycled in
   random order.
3. The sampler turns the change into its own space through the generator's encode:
   ``x0' = x0 + E(P(R*)) - E(P(R))`` (engine/sampling/aware.py), and ``R*`` is the warm start of
   the next step's fit. After a correction at the last step there is no next step: the final
   model is then one more warm fit of that step's generated views and the photos from ``R*``
   (``final_fit``), so every correction reaches the result through a fit with the generator's
   views.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from ..progress import CancelToken, ProgressCallback, check, report

if TYPE_CHECKING:  # pragma: no cover
    from ..splat.fit import FitConfig
    from ..splat.model import Splats
    from .anchors import Anchor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RVCConfig:
    """Settings of RVC.

    strength: lambda, the proximal step size in per-pixel units (default 0.1, the paper's).
    t_max: active while ``t < t_max * T`` (default 0.5: the second half of the schedule).
    max_loss: anchors whose loss exceeds this are dropped as unreliable (default 0.8).
    steps: Adam steps of the proximal problem per application (default 100).
    ssim_weight, l1_weight: weights of (1 - SSIM) and L1 in the per-view loss (default 1, 1).
    lr_means: learning rate of the Gaussians' means (x scene scale) in the proximal problem; None
        (default): the fit's initial ``lr_means`` (lower rates and the appearance alone gained
        less at the inputs and lost more held-out: docs/completion.md, "RVC's defaults"). The
        other parameters use the fit's rates.
    prox_views: cameras on a sphere around the object, besides the rig's, at which the proximal
        term holds the model to its renders before the correction (default 16; 0: the rig only,
        which let floaters between the rig's views grow: module docstring).
    prox_batch: holding views per Adam step (default 2).
    final_fit: when the last step of the schedule applies RVC, the final model is one more warm
        fit (the sampler's ``warm_iterations``) of that step's generated views and the anchors,
        started from ``R*`` (default True): as at every earlier application, where ``R*`` is the
        warm start of the next step's fit; False: ``R*`` itself is the final model.
    detail_weight, detail_sigma: the proximal term holds the high band of the holding views
        (the render minus its Gaussian blur of std ``detail_sigma`` px) with ``1 + detail_weight``
        times the weight of the low band (default 20, 1.5 px): detail finer than the model's
        registration is held, the coarse appearance corrected; 0: one weight for all bands
        (docs/completion.md, "RVC's defaults", compares 20 with 100).
    """

    strength: float = 0.1
    t_max: float = 0.5
    max_loss: float = 0.8
    steps: int = 100
    ssim_weight: float = 1.0
    l1_weight: float = 1.0
    lr_means: float | None = None
    prox_views: int = 16
    prox_batch: int = 2
    final_fit: bool = True
    detail_weight: float = 20.0
    detail_sigma: float = 1.5

    def __post_init__(self) -> None:
        if not (self.strength >= 0 and np.isfinite(self.strength)):
            raise InputError(f"RVC strength {self.strength} is not >= 0", "use a strength such as 0.1")
        if not 0.0 <= self.t_max <= 1.0:
            raise InputError(f"RVC t_max {self.t_max} is outside [0, 1]", "use a fraction of the schedule, e.g. 0.5")
        if self.steps < 0:
            raise InputError(f"RVC steps {self.steps} < 0", "use a number of steps such as 100")
        if not (self.detail_weight >= 0 and self.detail_sigma > 0):
            raise InputError(f"RVC detail_weight {self.detail_weight} / detail_sigma {self.detail_sigma}",
                             "use detail_weight >= 0 (e.g. 20) and detail_sigma > 0 (e.g. 1.5)")
        if self.prox_views < 0 or self.prox_batch < 1:
            raise InputError(f"RVC prox_views {self.prox_views} / prox_batch {self.prox_batch}",
                             "use prox_views >= 0 (e.g. 16) and prox_batch >= 1 (e.g. 2)")

    def active(self, t: int, num_train_timesteps: int) -> bool:
        return self.strength > 0 and self.steps > 0 and t < self.t_max * num_train_timesteps


@dataclass
class RVCResult:
    """splats: the corrected model ``R*``. names: the anchors'. losses_before/after: ``L_i`` of
    every anchor before and after the correction. kept: whether each anchor took part."""

    splats: "Splats"
    names: list[str]
    losses_before: list[float]
    losses_after: list[float]
    kept: list[bool] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {"names": list(self.names), "losses_before": [round(x, 4) for x in self.losses_before],
                "losses_after": [round(x, 4) for x in self.losses_after], "kept": list(self.kept)}


def _on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4]
    return (rgba[..., :3] * a + (1.0 - a)).astype(np.float32)


def view_loss(pred, target, config: RVCConfig = RVCConfig()):
    """Differentiable ``L = w_ssim (1 - SSIM) + w_l1 L1`` of (H, W, 3) tensors on white."""
    from pytorch_msssim import ssim

    h, w = pred.shape[:2]
    win = min(11, (min(h, w) // 2) * 2 - 1)
    s = ssim(pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], data_range=1.0, size_average=True,
             win_size=max(win, 3))
    return config.ssim_weight * (1.0 - s) + config.l1_weight * (pred - target).abs().mean()


class _Renderer:
    def __init__(self, device, backend: str) -> None:
        self.device, self.backend = device, backend

    def __call__(self, params: dict, cam: Camera, sh_degree: int):
        import torch

        from ..splat.rasterize import rasterize_params

        vm = torch.tensor(cam.world_to_camera, dtype=torch.float32, device=self.device)[None]
        K = torch.tensor(cam.K, dtype=torch.float32, device=self.device)[None]
        bg = torch.ones(1, 3, device=self.device)
        r, _, _ = rasterize_params(params, vm, K, cam.width, cam.height, sh_degree=sh_degree, backgrounds=bg,
                                   backend=self.backend)
        return r[0, ..., :3].clamp(0, 1)


def _gaussian_blur(sigma: float):
    """A separable Gaussian blur of std ``sigma`` px (radius 3 sigma, edges replicated) of (H, W, 3)."""
    from ..images import gaussian_blur

    r = max(int(np.ceil(3.0 * sigma)), 1)
    return lambda img: gaussian_blur(img.permute(2, 0, 1)[None], sigma, radius=r, padding="replicate")[0].permute(1, 2, 0)


def shell_cameras(rig: Sequence[Camera], n: int) -> list[Camera]:
    """``n`` cameras looking at the point ``O`` the rig looks at, from directions spread evenly
    over the sphere (a Fibonacci lattice about the rig's mean up), at the rig's mean distance,
    with the first rig camera's intrinsics. ``O`` is the least-squares point closest to the rig's
    optical axes, ``sum_j (I - d_j d_j^T) O = sum_j (I - d_j d_j^T) C_j``
    (:func:`viewforge.engine.splat.model.look_target`)."""
    from ..cameras import look_at
    from ..splat.model import look_target

    if n <= 0:
        return []
    if len(rig) < 2:
        raise InputError("the RVC holding cameras need a rig of at least 2 cameras", "give the generator's rig")
    o = look_target(list(rig))
    ups = [-c.R[1] for c in rig]  # image up in the world
    dist = float(np.mean([np.linalg.norm(c.center - o) for c in rig]))
    up = np.mean(ups, axis=0)
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-6 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    c0, golden = rig[0], np.pi * (3.0 - np.sqrt(5.0))
    out = []
    for k in range(n):
        z = 1.0 - 2.0 * (k + 0.5) / n
        r = np.sqrt(max(1.0 - z * z, 0.0))
        d = r * np.cos(golden * k) * e1 + r * np.sin(golden * k) * e2 + z * up
        out.append(Camera(c0.fx, c0.fy, c0.cx, c0.cy, c0.width, c0.height, look_at(o + dist * d, o, up),
                          name=f"rvc_hold{k}"))
    return out


def anchor_losses(splats: "Splats", anchors: Sequence["Anchor"], config: RVCConfig = RVCConfig(), *,
                  device: str = "auto", backend: str = "auto") -> list[float]:
    """``L_i`` of the splats at every anchor (no gradient)."""
    import torch

    from ..device import resolve_device

    dev = resolve_device(device)
    render = _Renderer(dev, backend)
    params = {k: v.to(dev) for k, v in splats.as_dict().items()}
    out = []
    with torch.no_grad():
        for a in anchors:
            tgt = torch.from_numpy(_on_white(np.asarray(a.rgba, np.float32))).to(dev)
            out.append(float(view_loss(render(params, a.camera, splats.sh_degree), tgt, config)))
    return out


def compensate(splats: "Splats", anchors: Sequence["Anchor"], rig: Sequence[Camera], config: RVCConfig = RVCConfig(),
               *, fit: "FitConfig | None" = None, seed: int = 0, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> RVCResult:
    """One RVC application: the proximal correction ``R*`` of the module docstring."""
    import torch

    from ..device import resolve_device
    from ..splat.fit import FitConfig
    from ..splat.model import Splats, scene_scale

    fcfg = fit if fit is not None else FitConfig()
    if not anchors:
        raise InputError("RVC needs at least one input view", "give the photos as anchors")
    dev = resolve_device(fcfg.device)
    render = _Renderer(dev, fcfg.backend)
    names = [a.name or f"anchor{i}" for i, a in enumerate(anchors)]
    before = anchor_losses(splats, anchors, config, device=fcfg.device, backend=fcfg.backend)
    kept = [bool(np.isfinite(x) and x <= config.max_loss) for x in before]
    for n, x, k in zip(names, before, kept):
        if not k:
            log.warning("RVC: view %s dropped (loss %.3f > %.2f: unreliable pose or another object)", n, x,
                        config.max_loss)
    ids = [i for i, k in enumerate(kept) if k]
    if not ids or not config.steps or config.strength <= 0:
        return RVCResult(splats, names, before, list(before), kept)
    deg = splats.sh_degree
    hold = list(rig) + shell_cameras(rig, config.prox_views)  # where the model is held (docstring)
    with torch.no_grad():
        p0 = {k: v.to(dev) for k, v in splats.as_dict().items()}
        hold_targets = [render(p0, c, deg).detach() for c in hold]
    targets = {i: torch.from_numpy(_on_white(np.asarray(anchors[i].rgba, np.float32))).to(dev) for i in ids}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in p0.items()}
    scale = scene_scale(list(rig) + [a.camera for a in anchors])
    lr_means = config.lr_means if config.lr_means is not None else fcfg.lr_means
    lrs = {"means": lr_means * scale, "scales": fcfg.lr_scales, "quats": fcfg.lr_quats,
           "opacities": fcfg.lr_opacities, "sh0": fcfg.lr_sh0, "shN": fcfg.lr_shN}
    opts = [torch.optim.Adam([params[k]], lr=lrs[k], eps=1e-15) for k in params]
    rng = np.random.default_rng(seed)
    order_i: list[int] = []
    order_j: list[int] = []
    lam = float(config.strength)
    blur = _gaussian_blur(config.detail_sigma)
    for step in range(config.steps):
        check(cancel)
        if not order_i:
            order_i = list(rng.permutation(ids))
        i = order_i.pop()
        data = view_loss(render(params, anchors[i].camera, deg), targets[i], config)
        prox = 0.0
        for _ in range(config.prox_batch):
            if not order_j:
                order_j = list(rng.permutation(len(hold)))
            j = order_j.pop()
            d = render(params, hold[j], deg) - hold_targets[j]
            term = (d ** 2).mean()
            if config.detail_weight > 0:
                term = term + config.detail_weight * ((d - blur(d)) ** 2).mean()
            prox = prox + 0.5 * term / config.prox_batch
        loss = lam * data + prox
        if not torch.isfinite(loss):
            log.warning("RVC: non-finite loss at step %d; keeping the model as it was", step)
            return RVCResult(splats, names, before, list(before), kept)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        report(progress, "rvc", step + 1, config.steps, f"step {step + 1}/{config.steps}")
    out = Splats.from_dict({k: v.detach() for k, v in params.items()})
    after = anchor_losses(out, anchors, config, device=fcfg.device, backend=fcfg.backend)
    log.info("RVC: input-view loss %s -> %s (kept %d/%d)", np.round(before, 3).tolist(), np.round(after, 3).tolist(),
             len(ids), len(anchors))
    return RVCResult(out, names, before, after, kept)
