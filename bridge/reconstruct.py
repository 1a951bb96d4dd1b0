""""Reconstruct from cameras": scene cameras with photos -> a job -> a mesh object in the scene.

1. :func:`prepare_reconstruct` checks everything a user can get wrong *before* any work, each as
   a one-line :class:`~viewforge.engine.errors.ViewforgeError` with its fix: no cameras, an
   orthographic or panoramic camera, a camera without a photo, a photo whose aspect ratio differs
   from the render's, too few photos, an output folder that cannot be written, missing engine
   dependencies. It then writes the cameras and their photos as a posed set (transforms.json +
   images, photos copied byte for byte) into a temporary folder and returns the
   :class:`~viewforge.engine.jobs.JobSpec` for it. It changes nothing in the scene.
2. :func:`start_reconstruct` runs the job in a worker process (:class:`~viewforge.engine.jobs.
   JobProcess`) as the active job of :mod:`.jobs`.
3. When the job succeeds, :func:`.prepared.import_result` (main thread) reads the output mesh
   and builds it with :func:`.mesh.mesh_to_blender` in the scene's master collection, then pushes
   one undo step. The GLB is in the cameras' world frame, so the object sits where the cameras look.

Camera refinement (``refine_cameras``, on by default): scene cameras are trusted but approximate;
the job refines their poses against the photos (engine/recon.py ``pose_refine``: with 1-4 photos
the photos against each other before completion, with more the feature stage of the fit) and
reports each camera's change (the metrics' ``cameras``). The scene's cameras are moved to their
refined poses only with ``update_cameras`` (off by default), in the same undo step as the new
object; an animated, parented or constrained camera is left as it is, with a warning.

Photos without cameras (``photo_source="PHOTOS"``): every photo of the folder goes to the job,
which estimates their cameras by structure from motion (engine/poses/sfm.py) and writes them as a
posed set next to the output (``<name>_cameras/``: transforms.json + the undistorted photos). On
success the cameras are created in the scene (a new collection, each with its photo as
background image, the render resolution set to the photos') together with the mesh, as one undo
step; the mesh sits where those cameras look.

Which cameras: all scene cameras (or only the selected ones) that have a photo. A camera's photo
is its first background image, or (``photo_source="FOLDER"``) the file in a folder whose name is
the camera's name (any of :data:`PHOTO_SUFFIXES`, case-insensitive). With all cameras, cameras
without a photo are skipped with a warning; a *selected* camera without a photo is an error.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..engine.cameras import transforms_from_cameras
from ..engine.errors import CameraError, ImageError, InputError, OutputError
from ..engine.jobs import JobSpec
from ..engine.mvgen import DEFAULT_MODEL
from .prepared import OUTPUT_SUFFIX, WORKER_NICE, PreparedJob, _abspath, import_result, output_path, pose_changed

#: Photo files matched by camera name in a photo folder (in this order of preference).
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".webp", ".bmp")
#: Fewest photos a reconstruction accepts (one photo only with completion by the generator).
MIN_PHOTOS = 2



@dataclass(frozen=True)
class ReconstructRequest:
    """What the panel asks for. quality: a key of ``engine.jobs.QUALITY_PRESETS``. device: auto,
    cpu, cuda or mps. output_folder: where the mesh file goes ("" = next to the .blend file, or
    the temporary folder for an unsaved file; Blender's ``//`` prefix is relative to the .blend).
    output_name: file and object name ("" = "<scene>_reconstruction"). keep_output: keep the file
    after importing it (the object's texture is packed into the .blend either way). overrides:
    other ReconConfig fields (e.g. resolution, iterations). output_suffix: the job's output format
    (.glb: the textured mesh; .ply: Gaussian splats, which cannot be imported as a mesh)."""

    selected_only: bool = False
    photo_source: str = "BACKGROUND"
    photo_folder: str = ""
    quality: str = "standard"
    device: str = "auto"
    seed: int = 0
    output_folder: str = ""
    output_name: str = ""
    keep_output: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    output_suffix: str = OUTPUT_SUFFIX
    complete: str = "auto"
    model: str = DEFAULT_MODEL
    model_cache: str = ""
    allow_download: bool = False
    refine_cameras: bool = True
    update_cameras: bool = False
    #: The engine Python to run the job in (:mod:`.engine_python`; "" = Blender's Python).
    engine_python: str = ""


# ---------------------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------------------


def image_file_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header (no decoding), or None for other formats."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] != b"\xff\xd8":
                return None
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue
                (length,) = struct.unpack(">H", f.read(2))
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">xHH", f.read(5))
                    return w, h
                f.seek(length - 2, os.SEEK_CUR)
    except (OSError, struct.error):
        return None


def folder_photos(folder: str | os.PathLike) -> dict[str, Path]:
    """``{lower-case file stem: path}`` of the photos in ``folder`` (preferring PNG, then JPEG...)."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise ImageError(f"photo folder {p} does not exist", "choose the folder holding one photo per camera, named after the camera")
    found: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(PHOTO_SUFFIXES)}
    for f in sorted(p.iterdir()):
        s = f.suffix.lower()
        if s in rank and f.is_file():
            key = f.stem.lower()
            if key not in found or rank[s] < rank[found[key].suffix.lower()]:
                found[key] = f
    return found


# ---------------------------------------------------------------------------------------------
# Prepare: check the scene, write the posed set
# ---------------------------------------------------------------------------------------------


def _scene_cameras(scene, selected_only: bool, view_layer) -> list:
    """The scene's camera objects (only the selected ones with ``selected_only``), by name."""
    objs = [o for o in scene.objects if o.type == "CAMERA"]
    if selected_only:
        if view_layer is None:
            import bpy

            ctx_layer = getattr(bpy.context, "view_layer", None)
            same = ctx_layer is not None and getattr(bpy.context, "scene", None) == scene
            view_layer = ctx_layer if same else scene.view_layers[0]
        objs = [o for o in objs if o.select_get(view_layer=view_layer)]
    return sorted(objs, key=lambda o: o.name)


def _cameras_with_photos(scene, req: ReconstructRequest, view_layer) -> tuple[list[tuple], list[str]]:
    """``[(object, engine camera at the photo's size, ("image", bpy image) | ("file", path))]``
    and warnings. Raises for no cameras, an unsupported camera that has a photo (orthographic,
    panoramic), missing photos (see the module docstring). A camera without a photo is never
    used, so its type does not matter."""
    from .cameras import camera_from_bpy, camera_photo
    from .posed import camera_at_photo

    objs = _scene_cameras(scene, req.selected_only, view_layer)
    if not objs:
        which = "selected cameras" if req.selected_only else "cameras"
        raise CameraError(
            f"the scene has no {which}",
            "add perspective cameras with their photos as background images "
            "(or File > Import > Cameras from transforms.json)",
        )
    by_name = folder_photos(_abspath(req.photo_folder)) if req.photo_source == "FOLDER" else {}
    out, without = [], []
    for obj in objs:
        if req.photo_source == "FOLDER":
            path = by_name.get(obj.name.lower())
            if path is None:
                without.append(obj.name)
                continue
            cam = camera_from_bpy(obj, scene)
            size = image_file_size(path)
            if size is not None:
                cam = camera_at_photo(obj, cam, SimpleNamespace(size=size, name=path.name))
            out.append((obj, cam, ("file", path)))
        else:
            image = camera_photo(obj)
            if image is None:
                without.append(obj.name)
                continue
            out.append((obj, camera_at_photo(obj, camera_from_bpy(obj, scene), image), ("image", image)))
    where = f"in {req.photo_folder} (named after the camera)" if req.photo_source == "FOLDER" else "(background image)"
    if without and req.selected_only:
        raise ImageError(
            f"camera '{without[0]}' has no photo {where}",
            f"add a photo to {without[0]} or deselect it",
        )
    least = 1 if req.complete != "off" else MIN_PHOTOS
    if len(out) < least:
        have = f"only {len(out)} of {len(objs)} cameras has a photo" if out else f"none of the {len(objs)} cameras has a photo"
        raise ImageError(
            f"{have} {where}; a reconstruction needs at least {least}",
            "give each camera its photo as its first background image "
            "(Camera properties > Background Images), or choose a photo folder",
        )
    warnings = []
    if without:
        shown = ", ".join(without[:5]) + ("..." if len(without) > 5 else "")
        warnings.append(f"{len(without)} camera(s) without a photo were skipped: {shown}")
    return out, warnings


def write_posed_set(items: list[tuple], folder: Path) -> Path:
    """Write ``items`` (from :func:`_cameras_with_photos`) as transforms.json + images/ in ``folder``."""
    from ..engine.io.posed import write_transforms
    from .posed import IMAGES_DIR, _export_name, _photo_source, _write_photo

    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    cameras, file_paths = [], []
    for obj, cam, (kind, src) in items:
        if kind == "file":
            name = _export_name(obj.name, src.suffix.lower(), used)
            shutil.copyfile(src, folder / IMAGES_DIR / name)
        else:
            photo = _photo_source(obj, src)
            name = _export_name(obj.name, photo.suffix, used)
            _write_photo(photo, folder / IMAGES_DIR / name)
        cameras.append(cam)
        file_paths.append(f"{IMAGES_DIR}/{name}")
    return write_transforms(folder / "transforms.json", transforms_from_cameras(cameras, file_paths))


def _job_options(req: ReconstructRequest, **extra: Any) -> dict[str, Any]:
    """The reconstruct job's options (engine.jobs.RECON_OPTIONS) for ``req``."""
    return {"quality": req.quality, "device": req.device, "seed": int(req.seed), "complete": req.complete,
            "model": req.model, "allow_download": bool(req.allow_download), **extra, **req.overrides}


def _completion_weights(req: ReconstructRequest, photos: int) -> list[str]:
    """Check the generator before a job that will complete ``photos`` photos starts (none when
    the mode does not complete them): "on" or a single photo need its weights (the engine's
    one-line error otherwise); "auto" with 2-4 photos only warns that the unseen sides will stay
    empty. Returns warnings (e.g. a download about to happen)."""
    from ..engine.errors import DependencyError
    from ..engine.recon import wants_completion
    from .weights import check_weights

    if not wants_completion(req.complete, photos):
        return []
    try:
        return check_weights(req.model, req.model_cache, req.allow_download)
    except DependencyError as e:
        if req.complete == "on" or photos < 2:
            raise
        return [f"{photos} photos: the sides no photo saw will not be completed ({e.message})"]


def _check_dependencies(req: ReconstructRequest, kind: str) -> None:
    """The job's imports are there: in the engine Python when one is set, else in Blender's."""
    if req.engine_python:
        from . import engine_python

        engine_python.check(req.engine_python, kind)
        return
    from . import deps

    deps.check("reconstruct")
    if kind == "reconstruct_photos":
        deps.check("poses")


def _prepare_photos_without_cameras(scene, req: ReconstructRequest) -> PreparedJob:
    """The job for a folder of photos without cameras (module docstring)."""
    from ..engine.recon import PHOTO_SUFFIXES, photo_folder_images

    folder = Path(_abspath(req.photo_folder)).expanduser()
    if not req.photo_folder or not folder.is_dir():
        raise ImageError(f"photo folder '{req.photo_folder}' does not exist", "choose the folder that holds the photos")
    photos = photo_folder_images(folder)
    if photos is None:
        raise ImageError(f"{folder} has a transforms.json: its cameras are known",
                         "import them with File > Import > Cameras from transforms.json, then reconstruct from cameras")
    if len(photos) < 2:
        raise ImageError(
            f"{folder} holds {len(photos)} photo(s) ({', '.join(PHOTO_SUFFIXES)}); estimating cameras needs at least 2",
            "add overlapping photos of the object from several sides",
        )
    out = output_path(scene, req.output_folder, req.output_name, req.output_suffix)
    _check_dependencies(req, "reconstruct_photos")
    warnings = _completion_weights(req, len(photos))
    cameras_out = out.with_name(f"{out.stem}_cameras")
    k = 1
    while cameras_out.exists():
        cameras_out = out.with_name(f"{out.stem}_cameras_{k}")
        k += 1
    spec = JobSpec("reconstruct", str(folder), str(out), _job_options(req, cameras_out=str(cameras_out)), name=out.stem)
    return PreparedJob(spec, None, scene.name, out.stem, req.keep_output, [p.stem for p in photos], warnings,
                       cameras_out=cameras_out)


def prepare_reconstruct(scene, req: ReconstructRequest, view_layer=None) -> PreparedJob:
    """Check the scene and the request, write the posed set to a temporary folder, build the job.

    Raises a one-line :class:`ViewforgeError` for every bad input (see the module docstring);
    nothing is changed in the scene and nothing is left on disk in that case.
    """
    from ..engine.jobs import QUALITY_PRESETS

    if req.quality not in QUALITY_PRESETS:
        raise InputError(f"unknown quality '{req.quality}'", f"choose one of {', '.join(QUALITY_PRESETS)}")
    if req.complete not in ("auto", "on", "off"):
        raise InputError(f"unknown completion mode '{req.complete}'", "choose Auto, On or Off")
    if req.photo_source == "PHOTOS":
        return _prepare_photos_without_cameras(scene, req)
    items, warnings = _cameras_with_photos(scene, req, view_layer)
    out = output_path(scene, req.output_folder, req.output_name, req.output_suffix)
    _check_dependencies(req, "reconstruct")
    warnings += _completion_weights(req, len(items))
    work = Path(tempfile.mkdtemp(prefix="viewforge-job-"))
    try:
        transforms = write_posed_set(items, work / "posed")
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"could not write the photos to a temporary folder ({e})", "free some disk space") from None
        raise
    spec = JobSpec("reconstruct", str(transforms), str(out), _job_options(req, pose_refine=bool(req.refine_cameras)),
                   name=out.stem)
    return PreparedJob(spec, work, scene.name, out.stem, req.keep_output, [o.name for o, _, _ in items], warnings,
                       update_cameras=bool(req.refine_cameras and req.update_cameras))


