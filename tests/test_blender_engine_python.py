"""Blender with an engine Python (``$VIEWFORGE_ENGINE_PYTHON``): Reconstruct runs its job in that
Python (a :class:`SubprocessJob`) although Blender's own dependency check says torch is missing;
a bad engine Python is one report and changes nothing; a GLB texture decodes without Pillow."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from blender_helpers import bbox, bbox_iou, scene_state, suzanne_scene, world_vertices

pytestmark = pytest.mark.blender


def test_reconstruct_runs_in_the_engine_python(registered, tmp_path, monkeypatch):  # noqa: F811
    bpy = registered
    from viewforge.bridge import deps, engine_python, jobs
    from viewforge.engine.jobs import SubprocessJob

    source, cams = suzanne_scene(bpy, tmp_path / "renders", n=4, size=64)
    source_box = bbox(world_vertices(source))
    source.hide_set(True)
    s = bpy.context.scene.viewforge
    s.refine_cameras, s.complete = False, "OFF"
    s.quality, s.device = "DRAFT", "CPU"
    s.resolution, s.iterations, s.faces, s.texture_size = 64, 80, 2000, 128
    s.output_folder, s.output_name = str(tmp_path / "out"), "engine"
    # Blender's Python "lacks" torch: without an engine Python the button is disabled
    monkeypatch.setattr(deps, "missing", lambda kind="reconstruct": ["torch"])
    monkeypatch.delenv(engine_python.ENV_VAR, raising=False)
    assert not bpy.ops.viewforge.reconstruct.poll()

    # a bad engine Python: one line with the fix, nothing changes
    monkeypatch.setenv(engine_python.ENV_VAR, str(tmp_path / "no" / "python"))
    assert bpy.ops.viewforge.reconstruct.poll()
    state = scene_state(bpy)
    with pytest.raises(RuntimeError, match=r"does not exist\. Fix: set Preferences > Add-ons > Viewforge > Engine Python"):
        bpy.ops.viewforge.reconstruct()
    assert scene_state(bpy) == state and jobs.ACTIVE is None
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.viewforge.check_engine_python()

    monkeypatch.setenv(engine_python.ENV_VAR, sys.executable)
    assert bpy.ops.viewforge.check_engine_python() == {"FINISHED"}
    handles = []
    start = jobs.start
    monkeypatch.setattr(jobs, "start", lambda handle, *a, **k: (handles.append(handle), start(handle, *a, **k))[1])
    before = set(bpy.data.objects)
    assert bpy.ops.viewforge.reconstruct() == {"FINISHED"}
    assert len(handles) == 1 and isinstance(handles[0], SubprocessJob) and handles[0].python == sys.executable
    new = [o for o in bpy.data.objects if o not in before]
    assert [o.name for o in new] == ["engine"] and new[0].data.uv_layers
    assert jobs.LAST.state == "done" and "from 4 cameras" in jobs.LAST.message
    image = next(n.image for n in new[0].material_slots[0].material.node_tree.nodes if n.type == "TEX_IMAGE")
    assert tuple(image.size) == (128, 128)
    assert bbox_iou(bbox(world_vertices(new[0])), source_box) >= 0.6


def test_glb_texture_decodes_with_blender(blender, tmp_path):
    from viewforge.bridge.mesh import decode_image_with_blender, glb_base_color_png
    from viewforge.engine.io.mesh import write_mesh
    from viewforge.engine.io.types import Mesh

    rng = np.random.default_rng(0)
    texture = (rng.random((16, 24, 3)) * 255).astype(np.uint8)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    mesh = Mesh(v, np.array([[0, 1, 2]], np.int32), uvs=v[:, :2].copy(), texture=texture)
    path = write_mesh(mesh, tmp_path / "t.glb")
    encoded = glb_base_color_png(path)
    assert encoded[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = decode_image_with_blender(encoded)
    assert decoded.shape == (16, 24, 3) and np.array_equal(decoded, texture)
    assert not any(im.name.startswith("viewforge-texture") for im in blender.data.images)  # the loader's image is gone
    assert glb_base_color_png(write_mesh(Mesh(v, np.array([[0, 1, 2]], np.int32)), tmp_path / "plain.glb")) is None
