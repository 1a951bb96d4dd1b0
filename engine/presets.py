"""Quality presets and the iteration rules: the one place where "draft / standard / high" and a
step budget become numbers.

:data:`QUALITY_PRESETS` (reconstruct) and :data:`GENERATE_PRESETS` (generate) are what the Blender
panel's Quality menu, ``viewforge batch --quality`` and :class:`~viewforge.engine.jobs.JobSpec`
options mean; :func:`~viewforge.engine.jobs.recon_config` and
:func:`~viewforge.engine.jobs.generate_config` apply them to the config dataclasses. The CLI's
``reconstruct`` and ``generate`` commands take no preset: their defaults are the dataclasses'
defaults (:class:`~viewforge.engine.recon.ReconConfig`,
:class:`~viewforge.engine.generate.GenerateConfig`), so ``viewforge reconstruct`` fits at 200 px
where the "standard" preset fits at 256 px (docs/reconstruction.md, "Quality presets").

Two rules turn one step count into the generator's sampler fits:

- :func:`warm_iterations`: generate's ``iterations`` is the first fit's steps; every later (warm)
  fit gets 30 % of it (the Blender Steps override, ``viewforge generate --iterations``, batch).
- :func:`completion_iterations`: reconstruct's ``iterations`` is the whole budget; completing a
  few photos splits it into a first fit of a third and warm fits of a tenth (3000 -> 1000 + 300,
  the generate defaults).

This module imports nothing from the rest of the engine, so anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A warm fit's share of the first fit (generate's sampler), as ``numerator / denominator``.
WARM_SHARE = (3, 10)


def warm_iterations(first: int) -> int:
    """Steps of each warm (later) fit of the sampler when its first fit has ``first`` steps:
    30 % of it, at least 1."""
    num, den = WARM_SHARE
    return max(1, int(first) * num // den)


def completion_iterations(total: int) -> tuple[int, int]:
    """(first fit, warm fits) of the completion sampler for a reconstruction budget of ``total``
    steps: a third and a tenth of it, each at least 1."""
    return max(int(total) // 3, 1), max(int(total) // 10, 1)


@dataclass(frozen=True)
class QualityPreset:
    """What a quality level means. resolution: longer image side of the fit in pixels;
    iterations: optimisation steps; faces: face budget of the mesh; texture_size: side of the
    baked base-colour texture in pixels; mesh: other mesh-stage settings (MeshConfig fields:
    TSDF grid, fusion views)."""

    resolution: int
    iterations: int
    faces: int
    texture_size: int
    mesh: dict[str, Any] = field(default_factory=dict)


#: draft: a quick look; standard: the default; high: final assets (docs/blender.md).
QUALITY_PRESETS: dict[str, QualityPreset] = {
    "draft": QualityPreset(resolution=128, iterations=1000, faces=20_000, texture_size=1024,
                           mesh={"grid": 128, "fuse_views": 24, "fuse_size": 128, "bake_render_views": 12}),
    "standard": QualityPreset(resolution=256, iterations=3000, faces=50_000, texture_size=2048),
    "high": QualityPreset(resolution=512, iterations=7000, faces=200_000, texture_size=4096, mesh={"grid": 256}),
}


@dataclass(frozen=True)
class GeneratePreset:
    """What a quality level means for generate-from-one-image. fit_iterations, warm_iterations:
    splat fit steps of the sampler's first and later fits; faces: face budget of the mesh;
    texture_size: side of the baked texture (the views are 320 px: more adds no detail);
    mesh: other mesh-stage settings (MeshConfig fields)."""

    fit_iterations: int
    warm_iterations: int
    faces: int
    texture_size: int
    mesh: dict[str, Any] = field(default_factory=dict)


#: The generate job's presets (same keys as :data:`QUALITY_PRESETS`); standard is
#: :class:`~viewforge.engine.generate.GenerateConfig`'s defaults. Each warm fit is
#: :func:`warm_iterations` of its first fit.
GENERATE_PRESETS: dict[str, GeneratePreset] = {
    "draft": GeneratePreset(fit_iterations=400, warm_iterations=120, faces=10_000, texture_size=512,
                            mesh={"grid": 128, "fuse_views": 24, "fuse_size": 128, "bake_render_views": 12}),
    "standard": GeneratePreset(fit_iterations=1000, warm_iterations=300, faces=30_000, texture_size=1024),
    "high": GeneratePreset(fit_iterations=2000, warm_iterations=600, faces=60_000, texture_size=2048, mesh={"grid": 256}),
}


__all__ = [
    "GENERATE_PRESETS",
    "GeneratePreset",
    "QUALITY_PRESETS",
    "QualityPreset",
    "WARM_SHARE",
    "completion_iterations",
    "warm_iterations",
]
