"""engine.io.posed: transforms.json + images in, PosedSet out, and back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewforge.engine.cameras import Camera, Distortion, look_at
from viewforge.engine.errors import (
    CameraError,
    Cancelled,
    ImageError,
    InputError,
    OutputError,
    PosedSetError,
)
from viewforge.engine.io import PosedSet, load_posed_set, read_transforms, write_posed_set
from viewforge.engine.progress import CancelToken

RNG = np.random.default_rng(3)


def ring_poses(n: int, radius: float = 3.0) -> list[np.ndarray]:
    """World-to-camera poses on a ring around the origin, looking at it (Z up)."""
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        out.append(look_at((radius * math.cos(a), radius * math.sin(a), 0.8), (0, 0, 0)))
    return out


def c2w_gl(w2c: np.ndarray) -> list:
    return Camera(1, 1, 0, 0, 1, 1, w2c).camera_to_world_gl.tolist()


def save(path, pixels: np.ndarray) -> None:
    """uint8 (H, W, 3|4) -> PNG/JPEG with Pillow (independent of the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)


def write_json(path, data) -> None:
    path.write_text(json.dumps(data))


def one_line(e: BaseException) -> bool:
    return "\n" not in str(e) and "Fix:" in str(e)


def gaussian_dot(width: int, height: int, uv, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return np.exp(-((xs - uv[0]) ** 2 + (ys - uv[1]) ** 2) / (2 * sigma**2))


def centroid(img: np.ndarray) -> np.ndarray:
    w = np.clip(img.astype(np.float64) - 0.01, 0, None)
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


# --------------------------------------------------------------------------------------------
# reading the supported forms
# --------------------------------------------------------------------------------------------


def test_camera_angle_x_form_nerf_synthetic(tmp_path):
    """NeRF-synthetic layout: './train/r_0' without extension, RGBA, no w/h, extra keys."""
    w2cs = ring_poses(3)
    pixels = [RNG.integers(0, 256, (32, 48, 4), dtype=np.uint8) for _ in w2cs]
    for i, px in enumerate(pixels):
        save(tmp_path / "train" / f"r_{i}.png", px)
    angle = 0.6911112070083618
    write_json(
        tmp_path / "transforms_train.json",
        {
            "camera_angle_x": angle,
            "aabb_scale": 4,
            "frames": [
                {"file_path": f"./train/r_{i}", "rotation": 0.01, "transform_matrix": c2w_gl(w2c)}
                for i, w2c in enumerate(w2cs)
            ],
        },
    )
    posed = load_posed_set(tmp_path / "transforms_train.json")
    assert len(posed) == 3 and posed.names == ["r_0", "r_1", "r_2"]
    assert posed.meta == {"aabb_scale": 4, "source_size": [48, 32]}  # the images' size as read
    for cam, w2c, px, img, mask in zip(posed.cameras, w2cs, pixels, posed.images, posed.masks):
        assert (cam.width, cam.height) == (48, 32)
        assert cam.fx == pytest.approx(0.5 * 48 / math.tan(0.5 * angle))
        assert cam.fy == pytest.approx(cam.fx)
        assert (cam.cx, cam.cy) == (24.0, 16.0)
        np.testing.assert_allclose(cam.world_to_camera, w2c, atol=1e-12)
        assert img.dtype == np.float32 and img.shape == (32, 48, 3)
        np.testing.assert_allclose(img, px[:, :, :3] / 255.0, atol=1e-6)
        np.testing.assert_allclose(mask, px[:, :, 3] / 255.0, atol=1e-6)


def test_fl_form_with_jpeg_folder_argument_and_no_alpha(tmp_path):
    w2cs = ring_poses(2)
    for i in range(2):
        save(tmp_path / "images" / f"frame_{i:05d}.jpg", np.full((40, 50, 3), 128, np.uint8))
    write_json(
        tmp_path / "transforms.json",
        {
            "fl_x": 61.0,
            "fl_y": 59.0,
            "cx": 26.5,
            "cy": 19.0,
            "w": 50,
            "h": 40,
            "frames": [
                {"file_path": f"images/frame_{i:05d}", "transform_matrix": c2w_gl(w)} for i, w in enumerate(w2cs)
            ],
        },
    )
    posed = load_posed_set(tmp_path)  # the folder that holds transforms.json
    assert posed.masks is None
    cam = posed.cameras[1]
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (61.0, 59.0, 26.5, 19.0, 50, 40)
    assert np.abs(posed.images[0] - 128 / 255).max() < 2 / 255


def test_per_frame_intrinsics_different_sizes_and_mixed_alpha(tmp_path):
    w2cs = ring_poses(2)
    save(tmp_path / "a.png", np.zeros((30, 40, 4), np.uint8) + 200)
    save(tmp_path / "b.png", np.zeros((40, 30, 3), np.uint8))
    write_json(
        tmp_path / "transforms.json",
        {
            "frames": [
                {"file_path": "a.png", "fl_x": 35.0, "cx": 20.0, "cy": 15.0, "transform_matrix": c2w_gl(w2cs[0])},
                {"file_path": "b.png", "camera_angle_x": 1.0, "w": 30, "h": 40, "transform_matrix": c2w_gl(w2cs[1])},
            ]
        },
    )
    posed = load_posed_set(tmp_path / "transforms.json")
    a, b = posed.cameras
    assert (a.width, a.height, a.fx, a.fy) == (40, 30, 35.0, 35.0)
    assert (b.width, b.height) == (30, 40) and b.fx == pytest.approx(15 / math.tan(0.5))
    assert posed.masks is not None
    np.testing.assert_allclose(posed.masks[0], 200 / 255, atol=1e-6)
    assert np.all(posed.masks[1] == 1.0)  # no alpha in b.png: fully opaque


def test_images_downscaled_after_calibration_scale_the_camera(tmp_path):
    save(tmp_path / "a.png", np.zeros((40, 60, 3), np.uint8))
    write_json(
        tmp_path / "transforms.json",
        {
            "fl_x": 200.0,
            "cx": 121.0,
            "cy": 79.0,
            "w": 240,
            "h": 160,
            "frames": [{"file_path": "a.png", "transform_matrix": c2w_gl(ring_poses(1)[0])}],
        },
    )
    cam = load_posed_set(tmp_path / "transforms.json").cameras[0]
    assert (cam.width, cam.height) == (60, 40)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((50.0, 50.0, 30.25, 19.75))


def test_resolution_resizes_and_keeps_projection_consistent(tmp_path):
    cam = Camera(100.0, 100.0, 60.0, 40.0, 120, 80, look_at((0.3, -3.0, 0.4), (0, 0, 0)))
    point = np.array([[0.25, 0.1, 0.2]])
    uv = cam.project(point)[0][0]
    dot = gaussian_dot(120, 80, uv, sigma=4.0)
    save(tmp_path / "a.png", (np.repeat(dot[:, :, None], 3, axis=2) * 255).round().astype(np.uint8))
    write_json(
        tmp_path / "transforms.json",
        {
            "fl_x": 100.0,
            "w": 120,
            "h": 80,
            "frames": [{"file_path": "a.png", "transform_matrix": cam.camera_to_world_gl.tolist()}],
        },
    )
    posed = load_posed_set(tmp_path / "transforms.json", resolution=64)
    small = posed.cameras[0]
    assert (small.width, small.height) == (64, 43)  # longer side 64, 80 * 64 / 120 = 42.67 -> 43
    assert posed.images[0].shape == (43, 64, 3)
    suv = small.project(point)[0][0]
    np.testing.assert_allclose(suv, uv * [64 / 120, 43 / 80], atol=1e-9)
    assert np.linalg.norm(centroid(posed.images[0][:, :, 0]) - suv) < 0.1
    # Upscaling works the same way.
    big = load_posed_set(tmp_path / "transforms.json", resolution=240)
    assert (big.cameras[0].width, big.cameras[0].height) == (240, 160)
    assert np.linalg.norm(centroid(big.images[0][:, :, 0]) - big.cameras[0].project(point)[0][0]) < 0.1


def test_distortion_is_removed_before_resizing(tmp_path):
    dist = Distortion(k1=0.2, k2=0.05, p1=0.003, p2=-0.002)
    cam = Camera(110.0, 110.0, 80.0, 60.0, 160, 120, look_at((0.0, -3.0, 0.0), (0, 0, 0)), dist)
    points = np.array([[1.6, 0.0, 1.0], [-1.7, 0.0, -0.9]])
    distorted = cam.project(points)[0]
    img = sum(gaussian_dot(160, 120, p, 2.0) for p in distorted)
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[..., :3] = (np.clip(img, 0, 1)[:, :, None] * 255).round()
    rgba[..., 3] = 255
    save(tmp_path / "d.png", rgba)
    write_json(
        tmp_path / "transforms.json",
        {
            "fl_x": 110.0,
            "k1": 0.2,
            "k2": 0.05,
            "p1": 0.003,
            "p2": -0.002,
            "w": 160,
            "h": 120,
            "frames": [{"file_path": "d.png", "transform_matrix": cam.camera_to_world_gl.tolist()}],
        },
    )
    kept = load_posed_set(tmp_path / "transforms.json", undistort=False)
    assert kept.cameras[0].distortion == dist
    posed = load_posed_set(tmp_path / "transforms.json", resolution=80)
    out = posed.cameras[0]
    assert out.distortion is None and (out.width, out.height) == (80, 60)
    ideal = out.project(points)[0]
    assert np.linalg.norm(ideal - distorted / 2, axis=1).max() > 2.0  # undistortion matters here
    gray = posed.images[0][:, :, 0]
    for p in ideal:
        u, v = int(p[0]), int(p[1])
        win = np.zeros_like(gray)
        win[v - 6 : v + 7, u - 6 : u + 7] = gray[v - 6 : v + 7, u - 6 : u + 7]
        assert np.linalg.norm(centroid(win) - p) < 0.15
    assert posed.masks[0][30, 40] == pytest.approx(1.0) and posed.masks[0][0, 0] < 0.5


def test_progress_and_cancel(tmp_path):
    w2cs = ring_poses(4)
    for i in range(4):
        save(tmp_path / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    write_json(
        tmp_path / "transforms.json",
        {
            "camera_angle_x": 0.8,
            "frames": [{"file_path": f"{i}.png", "transform_matrix": c2w_gl(w)} for i, w in enumerate(w2cs)],
        },
    )
    events = []
    load_posed_set(tmp_path / "transforms.json", progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4] and events[-1].fraction == 1.0
    assert {e.stage for e in events} == {"load"}
    token = CancelToken()

    def cancel_after_two(event):
        if event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        load_posed_set(tmp_path / "transforms.json", progress=cancel_after_two, cancel=token)


# --------------------------------------------------------------------------------------------
# bad input: one typed, one-line error each, naming the frame or file
# --------------------------------------------------------------------------------------------


@pytest.fixture
def good_set(tmp_path):
    """Three 16x12 PNGs and a transforms.json; returns (folder, transforms dict)."""
    w2cs = ring_poses(3)
    for i in range(3):
        save(tmp_path / "images" / f"im{i}.png", np.zeros((12, 16, 3), np.uint8))
    meta = {
        "camera_angle_x": 0.9,
        "frames": [{"file_path": f"images/im{i}.png", "transform_matrix": c2w_gl(w)} for i, w in enumerate(w2cs)],
    }
    write_json(tmp_path / "transforms.json", meta)
    return tmp_path, meta


def test_missing_transforms_json(tmp_path):
    with pytest.raises(PosedSetError, match="not found") as e:
        load_posed_set(tmp_path / "transforms.json")
    assert one_line(e.value)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{ not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"frames": []}', "no frames"),
        ('{"camera_angle_x": 1}', "no frames"),
    ],
)
def test_bad_transforms_json(tmp_path, text, match):
    (tmp_path / "transforms.json").write_text(text)
    with pytest.raises(PosedSetError, match=match) as e:
        read_transforms(tmp_path / "transforms.json")
    assert one_line(e.value)


