""""Generate from Image": one image -> a ``generate`` job -> a mesh object at the 3D cursor.

The image comes from a file or from an image loaded in Blender (written to a temporary PNG); the
output goes where reconstruction outputs go; the job (:func:`viewforge.engine.jobs.generate_job`)
runs in a worker process; the result, which stands on z = 0 centred in x and y, is imported with
its origin at the 3D cursor (as it was when the job started) as one undo step.

Model weights: :func:`weights_status` tells the panel, from the file system only (never the
network), whether the chosen generator's weights are in the model cache, and its licence and
download size. A download happens only when Blender's "Allow Online Access" is on and the
add-on's Offline preference is off (``allow_download`` of the job); otherwise missing weights are
refused before a worker starts, with the engine's message (model, download size, how to allow it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.errors import ImageError, InputError, ViewforgeError
from ..engine.jobs import JobProcess, JobSpec


def editor_image():
    """The image shown in an Image Editor (the first one found), or None."""
    import bpy

    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
                return area.spaces.active.image
    return None


def _input_image(settings, work: Path) -> Path:
    import bpy

    if settings.image_source == "EDITOR":
        image = settings.image or editor_image()
        if image is None:
            raise ImageError("no image is chosen", "pick an image in the Viewforge panel (Image) or open one in an Image Editor")
        from .images import image_to_array, png_bytes

        rgb, alpha = image_to_array(image)
        path = work / "input.png"
        path.write_bytes(png_bytes(rgb, alpha))
        return path
    if not settings.image_path:
        raise ImageError("no image file is chosen", "choose an image file in the Viewforge panel")
    path = Path(bpy.path.abspath(settings.image_path))
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist", "choose an existing PNG or JPEG file")
    return path


def _image_stem(settings) -> str:
    if settings.image_source == "EDITOR":
        image = settings.image or editor_image()
        return Path(image.name).stem if image is not None else "generated"
    return Path(settings.image_path).stem or "generated"


# ---------------------------------------------------------------------------------------------
# Model weights: licence, download size, in the cache or not (file system only)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsStatus:
    """What the panel shows about a model. info: the registry's GeneratorInfo (None when the model
    is unknown); cached: its weights are on disk (a local folder, or the hub cache holds every
    file of the pinned snapshot); folder: where they are (or would be); error: why the model
    cannot be used ("" when it can)."""

    info: Any = None
    cached: bool = False
    folder: Path | None = None
    error: str = ""

    @property
    def download_gb(self) -> float | None:
        mb = getattr(self.info, "download_mb", None)
        return None if mb is None else mb / 1000.0


def hub_cache_dir(model_cache: str = "") -> Path:
    """The model hub's cache folder the worker will use: ``HF_HUB_CACHE`` if set, else
    ``<model_cache>/hub`` (the worker's ``HF_HOME``), else the hub library's default."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    if model_cache:
        return Path(_abspath(model_cache)).expanduser() / "hub"
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _abspath(path: str) -> str:
    try:
        import bpy

        return bpy.path.abspath(path)
    except Exception:  # noqa: BLE001  (outside Blender)
        return path


def _model_spec(entry) -> Any:
    """The backend's ModelSpec (the files it loads), when its module has one."""
    import importlib

    from ..engine.mvgen import base

    mod = entry.loader.partition(":")[0]
    if mod.startswith("."):
        mod = base.__package__ + mod
    try:
        return getattr(importlib.import_module(mod), "SPEC", None)
    except ImportError:
        return None


def weights_status(model: str, model_cache: str = "") -> WeightsStatus:
    """Where the weights of ``model`` (registry id or local folder) are, from the file system only."""
    from ..engine.mvgen.base import resolve

    model = (model or "").strip()
    if not model:
        return WeightsStatus(error="no model is chosen")
    local = Path(_abspath(model)).expanduser()
    try:
        entry = resolve(str(local) if local.is_dir() else model)
    except ViewforgeError as e:
        return WeightsStatus(error=e.message)
    if local.is_dir():
        return WeightsStatus(entry.info, True, local)
    info = entry.info
    if not info.repo_id or not info.revision:
        return WeightsStatus(info, True, None)
    snapshot = hub_cache_dir(model_cache) / f"models--{info.repo_id.replace('/', '--')}" / "snapshots" / info.revision
    spec = _model_spec(entry)
    files = spec.files() if spec is not None else []
    cached = snapshot.is_dir() and all((snapshot / f).is_file() for f in files)
    return WeightsStatus(info, cached, snapshot)


def check_weights(model: str, model_cache: str, allow_download: bool) -> list[str]:
    """Refuse a model that is unknown or whose weights are missing and may not be downloaded
    (the engine's messages); returns warnings (a download about to happen, with the licence)."""
    from ..engine.mvgen.base import resolve

    status = weights_status(model, model_cache)
    if status.error:
        local = Path(_abspath(model)).expanduser()
        resolve(str(local) if local.is_dir() else model)  # raises the engine's InputError
        raise InputError(status.error, "choose a registry id or a model folder in the Viewforge panel")
    if status.cached:
        return []
    info = status.info
    if not allow_download:
        spec = _model_spec(resolve(model))
        if spec is not None:
            from ..engine.mvgen.weights import _missing_error

            raise _missing_error(spec, "online access is not allowed")
        return []
    return [f"downloading the {info.name} weights (about {status.download_gb:.1f} GB, licence {info.licence}) "
            "before the first generation"]


# ---------------------------------------------------------------------------------------------
# Start the job
# ---------------------------------------------------------------------------------------------


def start_generate(context, settings, device: str, *, model_cache: str = "", offline: bool = False,
                   allow_download: bool = False, overrides: dict[str, Any] | None = None,
                   timer: bool = True, engine_python: str = "") -> list[str]:  # fmt: skip
    """Check the input, the model and its weights, start the generate job; its result is
    imported at the 3D cursor; ``engine_python``: run it there (:mod:`.engine_python`). Returns
    warnings (a download about to happen)."""
    from . import deps, jobs
    from .reconstruct import WORKER_NICE, PreparedJob, ReconstructRequest, import_result, output_path, worker_env

    if jobs.is_running():
        raise InputError(f"another Viewforge job ({jobs.ACTIVE.label}) is running", "wait for it or cancel it")
    quality = settings.quality.lower()
    from ..engine.jobs import GENERATE_PRESETS

    if quality not in GENERATE_PRESETS:
        raise InputError(f"unknown quality '{quality}'", f"choose one of {', '.join(GENERATE_PRESETS)}")
    if engine_python:
        from .engine_python import check

        check(engine_python, "generate")
    else:
        deps.check("generate")
    allow_download = bool(allow_download) and not offline
    model = settings.model.strip()
    local = Path(_abspath(model)).expanduser()
    model = str(local) if model and local.is_dir() else model
    warnings = check_weights(model, model_cache, allow_download)
    req = ReconstructRequest(output_folder=settings.output_folder, output_name=settings.output_name or _image_stem(settings),
                             keep_output=settings.keep_output)  # fmt: skip
    out = output_path(context.scene, req)
    work = Path(tempfile.mkdtemp(prefix="viewforge-job-"))
    try:
        image = _input_image(settings, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    options = {"quality": quality, "device": device, "seed": int(settings.seed), "model": model,
               "steps": int(settings.steps), "size": float(settings.size), "allow_download": allow_download,
               **(overrides or {})}  # fmt: skip
    spec = JobSpec("generate", str(image), str(out), options, name=out.stem)
    prepared = PreparedJob(spec, work, context.scene.name, out.stem, settings.keep_output)
    cursor = tuple(context.scene.cursor.location)
    try:
        nice = WORKER_NICE if timer else 0
        if engine_python:
            from .engine_python import start_job

            handle = start_job(spec, engine_python, "generate", env=worker_env(model_cache, offline), nice=nice)
        else:
            handle = JobProcess(spec, env=worker_env(model_cache, offline), nice=nice)
    except BaseException:
        prepared.cleanup()
        raise

    def on_success(result) -> str:
        obj = import_result(prepared, result, location=cursor)
        return f"Generated '{obj.name}' from {Path(spec.input).name} ({result.summary})"

    jobs.start(handle, "generate", on_success, prepared.cleanup, timer=timer)
    return warnings


__all__ = ["WeightsStatus", "check_weights", "editor_image", "hub_cache_dir", "start_generate", "weights_status"]
