import time
import numpy as np
from blender_helpers import bbox, bbox_iou, one_undo_step, suzanne_scene, world_vertices


def test_scene12(registered, tmp_path):
    bpy = registered
    source, cams = suzanne_scene(bpy, tmp_path / "renders", n=12, size=160)
    box = bbox(world_vertices(source))
    source.hide_set(True)
    s = bpy.context.scene.viewforge
    s.output_folder, s.output_name = str(tmp_path / "out"), "suzanne"
    print("SETTINGS", s.quality, s.device, s.refine_cameras, s.complete, s.resolution, s.iterations)
    t = time.time()
    with one_undo_step(bpy, bpy.ops.viewforge.reconstruct) as new:
        from viewforge.bridge import jobs
        print("REPORT", jobs.LAST.state, jobs.LAST.message)
        print("IOU", bbox_iou(bbox(world_vertices(new[0])), box), "SECONDS", time.time() - t)