def test_missing_image(good_set):
    root, _ = good_set
    (root / "images" / "im1.png").unlink()
    with pytest.raises(ImageError, match=r"frame 1 \(images/im1.png\).*not found") as e:
        load_posed_set(root / "transforms.json")
    assert one_line(e.value)


def test_unreadable_image(good_set):
    root, _ = good_set
    (root / "images" / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"frame 2 .*im2.png.*cannot be decoded") as e:
        load_posed_set(root / "transforms.json")
    assert one_line(e.value)


def test_image_count_not_matching_frames(good_set):
    root, meta = good_set
    meta["frames"] += [dict(meta["frames"][0], file_path=f"images/extra{i}.png") for i in range(2)]
    write_json(root / "transforms.json", meta)
    with pytest.raises(PosedSetError, match="lists 5 frames but only 3 of their images exist") as e:
        load_posed_set(root / "transforms.json")
    assert "extra0" in str(e.value) and one_line(e.value)


def test_transforms_without_intrinsics(good_set):
    root, meta = good_set
    del meta["camera_angle_x"]
    write_json(root / "transforms.json", meta)
    with pytest.raises(PosedSetError, match="no intrinsics") as e:
        load_posed_set(root / "transforms.json")
    assert "camera_angle_x" in str(e.value) and one_line(e.value)


