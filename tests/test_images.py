"""engine.images: loading every PNG flavour and JPEG, saving, resizing, undistortion."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from viewforge.engine.cameras import Camera, Distortion, look_at
from viewforge.engine.errors import ImageError, OutputError
from viewforge.engine.images import gaussian_blur, load_image, resize, save_png, undistort

RNG = np.random.default_rng(7)


def write_raw_png(path, pixels: np.ndarray, color_type: int) -> None:
    """A minimal PNG encoder (independent of OpenCV/Pillow): uint8/uint16 (H, W[, C]).

    color_type: 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA.
    """
    a = pixels if pixels.ndim == 3 else pixels[:, :, None]
    h, w, _ = a.shape
    depth = 16 if a.dtype == np.uint16 else 8
    raw = a.astype(">u2" if depth == 16 else "u1").reshape(h, -1).view(np.uint8)
    rows = b"".join(b"\x00" + raw[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "channels,color_type,dtype",
    [
        (3, 2, np.uint8),
        (4, 6, np.uint8),
        (1, 0, np.uint8),
        (2, 4, np.uint8),
        (3, 2, np.uint16),
        (4, 6, np.uint16),
        (1, 0, np.uint16),
        (2, 4, np.uint16),
    ],
)
def test_load_png_flavours(tmp_path, channels, color_type, dtype):
    top = np.iinfo(dtype).max
    px = RNG.integers(0, top + 1, size=(5, 7, channels), dtype=np.uint64).astype(dtype)
    path = tmp_path / "im.png"
    write_raw_png(path, px, color_type)
    rgb, alpha = load_image(path)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.float32
    colour = px[:, :, :3] if channels >= 3 else np.repeat(px[:, :, :1], 3, axis=2)
    # Exact to float32 precision: 16-bit data keeps all 16 bits (not truncated to 8).
    np.testing.assert_allclose(rgb, colour / top, atol=1e-6)
    if channels in (2, 4):
        assert alpha is not None and alpha.shape == (5, 7) and alpha.dtype == np.float32
        np.testing.assert_allclose(alpha, px[:, :, -1] / top, atol=1e-6)
    else:
        assert alpha is None


def test_16bit_precision_beyond_8bit(tmp_path):
    px = np.full((2, 2, 3), 1000, np.uint16)  # 1000/65535 is not a multiple of 1/255
    write_raw_png(tmp_path / "a.png", px, 2)
    rgb, _ = load_image(tmp_path / "a.png")
    assert abs(rgb[0, 0, 0] - 1000 / 65535) < 1e-7
    assert abs(rgb[0, 0, 0] * 255 - round(rgb[0, 0, 0] * 255)) > 0.1


def test_load_jpeg_and_exif_orientation_is_ignored(tmp_path):
    from PIL import Image

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (250, 10, 10)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "o.jpg", quality=95, exif=exif.tobytes())
    rgb, alpha = load_image(tmp_path / "o.jpg")
    assert alpha is None
    assert rgb.shape == (20, 40, 3)  # stored pixels, not rotated to 40x20
    assert np.abs(rgb[10, 5] - np.array([250, 10, 10]) / 255).max() < 0.05
    assert np.abs(rgb[10, 35]).max() < 0.05


def test_missing_image_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="nope.png") as e:
        load_image(tmp_path / "nope.png")
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_image_is_an_image_error(tmp_path, content):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut in half
        write_raw_png(path, RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8), 2)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.png"):
        load_image(path)
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_save_png_round_trip(tmp_path, bit_depth):
    rgb = RNG.random((6, 9, 3)).astype(np.float32)
    alpha = RNG.random((6, 9)).astype(np.float32)
    out = save_png(tmp_path / "x.png", rgb, alpha, bit_depth=bit_depth)
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp left over
    back, back_alpha = load_image(out)
    tol = 0.5 / (2**bit_depth - 1) + 1e-6
    np.testing.assert_allclose(back, rgb, atol=tol)
    np.testing.assert_allclose(back_alpha, alpha, atol=tol)
    rgb_only, none = load_image(save_png(tmp_path / "y.png", rgb, bit_depth=bit_depth))
    assert none is None and np.abs(rgb_only - rgb).max() <= tol


def test_save_png_into_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_png(tmp_path / "missing" / "x.png", np.zeros((2, 2, 3)))
    assert not (tmp_path / "missing").exists()


def test_resize_area_and_linear():
    img = RNG.random((8, 12, 3)).astype(np.float32)
    small = resize(img, 6, 4)
    assert small.shape == (4, 6, 3) and small.dtype == np.float32
    block_mean = img.reshape(4, 2, 6, 2, 3).mean(axis=(1, 3))  # area filter = exact 2x2 mean
    np.testing.assert_allclose(small, block_mean, atol=1e-5)
    gray = img[:, :, 0]
    assert resize(gray, 6, 4).shape == (4, 6)
    assert resize(gray[:, :, None], 6, 4).shape == (4, 6, 1)
    big = resize(np.full((4, 4), 0.25, np.float32), 9, 7)
    assert big.shape == (7, 9) and np.allclose(big, 0.25)
    with pytest.raises(ImageError):
        resize(img, 0, 3)


def gaussian_dots(width: int, height: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) image of Gaussian dots at continuous pixel positions (pixel centres at i + 0.5)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    img = np.zeros((height, width), np.float64)
    for u, v in centres:
        img += np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))
    return np.clip(img, 0, 1).astype(np.float32)


def dot_centroid(img: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
    """Intensity-weighted centroid (continuous coordinates) in a window around ``near``."""
    u0, v0 = int(near[0]), int(near[1])
    win = img[v0 - radius : v0 + radius + 1, u0 - radius : u0 + radius + 1].astype(np.float64)
    win = np.clip(win - 0.02, 0, None)
    ys, xs = np.mgrid[v0 - radius : v0 + radius + 1, u0 - radius : u0 + radius + 1] + 0.5
    return np.array([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])


def test_resize_keeps_projection_consistent():
    cam = Camera(90.0, 90.0, 60.0, 40.0, 120, 80, look_at((0, -3, 0.3), (0, 0, 0)))
    points = np.array([[0.0, 0.0, 0.0], [0.8, 0.0, 0.5], [-0.9, 0.0, -0.4]])
    uv, _ = cam.project(points)
    img = gaussian_dots(cam.width, cam.height, uv, sigma=3.0)
    for w, h in ((60, 40), (45, 30), (200, 133)):
        small = resize(img, w, h)
        scam = cam.resized(w, h)
        suv, _ = scam.project(points)
        np.testing.assert_allclose(suv, uv * [w / 120, h / 80], atol=1e-9)
        radius = int(np.ceil(4 * 3.0 * w / 120))
        for p_uv in suv:
            assert np.linalg.norm(dot_centroid(small, p_uv, radius) - p_uv) < 0.05


def test_undistort_moves_dots_to_the_pinhole_projection():
    dist = Distortion(k1=0.15, k2=0.03, p1=0.002, p2=-0.003)
    cam = Camera(150.0, 148.0, 101.3, 79.6, 200, 160, look_at((0.2, -4, 0.5), (0, 0, 0)), dist, "cam")
    pinhole = cam.without_distortion()
    # Ideal pinhole pixel positions on a grid, and where the distorted lens images them.
    ideal = np.array([[u, v] for u in np.linspace(22, 178, 6) for v in np.linspace(20, 140, 5)])
    xy = (ideal - [cam.cx, cam.cy]) / [cam.fx, cam.fy]
    distorted = dist.apply(xy) * [cam.fx, cam.fy] + [cam.cx, cam.cy]
    # Same thing through Camera.project: a world point on the ray of an ideal position.
    ray_point = pinhole.camera_to_world[:3, :3] @ np.array([*xy[0], 1.0]) * 3.0 + pinhole.center
    np.testing.assert_allclose(cam.project(ray_point[None])[0][0], distorted[0], atol=1e-6)
    assert np.linalg.norm(ideal - distorted, axis=1).max() > 5.0  # the distortion is substantial
    img = np.repeat(gaussian_dots(cam.width, cam.height, distorted, sigma=1.5)[:, :, None], 3, axis=2)
    mask = np.ones((cam.height, cam.width), np.float32)
    out, out_mask, out_cam = undistort(img, cam, mask)
    assert out.shape == img.shape and out_cam.distortion is None
    assert (out_cam.fx, out_cam.fy, out_cam.cx, out_cam.cy) == (cam.fx, cam.fy, cam.cx, cam.cy)
    errors = [np.linalg.norm(dot_centroid(out[:, :, 0], p, radius=5) - p) for p in ideal]
    # < 0.1 px (the brief asks < 0.5): K instead of K_opencv (a half-pixel shift of the
    # distortion centre) already gives 0.14 px here.
    assert max(errors) < 0.1, errors
    # Pincushion (k1 > 0): the ideal image's corners see beyond the source -> mask 0 there.
    assert out_mask[0, 0] == 0.0 and out_mask[-1, -1] == 0.0
    assert out_mask[80, 100] == pytest.approx(1.0)
    assert 0.05 < (out_mask == 0).mean() < 0.5
    # No distortion: a no-op.
    same, m, c = undistort(img, pinhole, mask)
    assert same is img and m is mask and c is pinhole


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5])
def test_gaussian_blur_matches_opencv(sigma):
    import cv2
    import torch

    img = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    r = max(1, int(round(3 * sigma)))
    ref = cv2.GaussianBlur(img, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(gaussian_blur(t, sigma)[0].permute(1, 2, 0).numpy(), ref, atol=1e-5)
    ref = cv2.GaussianBlur(img, (2 * r + 3, 2 * r + 3), sigma, borderType=cv2.BORDER_REPLICATE)
    got = gaussian_blur(t, sigma, radius=r + 1, padding="replicate")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert gaussian_blur(t, 0.0) is t
