"""Camera operators: each bad input gives one clear error report and changes nothing.

An operator's ERROR report surfaces in Python as ``RuntimeError("Error: <message>")``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender


def _scene_state(bpy):
    scene = bpy.context.scene
    r = scene.render
    return {
        "objects": sorted(o.name for o in bpy.data.objects),
        "cameras": sorted(c.name for c in bpy.data.cameras),
        "images": sorted(i.name for i in bpy.data.images),
        "collections": sorted(c.name for c in bpy.data.collections),
        "render": (r.resolution_x, r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y),
        "camera": scene.camera.name if scene.camera else None,
    }


def _files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _write_png(path: Path, w=32, h=24, seed=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def _pose(i):
    a = 2 * math.pi * i / 5
    from viewforge.engine.cameras import look_at

    return (np.linalg.inv(look_at((4 * math.cos(a), 4 * math.sin(a), 1.0), (0, 0, 0))) @ np.diag([1.0, -1, -1, 1])).tolist()


def _posed_set(folder: Path, n=3, intrinsics=True, sizes=None):
    """A transforms.json with ``n`` frames and their PNGs; returns its path."""
    frames = []
    for i in range(n):
        w, h = sizes[i] if sizes else (32, 24)
        _write_png(folder / "images" / f"f{i}.png", w, h, seed=i)
        frames.append({"file_path": f"images/f{i}.png", "transform_matrix": _pose(i)})
    meta = {"camera_angle_x": 0.8, "frames": frames} if intrinsics else {"frames": frames}
    p = folder / "transforms.json"
    p.write_text(json.dumps(meta))
    return p


def _import_fails(bpy, path, match):
    before = _scene_state(bpy)
    with pytest.raises(RuntimeError, match=match) as info:
        bpy.ops.viewforge.cameras_from_transforms(filepath=str(path))
    assert "Fix:" in str(info.value) and "\n" not in str(info.value).strip()
    assert _scene_state(bpy) == before
    return str(info.value)


# -- import ------------------------------------------------------------------------------------


def test_import_creates_cameras_with_photos(registered, tmp_path):
    bpy = registered
    path = _posed_set(tmp_path / "lego")
    assert bpy.ops.viewforge.cameras_from_transforms(filepath=str(path)) == {"FINISHED"}
    coll = bpy.data.collections["lego_transforms"]
    assert sorted(o.name for o in coll.objects) == ["f0", "f1", "f2"]
    for o in coll.objects:
        assert o.data.background_images[0].image.filepath.endswith(f"{o.name}.png")
    r = bpy.context.scene.render
    assert (r.resolution_x, r.resolution_y, r.resolution_percentage) == (32, 24, 100)
    # A second import reuses the loaded photos (check_existing) and makes a new collection.
    assert bpy.ops.viewforge.cameras_from_transforms(filepath=str(path)) == {"FINISHED"}
    assert len(bpy.data.images) == 3 and "lego_transforms.001" in bpy.data.collections


def test_import_missing_transforms(registered, tmp_path):
    _import_fails(registered, tmp_path / "nowhere" / "transforms.json", "not found")


def test_import_transforms_without_intrinsics(registered, tmp_path):
    _import_fails(registered, _posed_set(tmp_path, intrinsics=False), "no intrinsics")


def test_import_missing_photo(registered, tmp_path):
    path = _posed_set(tmp_path)
    (tmp_path / "images" / "f2.png").unlink()
    msg = _import_fails(registered, path, "f2.png")
    assert "not found" in msg


def test_import_unreadable_photo_removes_loaded_photos(registered, tmp_path):
    """Photos loaded before the bad one are removed again; an image the user had loaded stays."""
    bpy = registered
    path = _posed_set(tmp_path)
    bpy.data.images.load(str(tmp_path / "images" / "f0.png")).use_fake_user = True
    (tmp_path / "images" / "f2.png").write_bytes(b"not a png")
    _import_fails(bpy, path, "cannot be read")
    assert [i.name for i in bpy.data.images] == ["f0.png"]


def test_import_mixed_aspect_ratios(registered, tmp_path):
    path = _posed_set(tmp_path, sizes=[(32, 24), (24, 32), (32, 24)])
    # w/h are not in the file: each camera takes its photo's size; one scene cannot hold both.
    _import_fails(registered, path, "one render resolution")


def test_import_sizes_of_one_aspect_use_the_largest(registered, tmp_path):
    bpy = registered
    path = _posed_set(tmp_path, sizes=[(32, 24), (64, 48), (32, 24)])
    assert bpy.ops.viewforge.cameras_from_transforms(filepath=str(path)) == {"FINISHED"}
    assert (bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y) == (64, 48)


# -- export ------------------------------------------------------------------------------------


def _camera(bpy, name, ctype="PERSP", photo=True):
    from viewforge.bridge.images import array_to_image

    data = bpy.data.cameras.new(name)
    data.type = ctype
    obj = bpy.data.objects.new(name, data)
    obj.location = (0.0, -5.0, 0.0)
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    bpy.context.scene.collection.objects.link(obj)
    if photo:
        bg = data.background_images.new()
        bg.image = array_to_image(np.zeros((48, 64, 3), np.uint8), f"{name}_photo")
    return obj


def _export_fails(bpy, path, match, **kw):
    folder = path.parent if path.parent.exists() else path.parent.parent
    files = _files(folder)
    before = _scene_state(bpy)
    with pytest.raises(RuntimeError, match=match) as info:
        bpy.ops.viewforge.export_transforms(filepath=str(path), **kw)
    assert "Fix:" in str(info.value)
    assert _files(folder) == files and _scene_state(bpy) == before
    return str(info.value)


@pytest.fixture
def render_64x48(registered):
    r = registered.context.scene.render
    r.resolution_x, r.resolution_y = 64, 48
    return registered


def test_export_orthographic_camera(render_64x48, tmp_path):
    bpy = render_64x48
    _camera(bpy, "Good")
    _camera(bpy, "Flat Cam", ctype="ORTHO")
    msg = _export_fails(bpy, tmp_path / "transforms.json", "not supported")
    assert "Flat Cam" in msg


def test_export_camera_without_photo(render_64x48, tmp_path):
    bpy = render_64x48
    _camera(bpy, "Good")
    _camera(bpy, "Bare", photo=False)
    out = tmp_path / "transforms.json"
    msg = _export_fails(bpy, out, "no photo")
    assert "Bare" in msg
    # With the option, the camera is exported; its frame's image is not written.
    assert bpy.ops.viewforge.export_transforms(filepath=str(out), allow_missing_photos=True) == {"FINISHED"}
    frames = json.loads(out.read_text())["frames"]
    assert [f["file_path"] for f in frames] == ["images/Bare.png", "images/Good.png"]
    assert _files(tmp_path) == ["images", "images/Good.png", "transforms.json"]


def test_export_to_missing_folder(render_64x48, tmp_path):
    bpy = render_64x48
    _camera(bpy, "Good")
    _export_fails(bpy, tmp_path / "missing" / "transforms.json", "does not exist")
    assert not (tmp_path / "missing").exists()


def test_export_photo_of_another_aspect(render_64x48, tmp_path):
    bpy = render_64x48
    bpy.context.scene.render.resolution_y = 64
    _camera(bpy, "Square Render")
    _export_fails(bpy, tmp_path / "transforms.json", "another aspect ratio")


def test_export_without_cameras(render_64x48, tmp_path):
    _export_fails(render_64x48, tmp_path / "transforms.json", "no cameras")


def test_export_selected_only(render_64x48, tmp_path):
    bpy = render_64x48
    a = _camera(bpy, "A")
    _camera(bpy, "B")
    layer = bpy.context.view_layer
    for o in bpy.context.scene.objects:
        o.select_set(o == a, view_layer=layer)
    out = tmp_path / "transforms.json"
    assert bpy.ops.viewforge.export_transforms(filepath=str(out), selected_only=True) == {"FINISHED"}
    assert [f["file_path"] for f in json.loads(out.read_text())["frames"]] == ["images/A.png"]


def test_export_writes_file_packed_and_generated_photos(render_64x48, tmp_path):
    """A photo on disk is copied byte for byte, a packed one written from the .blend, a generated
    one (pixels only in memory) encoded as PNG; all read back equal."""
    import cv2

    from viewforge.bridge.images import array_to_image

    bpy = render_64x48
    rng = np.random.default_rng(2)
    src = tmp_path / "src" / "photo_on_disk.png"
    _write_png(src, 64, 48, seed=9)
    on_disk = _camera(bpy, "Disk", photo=False)
    bg = on_disk.data.background_images.new()
    bg.image = bpy.data.images.load(str(src))
    packed = _camera(bpy, "Packed", photo=False)
    packed_px = (rng.random((48, 64, 4)) * 255).astype(np.uint8)
    packed.data.background_images.new().image = array_to_image(packed_px, "packed_photo")
    generated = _camera(bpy, "Generated", photo=False)
    gen_px = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    generated.data.background_images.new().image = array_to_image(gen_px, "generated_photo", pack=False)
    out = tmp_path / "out" / "transforms.json"
    out.parent.mkdir()
    assert bpy.ops.viewforge.export_transforms(filepath=str(out)) == {"FINISHED"}
    images = out.parent / "images"
    assert (images / "Disk.png").read_bytes() == src.read_bytes()
    got = cv2.imread(str(images / "Packed.png"), cv2.IMREAD_UNCHANGED)[..., [2, 1, 0, 3]]
    np.testing.assert_array_equal(got, packed_px)
    got = cv2.imread(str(images / "Generated.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(got, gen_px)
    frames = json.loads(out.read_text())["frames"]
    assert [f["file_path"] for f in frames] == ["images/Disk.png", "images/Generated.png", "images/Packed.png"]
    assert bpy.data.images["generated_photo"].source == "GENERATED"  # the user's image is unchanged


def test_export_photo_names_are_unique(render_64x48, tmp_path):
    from viewforge.bridge.images import array_to_image

    bpy = render_64x48
    for name in ("cam 1", "Cam/1", "cam_1"):  # one file name once made safe, case-insensitively
        cam = _camera(bpy, name, photo=False)
        cam.data.background_images.new().image = array_to_image(np.zeros((48, 64, 3), np.uint8), "same")
    out = tmp_path / "transforms.json"
    assert bpy.ops.viewforge.export_transforms(filepath=str(out)) == {"FINISHED"}
    paths = [f["file_path"] for f in json.loads(out.read_text())["frames"]]
    assert paths == ["images/Cam_1.png", "images/cam_1_1.png", "images/cam_1_2.png"]
    assert all((tmp_path / p).is_file() for p in paths)


def test_import_distortion_is_dropped_with_a_warning(blender, tmp_path):
    from viewforge.bridge.posed import import_transforms

    path = _posed_set(tmp_path / "d")
    meta = json.loads(path.read_text())
    meta.update({"k1": 0.05, "w": 64, "h": 48})  # photos are 32x24: cameras scale to them
    path.write_text(json.dumps(meta))
    existing = blender.data.objects.new("Mine", blender.data.cameras.new("Mine"))
    blender.context.scene.collection.objects.link(existing)
    blender.context.scene.camera = existing
    result = import_transforms(path, blender.context.scene)
    assert any("distortion" in w for w in result.warnings)
    assert len(result.objects) == 3 and blender.context.scene.camera == existing
    r = blender.context.scene.render
    assert (r.resolution_x, r.resolution_y) == (32, 24)


def test_import_photo_of_another_aspect_than_w_h(registered, tmp_path):
    path = _posed_set(tmp_path)
    meta = json.loads(path.read_text())
    meta.update({"w": 64, "h": 64})
    path.write_text(json.dumps(meta))
    _import_fails(registered, path, "different aspect ratio")
