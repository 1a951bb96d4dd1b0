"""Generate from one image: prepare it, sample views with a multi-view generator and 3D-aware
sampling (reconstruction inside the loop), turn the splats into a UV-textured mesh, write it.

The object comes out in its own frame, Blender's axes (+Z up, the image's camera on the -Y side
looking at +Y): centred in X and Y, standing on Z = 0, its longest side ``size`` long. The
Blender operator places it at the 3D cursor; a GLB is +Y up as glTF requires.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputError, OutputError
from .io.atomic import atomic_file, check_output_path
from .io.types import Mesh, PosedSet
from .mvgen import DEFAULT_MODEL
from .progress import CancelToken, ProgressCallback, check

log = logging.getLogger(__name__)

#: Output formats of generate (.blend is built by the command line through bpy from the mesh).
GENERATE_SUFFIXES = (".glb", ".ply")



@dataclass(frozen=True)
class GenerateConfig:
    """Settings of :func:`generate`.

    model: generator registry id or local model folder (default DEFAULT_MODEL, Zero123++ v1.2).
    steps: sampling steps K (default 4; with guidance 2 network evaluations each).
    method: "aware" (default: 3D-aware sampling), "oneshot" or "im3d" (engine/sampling/aware.py).
    seed: noise seed. device: "auto", "cpu", "cuda" or "mps".
    allow_download: fetch missing weights from the model hub (default False: an error says how).
    faces: mesh face budget (default 30000). texture_size: texture side (default 1024: the views
        are 320 px, a bigger texture adds no detail).
    size: longest side of the result in scene units (default 1.0).
    input_elevation: the photo's camera elevation above the object in degrees (default 0: assumed
        level); the reconstruction's anchor camera is raised by it.
    fit_iterations, warm_iterations: splat fit steps of the sampler's first and later fits.
    mesh: overrides of :class:`~viewforge.engine.mesh.pipeline.MeshConfig` fields (e.g. grid).
    fit: overrides of the sampler's :class:`~viewforge.engine.splat.fit.FitConfig` fields.
    """

    model: str = DEFAULT_MODEL
    steps: int = 4
    method: Literal["aware", "oneshot", "im3d"] = "aware"
    seed: int = 0
    device: str = "auto"
    allow_download: bool = False
    faces: int = 30000
    texture_size: int = 1024
    size: float = 1.0
    input_elevation: float = 0.0
    fit_iterations: int = 1000
    warm_iterations: int = 300
    mesh: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerateResult:
    """output: the written file. mesh: the mesh as written (object frame). views: the final
    generated views (RGBA). metrics: seconds per stage, evaluations, faces, Gaussians."""

    output: Path
    mesh: Mesh
    views: list[np.ndarray]
    metrics: dict[str, Any] = field(default_factory=dict)


def place_on_ground(mesh: Mesh, size: float) -> Mesh:
    """Scale ``mesh`` so its longest side is ``size``, centred in X/Y, its bottom at Z = 0."""
    lo, hi = mesh.bounds()
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        from .errors import MeshError

        raise MeshError("the generated mesh is empty or flat", "try another seed or a clearer image of one object")
    s = float(size) / extent
    offset = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]], dtype=np.float64) * s
    return replace(mesh, vertices=(mesh.vertices.astype(np.float64) * s + offset).astype(np.float32))


def generate(
    image: str | os.PathLike | np.ndarray,
    output: str | os.PathLike,
    config: GenerateConfig = GenerateConfig(),
    *,
    generator: Any = None,
    metrics_path: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> GenerateResult:
    """One image -> ``output`` (.glb textured mesh, or .ply Gaussian splats). ``generator``: an
    already loaded generator (tests, benchmarks) instead of ``config.model``. Nothing is written
    at ``output`` on failure or cancel."""
    from .device import resolve_device
    from .mesh.pipeline import MeshConfig, splats_to_mesh
    from .mvgen.base import load_generator
    from .mvgen.prep import PrepConfig, prepare_image
    from .sampling.aware import SamplerConfig, sample

    out = check_output_path(output)
    suffix = out.suffix.lower()
    if suffix not in GENERATE_SUFFIXES:
        raise OutputError(f"output {out.name}: '{out.suffix}' is not an output format of generate",
                          "use .glb (textured mesh), .blend (command line) or .ply (Gaussian splats)")
    mpath = check_output_path(metrics_path, (".json",)) if metrics_path is not None else None
    if not (0.0 < config.size < 1e6):
        raise InputError(f"size {config.size} is not a positive length", "give the object's size in scene units, e.g. 1")
    if not -89.0 <= float(config.input_elevation) <= 89.0:
        raise InputError(f"input elevation {config.input_elevation} degrees is outside [-89, 89]",
                         "give the photo's camera elevation above the object in degrees (0: level)")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    # The generator's condition size and framing, read without loading it (a model folder's own
    # preprocessor size is applied by the generator itself).
    from .mvgen.base import resolve

    info = generator.info if generator is not None else resolve(config.model).info
    cond = prepare_image(image, PrepConfig(size=int(info.condition_size), fill=float(info.condition_fill)))
    seconds["prepare"] = time.perf_counter() - t
    check(cancel)
    device = str(resolve_device(config.device))  # once per job, handed to every stage
    t = time.perf_counter()
    gen = generator if generator is not None else load_generator(
        config.model, device=device, allow_download=config.allow_download, progress=progress)
    seconds["load_model"] = time.perf_counter() - t
    check(cancel)
    scfg = SamplerConfig(method=config.method, steps=config.steps, seed=config.seed,
                         input_elevation=float(config.input_elevation), fit_iterations=config.fit_iterations, warm_iterations=config.warm_iterations)
    scfg = replace(scfg, fit=replace(scfg.fit, device=device, **config.fit))
    res = sample(gen, cond, scfg, progress=progress, cancel=cancel)
    seconds.update({f"sample_{k}": v for k, v in res.seconds.items() if k != "total"})
    metrics: dict[str, Any] = {"generator": gen.info.id, "method": config.method, "steps": config.steps,
                               "generator_evals": res.evaluations, "num_gaussians": res.splats.num}
    if suffix == ".ply":
        from .splat.model import write_splat_ply

        check(cancel)
        write_splat_ply(res.splats, out)
        mesh = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
        metrics["num_faces"] = None
    else:
        t = time.perf_counter()
        views = res.views
        ref = _reference_rgba(cond.rgba, res.reference_camera)
        photos = PosedSet(list(res.cameras) + [res.reference_camera],
                          [np.ascontiguousarray(v[..., :3]) for v in views] + [np.ascontiguousarray(ref[..., :3])],
                          [np.ascontiguousarray(v[..., 3]) for v in views] + [np.ascontiguousarray(ref[..., 3])])
        mcfg = replace(MeshConfig(faces=config.faces, texture_size=config.texture_size, device=device),
                       **config.mesh)
        mres = splats_to_mesh(res.splats, photos, mcfg, name=_name(image), progress=progress, cancel=cancel)
        mesh = place_on_ground(mres.mesh, config.size)
        seconds.update({f"mesh_{k}": v for k, v in mres.seconds.items()})
        seconds["mesh"] = time.perf_counter() - t
        check(cancel)
        from .io.mesh import write_mesh

        write_mesh(mesh, out)
        metrics["num_faces"] = mesh.num_faces
    metrics["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    try:
        if mpath is not None:
            with atomic_file(mpath) as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return GenerateResult(out, mesh, res.views, metrics)


def _reference_rgba(rgba: np.ndarray, cam) -> np.ndarray:
    from .images import resize

    if rgba.shape[:2] != (cam.height, cam.width):
        rgba = resize(rgba, cam.width, cam.height)
    return np.clip(rgba, 0, 1).astype(np.float32)


def _name(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).stem or "generated"
    return "generated"