@pytest.mark.parametrize(
    "keys",
    [{"fl_x": 0.0}, {"fl_x": -20.0}, {"fl_x": 30.0, "fl_y": -1.0}, {"camera_angle_x": -0.5}, {"camera_angle_x": 0.0}],
)
def test_zero_or_negative_focal_length(good_set, keys):
    root, meta = good_set
    del meta["camera_angle_x"]
    meta.update(keys)
    write_json(root / "transforms.json", meta)
    with pytest.raises(CameraError, match="frame 0") as e:
        load_posed_set(root / "transforms.json")
    assert one_line(e.value)


def test_aspect_mismatch_between_transforms_and_image(good_set):
    root, meta = good_set
    meta.update(w=16, h=16)  # images are 16x12
    write_json(root / "transforms.json", meta)
    with pytest.raises(PosedSetError, match="16x12 but transforms.json says 16x16") as e:
        load_posed_set(root / "transforms.json")
    assert one_line(e.value)


def test_frame_without_file_path_and_bad_resolution(good_set):
    root, meta = good_set
    with pytest.raises(InputError, match="resolution"):
        load_posed_set(root / "transforms.json", resolution=0)
    del meta["frames"][1]["file_path"]
    write_json(root / "transforms.json", meta)
    with pytest.raises(PosedSetError, match="frame 1 has no 'file_path'"):
        load_posed_set(root / "transforms.json")


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def make_posed(masks: bool) -> PosedSet:
    cams = [
        Camera(40.0, 41.0, 16.5, 12.0, 32, 24, w2c, Distortion(k1=0.01) if i == 0 else None, f"view {i}")
        for i, w2c in enumerate(ring_poses(3))
    ]
    images = [RNG.random((24, 32, 3)).astype(np.float32) for _ in cams]
    ms = [RNG.random((24, 32)).astype(np.float32) for _ in cams] if masks else None
    return PosedSet(cams, images, ms, [c.name for c in cams], {"aabb_scale": 2, "note": "x", "fl_x": 999})


