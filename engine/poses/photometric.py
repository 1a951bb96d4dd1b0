"""Photometric pose refinement: align each camera to a fixed splat model by render-and-compare.

For camera i with world-to-camera W_i, optimise a 6-vector delta (axis-angle, translation) so
that the model rendered at ``exp(delta) @ W_i`` matches photo i: the mean squared error on
images blurred with a shrinking Gaussian (coarse to fine, which widens the basin of
convergence) plus the squared alpha/mask error when masks exist. Images are rendered with their
longer side at most ``max_size`` (intrinsics scaled) for speed. Alternated with model fitting,
this converges like bundle adjustment by alternation: the model is the consensus of all views,
each view is pulled onto it.

Each camera's loss before and after the alignment is returned (lower is better).

The fit loop (engine/splat/fit.py) runs these mechanisms through two
:class:`~viewforge.engine.splat.fit.CameraRefiner` s: :class:`JointRefiner` ("photometric":
per-camera corrections learnt with the model plus alignment rounds) and
:class:`FinalAlignRefiner` ("features+photometric": one alignment to the finished model).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..cameras import Camera, orthonormal_pose
from ..device import resolve_device
from ..images import gaussian_blur
from ..io.types import PosedSet
from ..progress import CancelToken, ProgressCallback, check, report
from ..splat.fit import CameraRefiner
from ..splat.model import Splats
from ..splat.se3 import se3_exp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignConfig:
    """steps: L-BFGS iterations per camera (split over the blur stages). blur_px: Gaussian blur
    sigmas in working pixels, one stage each, coarse to fine. max_size: images are downscaled so
    their longer side is at most this (intrinsics scaled). mask_weight: weight of the alpha/mask
    term (sets with masks).

    L-BFGS, not Adam: for an object small in the field of view, a rotation about an axis across
    the view is nearly the same image change as a sideways translation; the loss valley is long
    and thin, and a quasi-Newton method follows it where Adam stalls (docs/reconstruction.md has
    the comparison)."""

    steps: int = 100
    blur_px: tuple[float, ...] = (1.0, 0.0)
    max_size: int = 128
    mask_weight: float = 1.0


@dataclass
class AlignResult:
    cameras: list[Camera]
    loss_before: list[float]
    loss_after: list[float]


def align_cameras(
    splats,
    posed: PosedSet,
    config: AlignConfig = AlignConfig(),
    *,
    device=None,
    backend: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> AlignResult:
    """Refine every camera of ``posed`` against the fixed ``splats`` (see module docstring).
    device: the job's torch.device (None: engine/device.py's choice for "auto")."""
    import torch

    from ..splat.rasterize import rasterize

    dev = device if device is not None else resolve_device("auto")
    p = {k: v.detach().to(dev) for k, v in splats.as_dict().items()}
    colors = torch.cat([p["sh0"], p["shN"]], dim=1)
    scales, opac = torch.exp(p["scales"]), torch.sigmoid(p["opacities"])
    out_cams, before, after = [], [], []
    n_stage = max(len(config.blur_px), 1)
    for i, cam in enumerate(posed.cameras):
        check(cancel)
        factor = min(1.0, config.max_size / max(cam.width, cam.height))
        w = max(8, int(round(cam.width * factor)))
        h = max(8, int(round(cam.height * factor)))
        small = cam.resized(w, h)
        img = torch.from_numpy(np.ascontiguousarray(posed.images[i])).to(dev).permute(2, 0, 1)[None]
        img = torch.nn.functional.interpolate(img, size=(h, w), mode="area")
        mask = None
        if posed.masks is not None:
            mask = torch.from_numpy(np.ascontiguousarray(posed.masks[i])).to(dev)[None, None]
            mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="area")
        target = img if mask is None else img * mask  # composited on black
        w2c = torch.tensor(cam.world_to_camera, dtype=torch.float32, device=dev)[None]
        K = torch.tensor(small.K, dtype=torch.float32, device=dev)[None]
        delta = torch.nn.Parameter(torch.zeros(1, 6, device=dev))
        bg = torch.zeros(1, 3, device=dev)
        stage_losses: list[float] = []
        for sigma in config.blur_px or (0.0,):
            tgt = gaussian_blur(target, sigma)
            tgt_mask = None if mask is None else gaussian_blur(mask, sigma)
            opt = torch.optim.LBFGS([delta], lr=1.0, max_iter=config.steps // n_stage + 1, history_size=10,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

            def closure():
                opt.zero_grad(set_to_none=True)
                render, alpha, _ = rasterize(
                    p["means"], p["quats"], scales, opac, colors, se3_exp(delta) @ w2c, K, w, h,
                    sh_degree=splats.sh_degree, backgrounds=bg, backend=backend,
                )
                loss = ((gaussian_blur(render.permute(0, 3, 1, 2), sigma) - tgt) ** 2).mean()
                if tgt_mask is not None and config.mask_weight > 0:
                    blurred = gaussian_blur(alpha.permute(0, 3, 1, 2), sigma)
                    loss = loss + config.mask_weight * ((blurred - tgt_mask) ** 2).mean()
                loss.backward()
                stage_losses.append(float(loss.detach()))
                return loss

            opt.step(closure)
        first = stage_losses[0] if stage_losses else 0.0
        last = stage_losses[-1] if stage_losses else 0.0
        with torch.no_grad():
            m = (se3_exp(delta.double()) @ w2c.double())[0].cpu().numpy()
        out_cams.append(cam.with_pose(orthonormal_pose(m)))
        before.append(first)
        after.append(last)
        report(progress, "poses", i + 1, len(posed), f"camera {i + 1}/{len(posed)}")
    return AlignResult(out_cams, before, after)


def _align_round(params, posed: PosedSet, w2c, steps: int, device, backend: str, progress, cancel):
    """Align every camera (at ``w2c``, (C, 4, 4)) to the current model ``params`` and return the
    new (C, 4, 4) world-to-camera tensor."""
    import torch

    with torch.no_grad():
        cams = [c.with_pose(orthonormal_pose(m)) for c, m in zip(posed.cameras, w2c.cpu().double().numpy())]
    current = Splats.from_dict(params)
    res = align_cameras(
        current, PosedSet(cams, posed.images, posed.masks, posed.names), AlignConfig(steps=steps),
        device=device, backend=backend, progress=progress, cancel=cancel,
    )
    log.info("pose alignment: mean loss %.4f -> %.4f", float(np.mean(res.loss_before)), float(np.mean(res.loss_after)))
    return torch.tensor(np.stack([c.world_to_camera for c in res.cameras]), dtype=torch.float32, device=device)


class JointRefiner(CameraRefiner):
    """pose_method "photometric": per camera a 6-vector ``delta`` (axis-angle, translation), the
    view matrix ``exp(delta) @ w2c``, one Adam per camera (a camera's moments only move on its
    own steps) stepped from ``pose_start``; at the steps ``pose_rounds`` x iterations the
    corrections are baked into the poses (restarting at zero) and every camera is aligned to the
    current model (:func:`align_cameras`)."""

    def __init__(self, posed: PosedSet, cfg, device, progress=None, cancel=None):
        self.posed, self.cfg, self.device = posed, cfg, device
        self.progress, self.cancel = progress, cancel
        self.align_steps = {int(f * cfg.iterations) for f in cfg.pose_rounds}
        self.seconds: dict[str, float] = {}
        self.delta: list = []
        self.opts: list = []

    def start(self, num_cameras: int, device) -> None:
        import torch

        self.delta = [torch.nn.Parameter(torch.zeros(1, 6, device=device)) for _ in range(num_cameras)]
        self.opts = [torch.optim.Adam([d], lr=self.cfg.pose_lr) for d in self.delta]

    def before_step(self, step: int, params, w2c):
        import torch

        if step not in self.align_steps:
            return w2c
        self.align_steps.discard(step)
        with torch.no_grad():
            w2c = torch.cat([se3_exp(d) @ w2c[i : i + 1] for i, d in enumerate(self.delta)])
            for d in self.delta:
                d.zero_()
        return _align_round(params, self.posed, w2c, self.cfg.pose_align_steps, self.device, self.cfg.backend,
                            self.progress, self.cancel)

    def viewmat(self, i: int, w2c_i):
        return se3_exp(self.delta[i]) @ w2c_i

    def after_step(self, step: int, i: int) -> None:
        if step >= self.cfg.pose_start:
            self.opts[i].step()
        self.opts[i].zero_grad(set_to_none=True)

    def finish(self, params, w2c):
        import torch

        with torch.no_grad():
            return (se3_exp(torch.cat(self.delta)) @ w2c).cpu().double().numpy()


class FinalAlignRefiner(CameraRefiner):
    """pose_method "features+photometric": the fit keeps the cameras it is given; at the end each
    camera is aligned once to the finished model (:func:`align_cameras`, stage "poses_align")."""

    def __init__(self, posed: PosedSet, cfg, device, progress=None, cancel=None):
        self.posed, self.cfg, self.device = posed, cfg, device
        self.progress, self.cancel = progress, cancel
        self.seconds: dict[str, float] = {}

    def finish(self, params, w2c):
        t = time.perf_counter()
        out = _align_round(params, self.posed, w2c, self.cfg.pose_align_steps, self.device, self.cfg.backend,
                           self.progress, self.cancel)
        out = out.cpu().double().numpy()
        self.seconds["poses_align"] = time.perf_counter() - t
        return out
