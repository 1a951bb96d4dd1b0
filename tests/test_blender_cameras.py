"""Blender cameras <-> engine cameras: projection equal to Blender's own, and round trips.

The reference is ``bpy_extras.object_utils.world_to_camera_view`` (normalised view coordinates,
origin bottom-left): pixel = (x * width, (1 - y) * height) with width/height the rendered size.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib

import numpy as np
import pytest

pytestmark = pytest.mark.blender

TOL_PX = 0.01


def _add_camera(bpy, name="Cam", lens=35.0, sensor=(36.0, 24.0), fit="AUTO", shift=(0.0, 0.0), ctype="PERSP"):
    data = bpy.data.cameras.new(name)
    data.type = ctype
    data.lens = lens
    data.sensor_width, data.sensor_height = sensor
    data.sensor_fit = fit
    data.shift_x, data.shift_y = shift
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _set_render(scene, res=(640, 480), pct=100, aspect=(1.0, 1.0)):
    r = scene.render
    r.resolution_x, r.resolution_y = res
    r.resolution_percentage = pct
    r.pixel_aspect_x, r.pixel_aspect_y = aspect


def _pose(obj, rng, scale=(1.0, 1.0, 1.0)):
    """Put the camera on a sphere of radius ~6 looking at the origin with a random roll."""
    from mathutils import Matrix, Vector

    from viewforge.engine.cameras import look_at

    d = rng.normal(size=3)
    eye = 6.0 * d / np.linalg.norm(d)
    w2c = look_at(eye, rng.normal(scale=0.3, size=3))
    c2w_gl = np.linalg.inv(w2c) @ np.diag([1.0, -1.0, -1.0, 1.0])
    roll = Matrix.Rotation(float(rng.uniform(-math.pi, math.pi)), 4, "Z")
    m = Matrix(c2w_gl.tolist()) @ roll @ Matrix.Diagonal(Vector((*scale, 1.0)))
    obj.matrix_world = m


def _points(rng, n=1000):
    """Random points in a ball of radius 2.5 around the origin (in front of every camera at 6)."""
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True) * (2.5 * rng.random((n, 1)) ** (1 / 3))


def _blender_pixels(bpy, scene, obj, pts):
    """Pixels and depths of ``pts`` as Blender projects them through camera ``obj``."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    pct = scene.render.resolution_percentage
    w = scene.render.resolution_x * pct // 100
    h = scene.render.resolution_y * pct // 100
    out = np.array([tuple(world_to_camera_view(scene, obj, Vector(p))) for p in pts])
    return np.stack([out[:, 0] * w, (1.0 - out[:, 1]) * h], axis=1), out[:, 2]


def _frustum_points(cam, rng, n=1000):
    """Random world points that the engine camera sees over its whole frame (and a margin)."""
    uv = rng.uniform(-0.1, 1.1, size=(n, 2)) * [cam.width, cam.height]
    z = rng.uniform(0.5, 20.0, size=n)
    xc = np.stack([(uv[:, 0] - cam.cx) / cam.fx * z, (uv[:, 1] - cam.cy) / cam.fy * z, z, np.ones(n)], axis=1)
    return (xc @ cam.camera_to_world.T)[:, :3]


def _assert_projection_equal(bpy, scene, obj, cam, pts=None, rng=None):
    """Engine and Blender put ``pts`` (default: 1000 random points in the frustum) on the same pixels."""
    if pts is None:
        pts = _frustum_points(cam, rng)
    uv_b, z_b = _blender_pixels(bpy, scene, obj, pts)
    uv_e, z_e = cam.project(pts)
    assert (z_e > 0).all()
    err = np.abs(uv_e - uv_b).max()
    assert err < TOL_PX, f"max pixel error {err:.2e}"
    np.testing.assert_allclose(z_e, z_b, rtol=1e-5, atol=1e-5)