def test_write_and_read_back(tmp_path):
    posed = make_posed(masks=True)
    out = write_posed_set(posed, tmp_path / "set")
    assert out == (tmp_path / "set").absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folder left behind
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == ["0000_view_0.png", "0001_view_1.png", "0002_view_2.png"]
    data = json.loads((out / "transforms.json").read_text())
    assert data["aabb_scale"] == 2 and data["note"] == "x" and "fl_x" not in data  # per-frame intrinsics
    assert data["frames"][0]["fl_x"] == 40.0 and data["frames"][0]["k1"] == 0.01
    back = load_posed_set(out / "transforms.json", undistort=False)
    assert "source_size" not in data  # the loader's note about the files it read is not written back
    assert back.meta == {"aabb_scale": 2, "note": "x", "source_size": [32, 24]}
    assert back.names == ["0000_view_0", "0001_view_1", "0002_view_2"]
    for a, b in zip(posed.cameras, back.cameras):
        np.testing.assert_allclose(b.K, a.K, atol=1e-9)
        np.testing.assert_allclose(b.world_to_camera, a.world_to_camera, atol=1e-9)
        assert b.distortion == a.distortion
    for a, b in zip(posed.images + posed.masks, back.images + back.masks):
        np.testing.assert_allclose(b, a, atol=0.5 / 255 + 1e-6)
    # Writing again replaces the folder atomically.
    posed2 = make_posed(masks=False)
    write_posed_set(posed2, out, image_format="jpg")
    assert sorted(p.suffix for p in (out / "images").iterdir()) == [".jpg"] * 3
    assert load_posed_set(out).masks is None


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist") as e:
        write_posed_set(make_posed(masks=False), tmp_path / "missing" / "set")
    assert one_line(e.value) and not (tmp_path / "missing").exists()