# ---------------------------------------------------------------------------------------------
# Run and import
# ---------------------------------------------------------------------------------------------


def camera_report(updates: list[dict], applied: bool) -> str:
    """One clause for the job's report: how many cameras the refinement changed and by how much."""
    changed = [u for u in updates if pose_changed(u)]
    if not updates:
        return ""
    if not changed:
        return "cameras kept as they were (the photos gave no better poses)"
    degs = sorted(u["rotation_deg"] for u in changed)
    what = f"{len(changed)} of {len(updates)} cameras refined ({degs[0]:.2f}-{degs[-1]:.2f} degrees)"
    return what + ("; the scene's cameras were moved to them" if applied else
                   "; the scene's cameras were left as they were (Update Cameras moves them)")


def start_reconstruct(scene, req: ReconstructRequest, view_layer=None, env: dict[str, str] | None = None,
                      timer: bool = True) -> PreparedJob:  # fmt: skip
    """Prepare and start the job as the active job (see :mod:`.jobs`); returns it prepared."""
    from ..engine.jobs import JobProcess
    from . import jobs

    jobs.check_idle()
    prepared = prepare_reconstruct(scene, req, view_layer)
    nice = WORKER_NICE if timer else 0
    try:
        if req.engine_python:
            from .engine_python import start_job

            kind = "reconstruct_photos" if prepared.cameras_out is not None else "reconstruct"
            handle = start_job(prepared.spec, req.engine_python, kind, env=env, nice=nice)
        else:
            handle = JobProcess(prepared.spec, env=env, nice=nice)
    except BaseException:
        prepared.cleanup()
        raise

    def on_success(result) -> str:
        obj = import_result(prepared, result)
        if prepared.cameras_out is not None:
            sfm = result.metrics.get("sfm") or {}
            return (f"Reconstructed '{obj.name}' from {len(sfm.get('registered', []))} of {len(prepared.camera_names)} "
                    f"photos, cameras estimated and added to the scene ({result.summary})")
        cams = camera_report(result.metrics.get("cameras") or [], prepared.update_cameras)
        if cams.startswith("cameras kept") and "cameras kept as placed: " in result.summary:
            cams = ""  # the summary already says why
        return f"Reconstructed '{obj.name}' from {len(prepared.camera_names)} cameras ({result.summary})" + (
            f"; {cams}" if cams else "") + "".join(f"; {w}" for w in prepared.camera_warnings)

    jobs.start(handle, "reconstruct", on_success, prepared.cleanup, timer=timer)
    return prepared


__all__ = [
    "PHOTO_SUFFIXES",
    "ReconstructRequest",
    "camera_report",
    "folder_photos",
    "image_file_size",
    "prepare_reconstruct",
    "start_reconstruct",
]