CONFIGS = [
    # (render size, percentage, pixel aspect, shift)
    ((640, 480), 100, (1.0, 1.0), (0.0, 0.0)),
    ((640, 480), 50, (1.0, 1.0), (0.12, -0.07)),
    ((640, 480), 100, (1.0, 1.37), (-0.2, 0.15)),
    ((640, 480), 50, (1.6, 1.0), (0.05, 0.3)),
]


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
@pytest.mark.parametrize("orientation", ["landscape", "portrait"])
def test_projection_matches_world_to_camera_view(blender, fit, orientation):
    from viewforge.bridge.cameras import camera_from_bpy

    scene = blender.context.scene
    rng = np.random.default_rng(zlib.crc32(f"{fit}-{orientation}".encode()))
    obj = _add_camera(blender, fit=fit, lens=28.0, sensor=(36.0, 20.0))
    for res, pct, aspect, shift in CONFIGS:
        if orientation == "portrait":
            res = (res[1], res[0])
        _set_render(scene, res, pct, aspect)
        obj.data.shift_x, obj.data.shift_y = shift
        _pose(obj, rng)
        cam = camera_from_bpy(obj, scene)
        assert (cam.width, cam.height) == (res[0] * pct // 100, res[1] * pct // 100)
        _assert_projection_equal(blender, scene, obj, cam, rng=rng)


def test_projection_with_scaled_camera_object(blender):
    """Object scale (non-uniform) does not change the projection, in Blender or here."""
    from viewforge.bridge.cameras import camera_from_bpy

    scene = blender.context.scene
    rng = np.random.default_rng(7)
    _set_render(scene, (500, 300), 100, (1.0, 1.0))
    obj = _add_camera(blender, fit="AUTO", shift=(0.1, 0.05))
    _pose(obj, rng, scale=(2.0, 0.5, 3.0))
    assert not np.allclose(np.linalg.norm(np.array(obj.matrix_world)[:3, :3], axis=0), 1.0)
    cam = camera_from_bpy(obj, scene)
    _assert_projection_equal(blender, scene, obj, cam, rng=rng)


@pytest.mark.parametrize("ctype,word", [("ORTHO", "orthographic"), ("PANO", "panoramic")])
def test_orthographic_and_panoramic_are_not_supported(blender, ctype, word):
    from viewforge.bridge.cameras import camera_from_bpy, scene_posed_cameras
    from viewforge.engine.errors import CameraError

    scene = blender.context.scene
    obj = _add_camera(blender, name="Odd Cam", ctype=ctype)
    with pytest.raises(CameraError, match="not supported") as info:
        camera_from_bpy(obj, scene)
    assert "Odd Cam" in str(info.value) and word in str(info.value)
    with pytest.raises(CameraError, match="Odd Cam"):
        scene_posed_cameras(scene)


def test_create_bpy_camera_reproduces_engine_camera(blender):
    """Engine camera (anisotropic focal, off-centre principal point) -> bpy camera -> same pixels."""
    from viewforge.bridge.cameras import apply_render_settings, camera_from_bpy, create_bpy_camera
    from viewforge.engine.cameras import Camera, blender_params_from_camera, look_at

    scene = blender.context.scene
    rng = np.random.default_rng(3)
    for w, h, fx, fy, cx, cy in [(640, 480, 500.0, 520.0, 300.0, 250.0), (300, 500, 410.0, 400.0, 160.0, 230.0)]:
        cam = Camera(fx, fy, cx, cy, w, h, look_at((4.0, -5.0, 3.0), (0.1, 0.2, 0.0)), name="engine")
        obj = create_bpy_camera(cam, scene, name="made")
        apply_render_settings(scene, blender_params_from_camera(cam))
        back = camera_from_bpy(obj, scene)
        assert (back.width, back.height) == (w, h)
        np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy], [fx, fy, cx, cy], rtol=1e-6)  # bpy stores float32
        np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera, atol=1e-6)
        _assert_projection_equal(blender, scene, obj, cam, rng=rng)
        assert obj.users_collection[0] == scene.collection


