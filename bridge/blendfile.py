"""Write a mesh as a .blend file (the command line's ``-o OUT.blend``), through bpy."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engine.io.atomic import atomic_file, check_output_path
from ..engine.io.types import Mesh

log = logging.getLogger(__name__)


def save_mesh_blend(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Save ``mesh`` as the only object of a fresh .blend (textured Principled BSDF material,
    texture packed into the file), written atomically. Resets the running bpy session to factory
    settings first: for the command line only, never from inside an artist's Blender."""
    import bpy

    out = check_output_path(path, (".blend",))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    from .mesh import mesh_to_blender

    scene = bpy.context.scene
    mesh_to_blender(mesh, scene=scene, collection=scene.collection)
    with atomic_file(out) as tmp:
        # Blender appends .blend to names without it; the temporary name ends in .blend already
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False, compress=True)
        for leftover in (Path(str(tmp) + "1"),):  # Blender's backup of an existing file
            leftover.unlink(missing_ok=True)
    log.info("wrote %s", out)
    return out
