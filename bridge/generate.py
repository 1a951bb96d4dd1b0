""""Generate from image": one image -> a ``generate`` job -> a mesh object at the 3D cursor.

The job itself (:func:`viewforge.engine.jobs.generate_job`) is not available in this version; the
operator's poll says so. This module is the Blender side that is ready for it: the image comes
from a file or from an image loaded in Blender (written to a temporary PNG), the output goes
where reconstruction outputs go, and the result is imported at the 3D cursor as one undo step.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..engine.errors import ImageError, InputError
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


def start_generate(context, settings, device: str, timer: bool = True) -> list[str]:
    """Check the input, start the generate job; its result is imported at the 3D cursor."""
    from . import deps, jobs
    from .reconstruct import PreparedJob, ReconstructRequest, import_result, output_path

    if jobs.is_running():
        raise InputError(f"another Viewforge job ({jobs.ACTIVE.label}) is running", "wait for it or cancel it")
    deps.check("generate")
    req = ReconstructRequest(output_folder=settings.output_folder, output_name=settings.output_name or "generated",
                             keep_output=settings.keep_output)  # fmt: skip
    out = output_path(context.scene, req)
    work = Path(tempfile.mkdtemp(prefix="viewforge-job-"))
    try:
        image = _input_image(settings, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    spec = JobSpec("generate", str(image), str(out), {"device": device, "seed": int(settings.seed)}, name=out.stem)
    prepared = PreparedJob(spec, work, context.scene.name, out.stem, settings.keep_output)
    cursor = tuple(context.scene.cursor.location)
    from .reconstruct import WORKER_NICE

    handle = JobProcess(spec, nice=WORKER_NICE if timer else 0)

    def on_success(result) -> str:
        obj = import_result(prepared, result, location=cursor)
        return f"Generated '{obj.name}' from {Path(spec.input).name}"

    jobs.start(handle, "generate", on_success, prepared.cleanup, timer=timer)
    return []
