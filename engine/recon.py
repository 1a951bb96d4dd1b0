"""Reconstruction job: posed set -> fitted splats (+ held-out metrics), as ``viewforge
reconstruct`` runs it. Mesh extraction (GLB/.blend output) plugs in after the fit."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputError
from .io.atomic import atomic_file, check_output_path
from .io.types import PosedSet
from .progress import CancelToken, ProgressCallback

log = logging.getLogger(__name__)

SPLAT_SUFFIXES = (".ply",)


@dataclass(frozen=True)
class ReconConfig:
    """views: training views (None = every frame not held out). holdout: held-out views for
    metrics. resolution: longer image side in pixels (None = as stored). iterations, device,
    seed: see FitConfig. pose_refine: refine the cameras jointly. faces: face budget of the mesh
    (mesh outputs only). texture_size: side of the baked base-colour texture in pixels."""

    views: int | None = None
    holdout: int = 0
    resolution: int | None = 200
    iterations: int = 3000
    device: str = "auto"
    seed: int = 0
    pose_refine: bool = False
    faces: int = 50000
    texture_size: int = 2048


@dataclass
class ReconResult:
    output: Path
    metrics: dict[str, Any]
    train_names: list[str] = field(default_factory=list)
    heldout_names: list[str] = field(default_factory=list)


def split_views(n_frames: int, views: int | None, holdout: int) -> tuple[list[int], list[int]]:
    """Deterministic split: ``holdout`` frames evenly spaced over all frames are held out (offset
    half a step, so frame 0 trains), then ``views`` training frames evenly spaced over the rest."""
    if holdout < 0 or (views is not None and views < 1):
        raise InputError("--views must be >= 1 and --holdout >= 0", "give a positive number of views")
    if holdout >= n_frames:
        raise InputError(
            f"--holdout {holdout} leaves no training view of {n_frames} frames", "lower --holdout"
        )
    held = sorted({int(i) for i in ((np.arange(holdout) + 0.5) * n_frames / max(holdout, 1)).astype(int)}) if holdout else []
    rest = [i for i in range(n_frames) if i not in held]
    if views is None or views >= len(rest):
        if views is not None and views > len(rest):
            raise InputError(
                f"--views {views} with --holdout {holdout} needs {views + holdout} frames, the set has {n_frames}",
                "lower --views or --holdout",
            )
        return rest, held
    pick = np.linspace(0, len(rest) - 1, views).round().astype(int)
    return [rest[i] for i in pick], held


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where the OS does not say: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _subset(posed: PosedSet, ids: list[int]) -> PosedSet:
    return PosedSet(
        [posed.cameras[i] for i in ids],
        [posed.images[i] for i in ids],
        None if posed.masks is None else [posed.masks[i] for i in ids],
        [posed.names[i] for i in ids],
        posed.meta,
    )


def evaluate_views(splats, posed: PosedSet | None, device: str = "auto") -> dict[str, float | None]:
    """Mean PSNR/SSIM of the splats rendered on white vs the images composited on white."""
    from .metrics import composite_on_white, lpips, psnr, ssim
    from .splat.fit import render_splats

    if posed is None or len(posed) == 0:
        return {"psnr": None, "ssim": None, "lpips": None}
    outs = render_splats(splats, posed.cameras, background=(1.0, 1.0, 1.0), device=device)
    masks = posed.masks if posed.masks is not None else [None] * len(posed)
    gts = [composite_on_white(img, m) for img, m in zip(posed.images, masks)]
    return {
        "psnr": float(np.mean([psnr(o["rgb"], g) for o, g in zip(outs, gts)])),
        "ssim": float(np.mean([ssim(o["rgb"], g) for o, g in zip(outs, gts)])),
        "lpips": lpips(outs[0]["rgb"], gts[0]),
    }


def reconstruct(
    transforms: str | os.PathLike,
    output: str | os.PathLike,
    config: ReconConfig = ReconConfig(),
    *,
    metrics_path: str | os.PathLike | None = None,
    fit_overrides: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ReconResult:
    """Load the posed set, fit splats to the training views, write ``output`` (.ply splats) and
    optionally the metrics JSON of DESIGN.md. Nothing is written at either path on failure."""
    from .io.posed import load_posed_set
    from .splat.fit import FitConfig, fit_splats
    from .splat.model import write_splat_ply

    out = check_output_path(output)
    if out.suffix.lower() not in SPLAT_SUFFIXES:
        raise OutputError(
            f"output {out.name}: '{out.suffix}' output is not available yet (meshes come with the mesh stage)",
            "write Gaussian splats with an .ply output path",
        )
    mpath = check_output_path(metrics_path, (".json",)) if metrics_path is not None else None
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    posed = load_posed_set(transforms, resolution=config.resolution, progress=progress, cancel=cancel)
    seconds["load"] = time.perf_counter() - t
    train_ids, held_ids = split_views(len(posed), config.views, config.holdout)
    train = _subset(posed, train_ids)
    held = _subset(posed, held_ids) if held_ids else None
    fit_cfg = FitConfig(
        iterations=config.iterations, device=config.device, seed=config.seed, pose_refine=config.pose_refine
    )
    if fit_overrides:
        fit_cfg = replace(fit_cfg, **fit_overrides)
    result = fit_splats(train, fit_cfg, progress=progress, cancel=cancel)
    seconds.update({f"fit_{k}" if k != "fit" else "fit": v for k, v in result.seconds.items()})
    t = time.perf_counter()
    scores = evaluate_views(result.splats, held, config.device)
    seconds["eval"] = time.perf_counter() - t
    t = time.perf_counter()
    write_splat_ply(result.splats, out)
    seconds["write"] = time.perf_counter() - t
    metrics = {
        **scores,
        "chamfer": None,
        "fscore": None,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "peak_rss_mb": None if (rss := peak_rss_mb()) is None else round(rss, 1),
        "num_gaussians": result.splats.num,
        "num_faces": None,
        "views": len(train),
        "holdout": len(held_ids),
        "iterations": result.iterations,
        "resolution": config.resolution,
    }
    if mpath is not None:
        try:
            with atomic_file(mpath) as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    return ReconResult(out, metrics, [posed.names[i] for i in train_ids], [posed.names[i] for i in held_ids])
