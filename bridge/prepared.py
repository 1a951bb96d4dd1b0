"""A prepared job and its result: the plumbing every job started from the panel shares.

* :func:`output_path` names the output file (a fresh name in a folder that can be written);
* :class:`PreparedJob` holds the checked job (its spec, its temporary folder, where to import);
* :func:`worker_env` and :data:`WORKER_NICE` set up the worker process;
* :func:`import_result` builds the job's output mesh in the job's scene when the job succeeds
  (main thread), with the estimated cameras when the job estimated them and the refined poses
  when asked (:func:`apply_camera_updates`), as one undo step (:func:`push_undo`).

:mod:`.reconstruct` and :mod:`.generate` build their jobs on these.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.errors import InputError, OutputError
from ..engine.jobs import JobSpec

log = logging.getLogger(__name__)

#: CPU priority decrease of interactive jobs' workers (the UI keeps its share of the cores).
WORKER_NICE = 5
#: Output format of the operator's job (the textured mesh of the mesh stage).
OUTPUT_SUFFIX = ".glb"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class PreparedJob:
    """A checked job: its spec, the temporary folder with the posed set (None when the job reads
    the user's photo folder directly: photos without cameras), where to import."""

    spec: JobSpec
    work_dir: Path | None
    scene_name: str
    object_name: str
    keep_output: bool = True
    camera_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cameras_out: Path | None = None
    update_cameras: bool = False
    camera_warnings: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _abspath(path: str) -> str:
    import bpy

    return bpy.path.abspath(path) if path else path


def output_path(scene, folder: str, name: str, suffix: str = OUTPUT_SUFFIX) -> Path:
    """The output file ``<name><suffix>`` for a new job: a fresh name (``_1``, ``_2``... when
    taken) in ``folder`` ("" = next to the .blend file, or the temporary folder for an unsaved
    file; Blender's ``//`` prefix is relative to the .blend), which is created and must be
    writable (:class:`OutputError` otherwise). ``name`` is made file-safe; "" =
    "<scene>_reconstruction"."""
    import bpy

    folder = _abspath(folder)
    if not folder:
        blend = bpy.data.filepath
        folder = os.path.dirname(blend) if blend else os.path.join(tempfile.gettempdir(), "viewforge")
    out_dir = Path(folder).expanduser().absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".viewforge-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputError(
            f"the output folder {out_dir} cannot be written ({reason})",
            "choose another Output Folder in the Viewforge panel",
        ) from None
    stem = _SAFE.sub("_", name or f"{scene.name}_reconstruction").strip("._") or "reconstruction"
    path = out_dir / f"{stem}{suffix}"
    k = 1
    while path.exists():
        path = out_dir / f"{stem}_{k}{suffix}"
        k += 1
    return path


def import_result(prepared: PreparedJob, result, location=None) -> Any:
    """Build the job's output mesh in the job's scene (main thread), and the estimated cameras
    when the job estimated them (photos without cameras), as one undo step; ``location`` moves
    the new object (generate mode: the 3D cursor). With ``prepared.update_cameras`` the scene's
    cameras are moved to their refined poses in the same undo step (:func:`apply_camera_updates`;
    its warnings are kept in ``prepared.camera_warnings`` for the report)."""
    import bpy

    from .mesh import mesh_to_blender, read_result_mesh

    scene = bpy.data.scenes.get(prepared.scene_name)
    if scene is None:
        raise InputError(
            f"the scene '{prepared.scene_name}' the job was started from no longer exists; the result is in {result.output}",
            "import the file with File > Import > glTF 2.0",
        )
    mesh = read_result_mesh(result.output)
    cameras = None
    if prepared.cameras_out is not None:
        from .posed import import_transforms

        cameras = import_transforms(prepared.cameras_out / "transforms.json", scene, set_render=True)
    try:
        obj = mesh_to_blender(mesh, name=prepared.object_name, collection=scene.collection, scene=scene)
    except BaseException:
        if cameras is not None:
            _remove_cameras(cameras)
        raise
    if location is not None:
        obj.location = location
    if prepared.update_cameras and result.metrics.get("cameras"):
        prepared.camera_warnings = apply_camera_updates(prepared.camera_names, result.metrics["cameras"])
    if not prepared.keep_output:
        Path(result.output).unlink(missing_ok=True)
    push_undo(f"Viewforge: {obj.name}")
    return obj


def pose_changed(update: dict) -> bool:
    """Whether the refinement changed this camera's pose (an entry of the metrics' ``cameras``)."""
    return update.get("rotation_deg", 0.0) > 1e-4 or update.get("moved", 0.0) > 1e-7


def apply_camera_updates(camera_names: list[str], updates: list[dict]) -> list[str]:
    """Move the scene's camera objects (``camera_names``, the job's cameras in order) to their
    refined poses (the metrics' ``cameras`` entries, same order). Each camera keeps its scale and
    its data (lens, sensor, shift); an animated, parented or constrained camera, or one deleted
    while the job ran, is left as it is. Returns one warning per camera left."""
    import bpy
    from mathutils import Matrix

    if len(updates) != len(camera_names):
        return [f"the job refined {len(updates)} cameras but {len(camera_names)} were sent: none was moved"]
    warnings = []
    for name, u in zip(camera_names, updates):
        if not pose_changed(u):
            continue
        obj = bpy.data.objects.get(name)
        why = ("was deleted while the job ran" if obj is None or obj.type != "CAMERA" else
               "is parented" if obj.parent is not None else
               "has constraints" if len(obj.constraints) else
               "is animated" if obj.animation_data is not None and obj.animation_data.action is not None else None)
        if why:
            warnings.append(f"camera '{name}' {why}: its refined pose ({u['rotation_deg']:.2f} degrees) was not applied")
            continue
        _, _, scale = obj.matrix_world.decompose()
        loc, rot, _ = Matrix(u["camera_to_world_gl"]).decompose()
        obj.matrix_world = Matrix.LocRotScale(loc, rot, scale)
    return warnings


def _remove_cameras(imported) -> None:
    """Undo :func:`.posed.import_transforms` (an import that failed half-way)."""
    import bpy

    images = {o.data.background_images[0].image for o in imported.objects if len(o.data.background_images)}
    for o in imported.objects:
        data = o.data
        bpy.data.objects.remove(o)
        bpy.data.cameras.remove(data)
    bpy.data.collections.remove(imported.collection)
    for image in images:
        if image is not None and image.users == 0:
            bpy.data.images.remove(image)


def push_undo(message: str) -> None:
    """One undo step for what was just created (a no-op where undo is off, e.g. background mode)."""
    import bpy

    try:
        wm = bpy.context.window_manager
        window = bpy.context.window or (wm.windows[0] if wm is not None and len(wm.windows) else None)
        if window is not None and bpy.context.window is None:
            with bpy.context.temp_override(window=window):
                bpy.ops.ed.undo_push(message=message)
        else:
            bpy.ops.ed.undo_push(message=message)
    except Exception:  # noqa: BLE001  (no undo here: nothing to do)
        log.debug("undo push skipped", exc_info=True)


def worker_env(model_cache: str = "", offline: bool = False) -> dict[str, str]:
    """Environment of the worker: the model cache folder and the offline switch."""
    env = {}
    if model_cache:
        env["HF_HOME"] = _abspath(model_cache)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


__all__ = [
    "OUTPUT_SUFFIX",
    "WORKER_NICE",
    "PreparedJob",
    "apply_camera_updates",
    "import_result",
    "output_path",
    "push_undo",
    "worker_env",
]
