"""Engine camera model: conversions from Blender numbers, transforms.json and COLMAP (no bpy)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from viewforge.engine.cameras import (
    BlenderCameraParams,
    Camera,
    Distortion,
    blender_params_from_camera,
    camera_from_blender,
    cameras_from_colmap,
    cameras_from_transforms,
    look_at,
    orthonormal_pose,
    rotation_angle_deg,
    transforms_from_cameras,
)
from viewforge.engine.errors import CameraError, PosedSetError

RNG = np.random.default_rng(7)


def _random_points(n=200):
    return RNG.uniform(-1.0, 1.0, (n, 3))


def _assert_same_projection(a: Camera, b: Camera, tol=1e-6):
    pts = _random_points()
    ua, za = a.project(pts)
    ub, zb = b.project(pts)
    assert (a.width, a.height) == (b.width, b.height)
    np.testing.assert_allclose(ua, ub, atol=tol)
    np.testing.assert_allclose(za, zb, atol=tol)


def _cam(fx=120.0, fy=120.0, cx=40.0, cy=30.0, w=80, h=60, eye=(0.5, -4.0, 1.0), **kw):
    return Camera(fx, fy, cx, cy, w, h, look_at(eye, (0, 0, 0)), **kw)


def test_look_at_projects_target_to_principal_point_and_up_is_up():
    cam = _cam()
    uv, z = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))
    np.testing.assert_allclose(uv[0], [cam.cx, cam.cy], atol=1e-9)
    assert z[0] == pytest.approx(math.dist((0.5, -4.0, 1.0), (0, 0, 0)))
    assert uv[1, 1] < cam.cy  # world +Z appears higher in the image (smaller row)
    np.testing.assert_allclose(cam.center, [0.5, -4.0, 1.0], atol=1e-12)


def test_blender_numbers_give_expected_intrinsics():
    # 50 mm on a 36 mm sensor, 1920x1080 at 50 %: fx = 50 * 960 / 36
    p = BlenderCameraParams(50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, 1920, 1080, 50)
    cam = camera_from_blender(p)
    assert (cam.width, cam.height) == (960, 540)
    assert cam.fx == pytest.approx(50.0 * 960 / 36.0)
    assert cam.fy == pytest.approx(cam.fx)
    assert (cam.cx, cam.cy) == (480.0, 270.0)
    # identity matrix_world: camera at origin looking down -Z, +Y up
    uv, z = cam.project(np.array([[0.0, 1.0, -10.0]]))
    assert z[0] == pytest.approx(10.0)
    assert uv[0, 1] < cam.cy


def test_blender_vertical_fit_and_shift():
    p = BlenderCameraParams(35.0, 36.0, 20.0, "VERTICAL", 0.1, -0.2, 600, 800, 100, 1.0, 1.0)
    cam = camera_from_blender(p)
    assert cam.fy == pytest.approx(35.0 * 800 / 20.0)
    assert cam.cx == pytest.approx(300 - 0.1 * 800)
    assert cam.cy == pytest.approx(400 - 0.2 * 800)


def test_blender_pixel_aspect_makes_fy_differ():
    p = BlenderCameraParams(50.0, 36.0, 24.0, "HORIZONTAL", 0.0, 0.0, 640, 480, 100, 2.0, 1.0)
    cam = camera_from_blender(p)
    assert cam.fy == pytest.approx(2.0 * cam.fx)


@pytest.mark.parametrize(
    "fx,fy,cx,cy,w,h",
    [
        (120.0, 120.0, 40.0, 30.0, 80, 60),  # landscape, centred
        (150.0, 110.0, 35.0, 41.0, 60, 80),  # portrait, fx > fy, shifted
        (90.0, 130.0, 47.5, 22.0, 96, 48),  # fy > fx
    ],
)
def test_blender_round_trip_reproduces_camera(fx, fy, cx, cy, w, h):
    cam = _cam(fx, fy, cx, cy, w, h, eye=(2.0, -3.0, 1.5), name="cam")
    params = blender_params_from_camera(cam)
    assert params.pixel_aspect_x >= 1.0 and params.pixel_aspect_y >= 1.0
    back = camera_from_blender(params)
    _assert_same_projection(cam, back)
    np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera, atol=1e-12)


@pytest.mark.parametrize("kind,word", [("ORTHO", "orthographic"), ("PANO", "panoramic")])
def test_non_perspective_blender_camera_is_refused_with_its_name(kind, word):
    p = BlenderCameraParams(50.0, 36.0, 24.0, "AUTO", 0, 0, 64, 64, type=kind, name="SideCam")
    with pytest.raises(CameraError) as err:
        camera_from_blender(p)
    text = str(err.value)
    assert "SideCam" in text and "not supported" in text and word in text
    assert "\n" not in text and "Fix:" in text


def test_scaled_blender_camera_ignores_scale_like_blender():
    m = np.diag([2.0, 3.0, 0.5, 1.0])
    m[:3, 3] = (0, 0, 5)
    cam = camera_from_blender(BlenderCameraParams(50, 36, 24, "AUTO", 0, 0, 64, 64, matrix_world=m))
    np.testing.assert_allclose(cam.R, np.diag([1.0, -1.0, -1.0]), atol=1e-12)
    np.testing.assert_allclose(cam.center, [0, 0, 5], atol=1e-12)


def test_camera_rejects_bad_values():
    with pytest.raises(CameraError, match="zero or negative focal length"):
        _cam(fx=0.0)
    with pytest.raises(CameraError, match="zero or negative focal length"):
        _cam(fy=-5.0)
    with pytest.raises(CameraError, match="image size"):
        Camera(100, 100, 0, 0, 0, 10)
    with pytest.raises(CameraError, match="not a rotation"):
        Camera(100, 100, 5, 5, 10, 10, np.diag([2.0, 1.0, 1.0, 1.0]))


def test_resized_camera_scales_pixel_coordinates():
    cam = _cam(fx=130.0, fy=120.0, cx=41.0, cy=29.0)
    small = cam.resized(40, 30)
    pts = _random_points()
    ua, _ = cam.project(pts)
    ub, _ = small.project(pts)
    np.testing.assert_allclose(ub, ua * 0.5, atol=1e-9)


def test_distortion_moves_off_centre_points_only():
    d = Distortion(k1=0.1, k2=-0.05, p1=0.001, p2=-0.002)
    cam = _cam(distortion=d)
    ideal = cam.without_distortion()
    uv_c, _ = cam.project(np.zeros((1, 3)))
    np.testing.assert_allclose(uv_c, ideal.project(np.zeros((1, 3)))[0], atol=1e-9)
    pts = _random_points()
    assert np.abs(cam.project(pts)[0] - ideal.project(pts)[0]).max() > 0.1
    assert _cam(distortion=Distortion()).distortion is None  # all-zero = no distortion


# --- transforms.json ------------------------------------------------------------------------


def _c2w_gl(cam: Camera) -> list:
    return cam.camera_to_world_gl.tolist()


def test_transforms_camera_angle_x_form():
    ref = _cam(fx=100.0, fy=100.0, cx=40.0, cy=30.0)
    meta = {
        "camera_angle_x": 2 * math.atan(40.0 / 100.0),
        "frames": [{"file_path": "./train/r_0", "transform_matrix": _c2w_gl(ref)}],
    }
    (cam,) = cameras_from_transforms(meta, image_sizes=[(80, 60)])
    assert cam.name == "r_0"
    _assert_same_projection(cam, ref)


def test_transforms_fl_form_with_distortion_and_per_frame_override():
    a = _cam(fx=110.0, fy=105.0, cx=39.0, cy=31.0)
    meta = {
        "fl_x": 110.0, "fl_y": 105.0, "cx": 39.0, "cy": 31.0, "w": 80, "h": 60,
        "k1": 0.01, "k2": -0.002, "p1": 0.0005, "p2": 0.0001,
        "frames": [
            {"file_path": "a.png", "transform_matrix": _c2w_gl(a)},
            {"file_path": "b.png", "transform_matrix": _c2w_gl(a), "fl_x": 200.0, "k1": 0.0, "w": 100},
        ],
    }
    ca, cb = cameras_from_transforms(meta)
    assert ca.distortion == Distortion(k1=0.01, k2=-0.002, p1=0.0005, p2=0.0001)
    _assert_same_projection(ca.without_distortion(), a)
    assert cb.fx == 200.0 and cb.fy == 105.0 and cb.width == 100 and cb.distortion.k1 == 0.0
    assert cb.distortion.k2 == -0.002  # global key still applies


def test_transforms_fl_y_defaults_to_fl_x_and_centre_to_image_centre():
    ref = _cam(fx=90.0, fy=90.0, cx=40.0, cy=30.0)
    meta = {"fl_x": 90.0, "w": 80, "h": 60, "frames": [{"file_path": "x.png", "transform_matrix": _c2w_gl(ref)}]}
    (cam,) = cameras_from_transforms(meta)
    _assert_same_projection(cam, ref)


def test_transforms_round_trip_shared_and_per_frame():
    cams = [_cam(eye=(1, -4, 1), name="a"), _cam(eye=(-1, -4, 2), name="b")]
    d = transforms_from_cameras(cams, ["images/a.png", "images/b.png"])
    assert "fl_x" in d and "camera_angle_x" in d  # shared intrinsics at top level
    back = cameras_from_transforms(d)
    for a, b in zip(cams, back):
        _assert_same_projection(a, b)
    mixed = [cams[0], _cam(fx=200.0, w=100, cx=50.0, eye=(3, 3, 3))]
    d2 = transforms_from_cameras(mixed, ["a.png", "b.png"])
    assert "fl_x" not in d2 and d2["frames"][1]["fl_x"] == 200.0
    for a, b in zip(mixed, cameras_from_transforms(d2)):
        _assert_same_projection(a, b)


def test_transforms_without_intrinsics_is_a_clear_error():
    meta = {"w": 80, "h": 60, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}
    with pytest.raises(PosedSetError) as err:
        cameras_from_transforms(meta)
    assert "no intrinsics" in str(err.value) and "camera_angle_x" in str(err.value)


@pytest.mark.parametrize("key,value", [("fl_x", 0.0), ("fl_x", -100.0), ("camera_angle_x", 0.0), ("camera_angle_x", -0.5)])
def test_transforms_zero_or_negative_focal_is_a_clear_error(key, value):
    meta = {key: value, "w": 80, "h": 60, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}
    with pytest.raises(CameraError) as err:
        cameras_from_transforms(meta)
    assert "a.png" in str(err.value)


def test_transforms_structural_errors():
    with pytest.raises(PosedSetError, match="no frames"):
        cameras_from_transforms({"fl_x": 10})
    with pytest.raises(PosedSetError, match="transform_matrix"):
        cameras_from_transforms({"fl_x": 10, "w": 8, "h": 8, "frames": [{"file_path": "a.png"}]})
    with pytest.raises(PosedSetError, match="no image size"):
        cameras_from_transforms({"fl_x": 10, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(PosedSetError, match="not a number"):
        cameras_from_transforms({"fl_x": "ten", "w": 8, "h": 8, "frames": [{"transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(PosedSetError, match="4x4"):
        cameras_from_transforms({"fl_x": 10, "w": 8, "h": 8, "frames": [{"transform_matrix": [[1, 0], [0, 1]]}]})


# --- COLMAP -----------------------------------------------------------------------------------


def _rot_to_qvec(r: np.ndarray) -> np.ndarray:
    # Shepperd's method; returns (w, x, y, z) with w >= 0
    m = r
    t = np.trace(m)
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q if q[0] >= 0 else -q


def _colmap_scene():
    cams = [
        _cam(fx=100.0, fy=100.0, cx=40.0, cy=30.0, eye=(1, -4, 1), name="img_a.jpg"),
        _cam(fx=100.0, fy=100.0, cx=40.0, cy=30.0, eye=(-2, -3, 2), name="img_b.jpg",
             distortion=Distortion(k1=0.02, k2=-0.01, p1=0.001, p2=0.002)),
    ]
    return cams


def _write_colmap_txt(d, cams):
    (d / "cameras.txt").write_text(
        "# Camera list\n"
        "1 PINHOLE 80 60 100 100 40 30\n"
        "2 OPENCV 80 60 100 100 40 30 0.02 -0.01 0.001 0.002\n"
    )
    lines = ["# Image list", "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
    for i, cam in enumerate(cams):
        q, t = _rot_to_qvec(cam.R), cam.t
        lines.append(f"{i + 1} {' '.join(map(repr, q))} {' '.join(map(repr, t))} {i + 1} {cam.name}")
        lines.append("" if i == 0 else "12.5 20.25 -1")  # points line: empty or not
    (d / "images.txt").write_text("\n".join(lines) + "\n")


def _write_colmap_bin(d, cams):
    with open(d / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", 2))
        f.write(struct.pack("<iiQQ", 1, 1, 80, 60) + struct.pack("<4d", 100, 100, 40, 30))
        f.write(struct.pack("<iiQQ", 2, 4, 80, 60) + struct.pack("<8d", 100, 100, 40, 30, 0.02, -0.01, 0.001, 0.002))
    with open(d / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for i, cam in enumerate(cams):
            f.write(struct.pack("<i", i + 1) + struct.pack("<4d", *_rot_to_qvec(cam.R)) + struct.pack("<3d", *cam.t))
            f.write(struct.pack("<i", i + 1) + cam.name.encode() + b"\x00")
            f.write(struct.pack("<Q", 1) + struct.pack("<ddq", 1.0, 2.0, -1))


@pytest.mark.parametrize("writer", [_write_colmap_txt, _write_colmap_bin])
def test_colmap_models_read_back(tmp_path, writer):
    cams = _colmap_scene()
    writer(tmp_path, cams)
    got = cameras_from_colmap(tmp_path)
    assert [c.name for c in got] == ["img_a.jpg", "img_b.jpg"]
    assert got[0].distortion is None
    assert got[1].distortion == cams[1].distortion
    for a, b in zip(cams, got):
        _assert_same_projection(a, b, tol=1e-6)
        assert rotation_angle_deg(a.R, b.R) < 1e-6


def test_colmap_errors(tmp_path):
    with pytest.raises(PosedSetError, match="not a COLMAP sparse model"):
        cameras_from_colmap(tmp_path)
    (tmp_path / "cameras.txt").write_text("1 OPENCV_FISHEYE 80 60 100 100 40 30 0 0 0 0\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n\n")
    with pytest.raises(CameraError, match="OPENCV_FISHEYE is not supported"):
        cameras_from_colmap(tmp_path)


def test_rotation_angle():
    r = look_at((0, -3, 0), (0, 0, 0))[:3, :3]
    a = math.radians(3.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    assert rotation_angle_deg(r, rz @ r) == pytest.approx(3.0, abs=1e-9)


def test_orthonormal_pose_projects_onto_a_rotation_and_keeps_the_translation():
    w2c = look_at(np.array([2.0, -1.0, 1.5]), (0, 0, 0))
    noisy = w2c.copy()
    noisy[:3, :3] += 1e-4 * np.random.default_rng(0).normal(size=(3, 3))
    out = orthonormal_pose(noisy)
    np.testing.assert_allclose(out[:3, :3] @ out[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(out[:3, :3], w2c[:3, :3], atol=1e-3)
    np.testing.assert_array_equal(out[:3, 3], noisy[:3, 3])
    np.testing.assert_array_equal(out[3], [0, 0, 0, 1])
    flipped = w2c.copy()
    flipped[:3, 0] *= -1  # a reflection: the nearest rotation, not the reflection itself
    assert np.linalg.det(orthonormal_pose(flipped)[:3, :3]) == pytest.approx(1.0)


def test_orthographic_camera_projects_parallel_and_unprojects_back():
    from viewforge.engine.mvgen.base import ortho_orbit_camera

    cam = ortho_orbit_camera(90.0, 0.0, 1.8, 0.55, 768)  # on +X, looking at the origin
    assert cam.is_ortho and cam.fov_x == 0.0
    assert np.allclose(cam.center, [1.8, 0.0, 0.0])
    assert np.allclose(cam.ortho_extent, (1.1, 1.1))
    pts = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.55], [-0.7, -0.55, 0.0]])
    uv, z = cam.project(pts)
    # Depth does not change the pixel: the three points differ only in x (depth) and y/z.
    assert np.allclose(uv[0], [384.0, 384.0])
    assert np.allclose(uv[1], [384.0, 0.0])  # top edge of the image (+Z is up)
    assert np.allclose(uv[2], [0.0, 384.0])  # -Y is image left seen from +X
    assert np.allclose(z, [1.8, 1.5, 2.5])
    assert np.allclose(cam.unproject(uv, z), pts)
    # Resizing keeps the world extent.
    assert np.allclose(cam.resized(64, 64).ortho_extent, (1.1, 1.1))


def test_perspective_unproject_inverts_project():
    cam = Camera(500.0, 480.0, 330.0, 250.0, 640, 480, look_at((2.0, -3.0, 1.0), (0.0, 0.0, 0.0)))
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    uv, z = cam.project(pts)
    assert np.allclose(cam.unproject(uv, z), pts)


def test_unknown_projection_is_refused():
    with pytest.raises(CameraError, match="unknown projection"):
        Camera(100.0, 100.0, 50.0, 50.0, 100, 100, projection="fisheye")