def test_write_jpeg_with_masks_is_refused(tmp_path):
    with pytest.raises(OutputError, match="JPEG"):
        write_posed_set(make_posed(masks=True), tmp_path / "set", image_format="jpg")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# real data (skipped in a user's clone)
# --------------------------------------------------------------------------------------------

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.shared_data
def test_nerf_synthetic_lego_cameras_see_the_object():
    """lego: extension-less paths, RGBA, camera_angle_x; the object at the origin, Z up."""
    posed = load_posed_set(SHARED_DATA / "posed" / "lego" / "transforms_train.json", resolution=100)
    assert len(posed) == 100 and posed.masks is not None
    for cam, mask in zip(posed.cameras, posed.masks, strict=True):
        assert (cam.width, cam.height) == (100, 100)
        assert cam.fx == pytest.approx(50 / math.tan(0.5 * 0.6911112070083618))
        uv = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))[0]
        assert mask[int(uv[0, 1]), int(uv[0, 0])] > 0.5  # the origin lies on the object in every view
        assert uv[1, 1] < uv[0, 1]  # world +Z appears up in the image


@pytest.mark.shared_data
def test_fox_photos_with_distortion_load_undistorted():
    path = SHARED_DATA / "posed" / "fox_photos" / "transforms_subset40.json"
    posed = load_posed_set(path, resolution=128)
    assert len(posed) == 40 and posed.masks is None and posed.meta.get("aabb_scale") == 4
    cam = posed.cameras[0]
    assert (cam.width, cam.height) == (72, 128) and cam.distortion is None
    assert cam.fx == pytest.approx(1375.52 * 72 / 1080) and cam.cy == pytest.approx(965.268 * 128 / 1920)
    assert load_posed_set(path, resolution=64, undistort=False).cameras[0].distortion is not None


def test_dumps_transforms_puts_number_lists_on_one_line_and_keeps_strings():
    from viewforge.engine.io.posed import dumps_transforms, write_transforms

    meta = {"camera_angle_x": 0.5, "name": "a[1,2]", "empty": [],
            "frames": [{"file_path": "images/x[1,\n2].png", "transform_matrix": [[1.0, 0.0], [0.0, -1e-05]]}]}
    text = dumps_transforms(meta)
    assert json.loads(text) == meta and text.endswith("}\n")
    assert '"transform_matrix": [\n        [1.0, 0.0],\n        [0.0, -1e-05]\n      ]' in text
    assert '"a[1,2]"' in text and '"empty": []' in text
    with pytest.raises(OutputError):
        dumps_transforms({"frames": [], "bad": object()})


def test_every_transforms_json_writer_goes_through_dumps_transforms():
    # one writer: the other modules call engine/io/posed.py instead of json.dumps-ing frames themselves
    root = Path(__file__).resolve().parents[1]
    for rel in ("bridge/render.py", "bridge/posed.py", "bridge/reconstruct.py"):
        src = (root / rel).read_text()
        assert "dumps_transforms" in src or "write_transforms" in src, rel
        assert "json.dumps(transforms" not in src and "json.dumps(meta" not in src, rel
