"""Reconstruct from Cameras with approximate scene cameras: the job refines the cameras against the
photos and, with Update Cameras, moves the scene's cameras to the refined poses in the same undo
step as the new object; the update's rules (skipped cameras, the report).

Three photos 40 degrees apart of a noise-textured object (SIFT needs texture and 256 px), the
scene's cameras then turned by 2 degrees each; completion by the tiny random generator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from blender_helpers import cycles_photos, engine_camera, photograph, scene_state, world_light

pytestmark = pytest.mark.blender

SIZE = 256


def _noise_object(bpy):
    bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16, radius=0.8)
    obj = bpy.context.active_object
    obj.scale = (1.0, 0.75, 0.9)
    bpy.ops.object.transform_apply(scale=True)
    mat = bpy.data.materials.new("Noise")
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    output = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
    emission = nodes.new("ShaderNodeEmission")  # unlit: the scene has no lights
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 12.0
    noise.inputs["Detail"].default_value = 8.0
    links.new(noise.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    obj.data.materials.append(mat)
    return obj


def _photographed_cameras(bpy, tmp):
    """Three cameras at azimuths 0 / 40 / 80 degrees with their Cycles renders as photos."""
    from viewforge.bridge.cameras import create_bpy_camera

    scene = bpy.context.scene
    obj = _noise_object(bpy)
    cycles_photos(scene, SIZE, samples=8)
    world_light(bpy, 1.0)
    cams = []
    for i in range(3):
        cam = create_bpy_camera(engine_camera(i, 9, SIZE, elevation=0.3, dist=3.2), scene, name=f"Cam{i}")
        photograph(bpy, cam, tmp / f"{cam.name}.png")
        cams.append(cam)
    obj.hide_set(True)
    return cams


def _turn(bpy, cams, degrees: float, seed: int = 0) -> None:
    """Turn each camera by ``degrees`` about a random axis through its centre (a hand-placed camera)."""
    from mathutils import Matrix, Vector

    rng = np.random.default_rng(seed)
    for cam in cams:
        axis = Vector(rng.normal(size=3)).normalized()
        cam.matrix_world = cam.matrix_world @ Matrix.Rotation(math.radians(degrees), 4, axis)


def _rotations(cams) -> list[np.ndarray]:
    return [np.array(c.matrix_world.to_3x3().normalized()) for c in cams]


def _errors(rots, truth) -> tuple[float, float]:
    """Median rotation error in degrees: absolute and after the best global rotation."""
    def angle(a, b):
        return math.degrees(math.acos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1)))

    u, _, vt = np.linalg.svd(sum(t @ r.T for r, t in zip(rots, truth)))
    g = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
    return (float(np.median([angle(r, t) for r, t in zip(rots, truth)])),
            float(np.median([angle(g @ r, t) for r, t in zip(rots, truth)])))


def _settings(bpy, tiny_model, tmp_path):
    s = bpy.context.scene.viewforge
    s.complete, s.model = "ON", str(tiny_model)
    s.quality, s.device = "DRAFT", "CPU"
    s.resolution, s.iterations, s.faces, s.texture_size = 48, 60, 1500, 128
    s.output_folder, s.output_name = str(tmp_path / "out"), "refined"
    assert s.refine_cameras and not s.update_cameras  # the defaults
    s.update_cameras = True


def test_scene_cameras_are_refined_and_updated_on_request(registered, tiny_model, tmp_path):
    """With Update Cameras the job's refined poses are applied in the undo step of the new object.
    (Off, the default, no camera moves: the reconstruct tests of test_blender_jobs.py run with it
    off, and the test below checks the report.)"""
    bpy = registered
    cams = _photographed_cameras(bpy, tmp_path / "renders")
    truth = _rotations(cams)
    _turn(bpy, cams, 2.0)
    turned = _rotations(cams)
    _, aligned_before = _errors(turned, truth)
    assert aligned_before > 0.8
    _settings(bpy, tiny_model, tmp_path)
    bpy.ops.ed.undo_push(message="scene ready")
    state = scene_state(bpy)
    assert bpy.ops.viewforge.reconstruct() == {"FINISHED"}
    from viewforge.bridge import jobs

    message = jobs.LAST.message
    assert jobs.LAST.state == "done" and "3 of 3 cameras refined" in message, message
    after = _rotations(cams)
    assert "moved to them" in message
    _, aligned_after = _errors(after, truth)
    print(f"cameras after the best global rotation: {aligned_before:.2f} -> {aligned_after:.2f} degrees")
    # the photos agree with each other at the true cameras: the relative error mostly goes
    assert aligned_after < 0.5 * aligned_before, (aligned_before, aligned_after)
    centres = [np.array(c.matrix_world.col[3][:3]) for c in cams]
    bpy.ops.ed.undo()  # one step: the object and the cameras' poses
    assert scene_state(bpy) == state
    cams = [bpy.data.objects[f"Cam{i}"] for i in range(3)]
    assert max(np.abs(a - b).max() for a, b in zip(_rotations(cams), turned)) < 1e-5
    assert all(np.allclose(np.array(c.matrix_world.col[3][:3]), p, atol=0.05) for c, p in zip(cams, centres))


def test_camera_updates_skip_parented_animated_and_deleted_cameras(registered):
    """apply_camera_updates moves a plain camera to its refined pose (keeping its scale) and leaves
    a parented, a constrained, an animated and a deleted camera as they are, one warning each."""
    bpy = registered
    from mathutils import Matrix

    from viewforge.bridge.cameras import create_bpy_camera
    from viewforge.bridge.prepared import apply_camera_updates
    from viewforge.bridge.reconstruct import camera_report

    scene = bpy.context.scene
    cams = [create_bpy_camera(engine_camera(i, 6, SIZE), scene, name=f"C{i}") for i in range(5)]
    cams[0].scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    cams[1].parent = bpy.data.objects.new("Rig", None)
    cams[2].constraints.new("TRACK_TO")
    cams[3].keyframe_insert("location", frame=1)
    names = [c.name for c in cams] + ["Gone"]
    turn = Matrix.Rotation(math.radians(1.5), 4, "X")
    targets = [np.array(c.matrix_world.normalized() @ turn) for c in cams] + [np.eye(4)]
    before = [np.array(c.matrix_world) for c in cams]
    updates = [{"name": n, "rotation_deg": 1.5, "moved": 0.0, "camera_to_world_gl": t.tolist()}
               for n, t in zip(names, targets)]
    updates[4]["rotation_deg"] = 0.0  # C4: not refined, not touched
    warnings = apply_camera_updates(names, updates)
    assert [w.split("'")[1] for w in warnings] == ["C1", "C2", "C3", "Gone"], warnings
    assert "parented" in warnings[0] and "constraints" in warnings[1] and "animated" in warnings[2]
    assert "deleted" in warnings[3]
    m = np.array(cams[0].matrix_world)
    np.testing.assert_allclose(m[:3, :3] / 2.0, targets[0][:3, :3], atol=1e-5)  # turned, scale kept
    np.testing.assert_allclose(m[:3, 3], before[0][:3, 3], atol=1e-5)
    for c, b in zip(cams[1:], before[1:]):
        np.testing.assert_allclose(np.array(c.matrix_world), b, atol=1e-6)
    assert apply_camera_updates(names[:2], updates) == [
        "the job refined 6 cameras but 2 were sent: none was moved"]
    assert camera_report(updates, True).startswith("5 of 6 cameras refined (1.50-1.50 degrees)")
    assert camera_report(updates, False).endswith("left as they were (Update Cameras moves them)")
    assert camera_report([dict(u, rotation_deg=0.0) for u in updates], False).startswith("cameras kept")