def test_camera_photo_and_scene_posed_cameras(blender):
    from viewforge.bridge.cameras import camera_photo, create_bpy_camera, scene_posed_cameras
    from viewforge.bridge.images import array_to_image
    from viewforge.engine.cameras import Camera, look_at

    scene = blender.context.scene
    _set_render(scene, (64, 48))
    photo = array_to_image(np.zeros((48, 64, 3), np.uint8), "photo")
    cam = Camera(60.0, 60.0, 32.0, 24.0, 64, 48, look_at((0, -5, 0), (0, 0, 0)))
    a = create_bpy_camera(cam, scene, name="B", photo=photo)
    b = create_bpy_camera(cam, scene, name="A")
    assert a.data.show_background_images and camera_photo(a) == photo and camera_photo(b) is None
    items = scene_posed_cameras(scene)
    assert [o.name for o, _, _ in items] == ["A", "B"]
    assert items[1][2] == photo and items[0][2] is None
    np.testing.assert_allclose(items[1][1].world_to_camera, cam.world_to_camera, atol=1e-6)
    layer = scene.view_layers[0]
    for o in scene.objects:
        o.select_set(o.name == "B", view_layer=layer)
    assert [o.name for o, _, _ in scene_posed_cameras(scene, selected_only=True, view_layer=layer)] == ["B"]


def _make_scene_cameras(bpy, rng, n=4, with_photos=True):
    """A scene with ``n`` posed cameras of different fits/shifts and a shared unusual render setup."""
    from viewforge.bridge.images import array_to_image

    scene = bpy.context.scene
    _set_render(scene, (160, 96), 50, (1.0, 1.25))
    objs = []
    for i, fit in zip(range(n), itertools.cycle(["AUTO", "HORIZONTAL", "VERTICAL"])):
        obj = _add_camera(bpy, name=f"cam{i}", lens=20.0 + 5 * i, sensor=(32.0, 24.0), fit=fit,
                          shift=(0.03 * i, -0.02 * i))
        _pose(obj, rng)
        if with_photos:
            img = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
            photo = array_to_image(img, f"photo{i}")
            bg = obj.data.background_images.new()
            bg.image = photo
            obj.data.show_background_images = True
        objs.append(obj)
    return scene, objs


def _scene_reference(bpy, scene, objs, pts):
    return {o.name: (_blender_pixels(bpy, scene, o, pts)[0], np.array(o.matrix_world)) for o in objs}


def _assert_scene_matches(bpy, scene, ref, pts):
    objs = {o.name: o for o in scene.objects if o.type == "CAMERA"}
    assert sorted(objs) == sorted(ref)
    for name, (uv_ref, m_ref) in ref.items():
        obj = objs[name]
        uv, _ = _blender_pixels(bpy, scene, obj, pts)
        assert np.abs(uv - uv_ref).max() < TOL_PX
        np.testing.assert_allclose(np.array(obj.matrix_world), m_ref, atol=1e-6)


def test_round_trip_through_transforms_json(blender, tmp_path):
    """Blender cameras -> transforms.json (engine) -> new Blender cameras: same pixels, same matrices."""
    from viewforge.bridge.cameras import apply_render_settings, common_render_params, create_bpy_camera, scene_posed_cameras
    from viewforge.engine.cameras import cameras_from_transforms, transforms_from_cameras

    rng = np.random.default_rng(11)
    scene, objs = _make_scene_cameras(blender, rng, with_photos=False)
    pts = _points(rng, 300)
    ref = _scene_reference(blender, scene, objs, pts)
    items = scene_posed_cameras(scene)
    meta = transforms_from_cameras([c for _, c, _ in items], [f"images/{o.name}.png" for o, _, _ in items])
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(meta))

    blender.ops.wm.read_factory_settings(use_empty=True)
    scene = blender.context.scene
    cams = cameras_from_transforms(json.loads(path.read_text()))
    params, warnings = common_render_params(cams)
    assert warnings == []
    apply_render_settings(scene, params)
    for cam in cams:
        create_bpy_camera(cam, scene)
    _assert_scene_matches(blender, scene, ref, pts)


