""""Generate from Image": one image -> a ``generate`` job -> a mesh object at the 3D cursor.

The image comes from a file or from an image loaded in Blender (written to a temporary PNG); the
output goes where reconstruction outputs go; the job (:func:`viewforge.engine.jobs.generate_job`)
runs in a worker process; the result, which stands on z = 0 centred in x and y, is imported with
its origin at the 3D cursor (as it was when the job started) as one undo step.

Model weights are checked before the worker starts (:func:`.weights.check_weights`): a download
happens only when Blender's "Allow Online Access" is on and the add-on's Offline preference is off.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..engine.errors import ImageError, InputError
from ..engine.jobs import JobProcess, JobSpec
from .prepared import WORKER_NICE, PreparedJob, import_result, output_path, worker_env
from .weights import _abspath, check_weights


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
# Start the job
# ---------------------------------------------------------------------------------------------


def start_generate(context, settings, device: str, *, model_cache: str = "", offline: bool = False,
                   allow_download: bool = False, overrides: dict[str, Any] | None = None,
                   timer: bool = True, engine_python: str = "") -> list[str]:  # fmt: skip
    """Check the input, the model and its weights, start the generate job; its result is
    imported at the 3D cursor; ``engine_python``: run it there (:mod:`.engine_python`). Returns
    warnings (a download about to happen)."""
    from . import deps, jobs

    jobs.check_idle()
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
    out = output_path(context.scene, settings.output_folder, settings.output_name or _image_stem(settings))
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


__all__ = ["editor_image", "start_generate"]