def test_round_trip_through_operators(registered, tmp_path):
    """export_transforms -> files -> cameras_from_transforms in an empty scene reproduces the cameras."""
    from viewforge.bridge.images import image_to_array

    bpy = registered
    rng = np.random.default_rng(5)
    scene, objs = _make_scene_cameras(bpy, rng)
    pts = _points(rng, 300)
    ref = _scene_reference(bpy, scene, objs, pts)
    photos = {o.name: image_to_array(o.data.background_images[0].image)[0] for o in objs}
    out = tmp_path / "set" / "transforms.json"
    out.parent.mkdir()
    assert bpy.ops.viewforge.export_transforms(filepath=str(out)) == {"FINISHED"}
    meta = json.loads(out.read_text())
    assert len(meta["frames"]) == 4
    files = sorted(p.name for p in (out.parent / "images").iterdir())
    assert files == [f"cam{i}.png" for i in range(4)]
    # Lenses differ -> per-frame intrinsics; pixel aspect 1:1.25 -> anisotropic focal lengths.
    f0 = meta["frames"][0]
    assert f0["fl_x"] == pytest.approx(1.25 * f0["fl_y"]) and (f0["w"], f0["h"]) == (80, 48)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.viewforge.cameras_from_transforms(filepath=str(out)) == {"FINISHED"}
    scene = bpy.context.scene
    coll = bpy.data.collections["set_transforms"]
    assert sorted(o.name for o in coll.objects) == [f"cam{i}" for i in range(4)]
    # The photos are 80x48 at a 1:1.25 pixel aspect, the render was 160x96 at 50%.
    assert (scene.render.resolution_x * scene.render.resolution_percentage // 100,
            scene.render.resolution_y * scene.render.resolution_percentage // 100) == (80, 48)
    _assert_scene_matches(bpy, scene, ref, pts)
    for i in range(4):
        img = bpy.data.objects[f"cam{i}"].data.background_images[0].image
        np.testing.assert_allclose(image_to_array(img)[0], photos[f"cam{i}"], atol=1e-6)
    assert scene.camera is not None


def test_scene_posed_set(blender):
    """Scene cameras + photos -> PosedSet: cameras at the photos' size, images and alpha as stored."""
    from viewforge.bridge.cameras import camera_from_bpy
    from viewforge.bridge.images import array_to_image
    from viewforge.bridge.posed import scene_posed_set
    from viewforge.engine.errors import CameraError, ImageError

    scene = blender.context.scene
    _set_render(scene, (128, 96), 100, (1.0, 1.0))
    rng = np.random.default_rng(4)
    rgba = (rng.random((48, 64, 4)) * 255).astype(np.uint8)
    rgb = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    a = _add_camera(blender, "a", shift=(0.1, 0.0))
    b = _add_camera(blender, "b")
    for obj, px in ((a, rgba), (b, rgb)):
        _pose(obj, rng)
        obj.data.background_images.new().image = array_to_image(px, f"{obj.name}_photo")
    posed = scene_posed_set(scene)
    assert posed.names == ["a", "b"]
    ca = posed.cameras[0]
    full = camera_from_bpy(a, scene)
    assert (ca.width, ca.height) == (64, 48)
    np.testing.assert_allclose([ca.fx, ca.cx, ca.cy], [full.fx / 2, full.cx / 2, full.cy / 2])
    np.testing.assert_allclose(posed.images[0] * 255, rgba[..., :3], atol=1e-3)
    np.testing.assert_allclose(posed.masks[0] * 255, rgba[..., 3], atol=1e-3)
    np.testing.assert_allclose(posed.images[1] * 255, rgb, atol=1e-3)
    assert (posed.masks[1] == 1).all()

    a.data.background_images[0].image = array_to_image(np.zeros((64, 64, 3), np.uint8), "square")
    with pytest.raises(CameraError, match="'a'.*another aspect ratio"):
        scene_posed_set(scene)
    a.data.background_images.clear()
    with pytest.raises(ImageError, match="'a' has no photo"):
        scene_posed_set(scene)
    a.select_set(False)
    b.select_set(True)
    assert scene_posed_set(scene, selected_only=True).names == ["b"]
