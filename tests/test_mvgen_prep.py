"""engine.mvgen.prep: alpha, border matting, recentring and bad input, on synthetic images."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
from viewforge.engine.errors import DependencyError, ImageError, InputError
from viewforge.engine.images import save_png
from viewforge.engine.mvgen.base import ConditionImage
from viewforge.engine.mvgen.prep import (
    PrepConfig,
    estimate_background,
    matte_border,
    object_bbox,
    prepare,
    prepare_image,
    recentre,
)

from conftest import SHARED_DATA

RNG = np.random.default_rng(11)


def shape_mask(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """A non-convex shape: a disk of radius r with a box (a 'handle') sticking out to its right
    and a notch cut into its top. Boolean (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    box = (xx > cx) & (xx < cx + 1.5 * r) & (np.abs(yy - cy) < 0.3 * r)
    notch = (np.abs(xx - cx) < 0.15 * r) & (yy < cy - 0.6 * r)
    return (disk | box) & ~notch


def paint(mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """An object over ``background`` (h, w, 3): reddish with a dark stripe and a shading ramp."""
    h, w = mask.shape
    obj = np.empty((h, w, 3), np.float32)
    ramp = np.linspace(0.0, 0.25, w, dtype=np.float32)[None, :]
    obj[..., 0] = 0.8 - ramp
    obj[..., 1] = 0.25 + 0.5 * ramp
    obj[..., 2] = 0.2
    obj[h // 2 - 3:h // 2 + 3] = (0.1, 0.1, 0.15)
    return np.where(mask[..., None], obj, background).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def flat(h: int, w: int, colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32), (h, w, 3)).copy()


def backgrounds(h: int, w: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / h * 2 - 1, xx / w * 2 - 1
    noise = RNG.normal(0.0, 0.02, (h, w, 3)).astype(np.float32)
    grad = (0.95 - 0.2 * (yy / h))[..., None] * np.array([1.0, 1.0, 0.97], np.float32)
    vignette = (0.92 - 0.18 * (xn**2 + yn**2) / 2)[..., None] * np.ones(3, np.float32)
    return {
        "white": flat(h, w, (1.0, 1.0, 1.0)),
        "grey": flat(h, w, (0.5, 0.5, 0.5)),
        "blue": flat(h, w, (0.35, 0.55, 0.85)),
        "noisy_white": np.clip(flat(h, w, (0.97, 0.97, 0.97)) + noise, 0, 1),
        "gradient_noisy": np.clip(grad + noise, 0, 1),
        "vignette": np.clip(vignette + 0.5 * noise, 0, 1),
    }


@pytest.mark.parametrize("name", ["white", "grey", "blue", "noisy_white", "gradient_noisy", "vignette"])
def test_border_matting_recovers_the_shape(name):
    h, w = 160, 200
    mask = shape_mask(h, w, 90, 85, 40)
    rgb = paint(mask, backgrounds(h, w)[name])
    alpha = matte_border(rgb)
    assert alpha.shape == (h, w) and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert iou(alpha > 0.5, mask) >= 0.95, name
    r = prepare(rgb)
    assert r.method == "border" and not r.has_alpha
    assert iou(r.alpha > 0.5, mask) >= 0.95
    assert r.object_fraction == pytest.approx(mask.mean(), rel=0.05)


def test_background_estimate_is_the_background_colour():
    h, w = 120, 120
    mask = shape_mask(h, w, 60, 60, 30)
    models = estimate_background(paint(mask, flat(h, w, (0.3, 0.6, 0.2))))
    assert len(models) == 1
    np.testing.assert_allclose(models[0].typical, (0.3, 0.6, 0.2), atol=0.01)


def test_two_background_colours_wall_and_floor():
    h, w = 200, 160
    bg = flat(h, w, (0.3, 0.45, 0.7))  # a wall
    bg[150:] = (0.55, 0.53, 0.5)  # a floor
    mask = shape_mask(h, w, 70, 110, 35)
    alpha = matte_border(paint(mask, bg))
    assert iou(alpha > 0.5, mask) >= 0.95


def test_object_touching_the_border():
    h, w = 150, 150
    mask = shape_mask(h, w, 30, 80, 45)  # the disk runs off the left edge
    assert mask[:, 0].any()
    rgb = paint(mask, backgrounds(h, w)["noisy_white"])
    alpha = matte_border(rgb)
    assert iou(alpha > 0.5, mask) >= 0.95
    # Also when the object covers part of two borders (a corner).
    mask2 = shape_mask(h, w, 20, 130, 50)
    assert mask2[:, 0].any() and mask2[-1].any()
    assert iou(matte_border(paint(mask2, flat(h, w, (0.5, 0.5, 0.5)))) > 0.5, mask2) >= 0.95


def test_jpeg_file_on_white(tmp_path):
    import cv2

    h, w = 180, 180
    mask = shape_mask(h, w, 85, 90, 45)
    rgb = paint(mask, flat(h, w, (1.0, 1.0, 1.0)))
    path = tmp_path / "obj.jpg"
    cv2.imwrite(str(path), np.round(rgb[..., ::-1] * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 70])
    r = prepare(path)
    assert r.method == "border" and r.image.source == "obj.jpg"
    assert iou(r.alpha > 0.5, mask) >= 0.95


def test_small_highlight_is_filled_but_a_real_hole_stays_open():
    h, w = 200, 200
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    d = np.hypot(xx - 100, yy - 100)
    ring = (d < 80) & (d > 35)  # a large hole in the middle (the inside of a handle)
    spot = np.hypot(xx - 100, yy - 160) < 4  # a white highlight, 0.3% of... less than max_hole
    rgb = paint(ring & ~spot, flat(h, w, (1.0, 1.0, 1.0)))
    alpha = matte_border(rgb, PrepConfig(max_hole=0.01))
    m = alpha > 0.5
    assert m[spot].all()  # filled
    assert not m[d < 30].any()  # the big hole stays open
    assert iou(m, ring) >= 0.95


def test_specks_are_dropped_and_large_parts_kept():
    h, w = 160, 220
    a = shape_mask(h, w, 60, 80, 35)
    b = shape_mask(h, w, 170, 80, 30)  # a second large part, kept
    yy, xx = np.mgrid[0:h, 0:w]
    speck = (np.abs(xx - 200) < 3) & (np.abs(yy - 150) < 3)  # dust, dropped
    rgb = paint(a | b | speck, flat(h, w, (0.5, 0.5, 0.5)))
    m = matte_border(rgb) > 0.5
    assert iou(m, a | b) >= 0.95
    assert not m[speck].any()


def test_rgba_input_uses_its_alpha(tmp_path):
    h, w = 140, 180
    mask = shape_mask(h, w, 80, 70, 40)
    # The colour is one flat grey everywhere: border matting would find nothing; the alpha decides.
    rgb = flat(h, w, (0.5, 0.5, 0.5))
    alpha = mask.astype(np.float32)
    path = save_png(tmp_path / "cut.png", rgb, alpha)
    r = prepare(path)
    assert r.method == "alpha" and r.has_alpha
    assert iou(r.alpha > 0.5, mask) >= 0.99
    np.testing.assert_allclose(r.image.rgba[..., :3][r.image.rgba[..., 3] > 0.01], 0.5, atol=2 / 255)
    # The same from an array.
    r2 = prepare(np.dstack([rgb, alpha]))
    assert r2.method == "alpha" and iou(r2.alpha > 0.5, mask) >= 0.99


def test_opaque_alpha_channel_is_matted():
    h, w = 120, 120
    mask = shape_mask(h, w, 55, 60, 30)
    rgba = np.dstack([paint(mask, flat(h, w, (1, 1, 1))), np.ones((h, w), np.float32)])
    r = prepare(rgba)
    assert r.method == "border" and not r.has_alpha
    assert iou(r.alpha > 0.5, mask) >= 0.95


def bbox_centre_and_side(alpha: np.ndarray) -> tuple[float, float, int]:
    x0, y0, x1, y1 = object_bbox(alpha, 0.5)
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0)


@pytest.mark.parametrize(
    "h,w,cx,cy,r,size,fill",
    [
        (200, 300, 70, 120, 40, 320, 0.8),  # off-centre, wide image, enlarged
        (240, 180, 120, 60, 25, 256, 0.6),  # tall image, near the top
        (600, 600, 420, 200, 150, 320, 0.8),  # reduced by > 2 (area filter, then the warp)
        (90, 90, 45, 45, 8, 320, 0.9),  # small object, enlarged ~10x
    ],
)
def test_recentre_and_rescale(h, w, cx, cy, r, size, fill):
    mask = shape_mask(h, w, cx, cy, r)
    rgba = np.dstack([paint(mask, flat(h, w, (1, 1, 1))), mask.astype(np.float32)])
    img = prepare_image(rgba, PrepConfig(size=size, fill=fill, min_object_fraction=1e-4))
    assert isinstance(img, ConditionImage)
    assert img.rgba.shape == (size, size, 4) and img.rgba.dtype == np.float32
    assert img.size == size and img.fill == fill
    assert np.isfinite(img.rgba).all() and img.rgba.min() >= 0.0 and img.rgba.max() <= 1.0
    ccx, ccy, side = bbox_centre_and_side(img.rgba[..., 3])
    assert abs(ccx - size / 2) <= 1.0 and abs(ccy - size / 2) <= 1.0
    assert abs(side - fill * size) <= 2.0


def test_recentre_keeps_colour_at_the_edge_and_fills_transparent_pixels_sanely():
    h, w = 100, 100
    mask = shape_mask(h, w, 50, 50, 30)
    rgb = np.where(mask[..., None], np.float32([0.2, 0.7, 0.3]), np.float32([0.0, 0.0, 0.0]))
    out = recentre(rgb.astype(np.float32), mask.astype(np.float32), 128, 0.8)
    a = out[..., 3]
    edge = (a > 0.05) & (a < 0.95)
    assert edge.sum() > 20
    # Straight alpha: edge colours are the object's, not darkened by the black background.
    np.testing.assert_allclose(out[..., :3][edge], np.broadcast_to([0.2, 0.7, 0.3], (edge.sum(), 3)), atol=0.02)
    # Fully transparent pixels carry the nearby object colour (no garbage, no black).
    np.testing.assert_allclose(out[..., :3][a == 0], np.broadcast_to([0.2, 0.7, 0.3], ((a == 0).sum(), 3)), atol=0.02)


def test_sixteen_bit_and_grayscale_files(tmp_path):
    import cv2
    from PIL import Image

    h, w = 128, 128
    mask = shape_mask(h, w, 60, 64, 32)
    rgb = paint(mask, flat(h, w, (0.95, 0.95, 0.95)))
    p16 = save_png(tmp_path / "rgb16.png", rgb, bit_depth=16)
    r = prepare(p16)
    assert r.method == "border" and iou(r.alpha > 0.5, mask) >= 0.95
    gray = np.where(mask, 0.3, 0.9).astype(np.float32)
    pg = tmp_path / "gray.png"
    cv2.imwrite(str(pg), np.round(gray * 255).astype(np.uint8))
    assert iou(prepare(pg).alpha > 0.5, mask) >= 0.95
    pg16 = tmp_path / "gray16.png"
    cv2.imwrite(str(pg16), np.round(gray * 65535).astype(np.uint16))
    r16 = prepare(pg16)
    assert iou(r16.alpha > 0.5, mask) >= 0.95
    np.testing.assert_allclose(r16.image.rgba[..., 0][r16.image.rgba[..., 3] > 0.99], 0.3, atol=0.01)
    pla = tmp_path / "gray_alpha.png"
    Image.fromarray(np.dstack([np.full((h, w), 128, np.uint8), (mask * 255).astype(np.uint8)]), "LA").save(pla)
    rla = prepare(pla)
    assert rla.method == "alpha" and iou(rla.alpha > 0.5, mask) >= 0.99


def test_cmyk_jpeg_and_palette_png(tmp_path):
    from PIL import Image

    h, w = 128, 128
    mask = shape_mask(h, w, 64, 64, 30)
    u8 = np.where(mask[..., None], np.uint8([200, 40, 40]), np.uint8([255, 255, 255])).astype(np.uint8)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(u8).convert("CMYK").save(cmyk, quality=95)
    assert Image.open(cmyk).mode == "CMYK"
    r = prepare(cmyk)
    assert iou(r.alpha > 0.5, mask) >= 0.95
    inside = r.image.rgba[..., 3] > 0.99
    np.testing.assert_allclose(r.image.rgba[..., :3][inside].mean(0), [200 / 255, 40 / 255, 40 / 255], atol=0.04)
    pal = tmp_path / "palette.png"
    Image.fromarray(u8).convert("P").save(pal)
    assert Image.open(pal).mode == "P"
    assert iou(prepare(pal).alpha > 0.5, mask) >= 0.95
    palt = tmp_path / "palette_alpha.png"
    Image.fromarray(np.dstack([u8, (mask * 255).astype(np.uint8)]), "RGBA").quantize(8).save(palt)
    rt = prepare(palt)
    assert rt.method == "alpha" and iou(rt.alpha > 0.5, mask) >= 0.99


def test_huge_image_is_downscaled_and_logged(caplog):
    h, w = 700, 900
    mask = shape_mask(h, w, 400, 350, 160)
    rgb = paint(mask, flat(h, w, (1, 1, 1)))
    with caplog.at_level(logging.INFO, logger="viewforge.engine.mvgen.prep"):
        r = prepare(rgb, PrepConfig(max_input_side=300))
    assert "downscaled" in caplog.text
    assert r.scale == pytest.approx(300 / 900) and r.alpha.shape == (233, 300)
    assert r.input_size == (900, 700)
    ys, xs = np.nonzero(mask)
    want = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.abs(np.array(r.bbox) - np.array(want)).max() <= 4  # in input pixels
    from viewforge.engine.images import resize

    assert iou(r.alpha > 0.5, resize(mask.astype(np.float32), 300, 233) > 0.5) >= 0.95


def test_bad_inputs_are_typed_one_line_errors(tmp_path):
    cases = []
    with pytest.raises(ImageError, match="not found") as e:
        prepare(tmp_path / "missing.png")
    cases.append(e.value)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="cannot be decoded") as e:
        prepare(tmp_path / "notes.txt")
    cases.append(e.value)
    with pytest.raises(ImageError, match="folder"):
        prepare(tmp_path)
    # All background colour (also with noise).
    with pytest.raises(ImageError, match="all one background colour") as e:
        prepare(flat(64, 64, (1, 1, 1)))
    cases.append(e.value)
    with pytest.raises(ImageError, match="no object"):
        prepare(np.clip(flat(64, 64, (0.5, 0.5, 0.5)) + RNG.normal(0, 0.02, (64, 64, 3)), 0, 1).astype(np.float32))
    # Fully transparent.
    with pytest.raises(ImageError, match="fully transparent") as e:
        prepare(np.zeros((64, 64, 4), np.uint8))
    cases.append(e.value)
    # A tiny object.
    rgb = flat(200, 200, (1, 1, 1))
    rgb[100:104, 50:54] = (0.8, 0.1, 0.1)
    with pytest.raises(ImageError, match="covers only") as e:
        prepare(rgb)
    cases.append(e.value)
    assert prepare(rgb, PrepConfig(min_object_fraction=1e-4)).object_fraction == pytest.approx(16 / 40000, rel=0.3)
    # Arrays of the wrong shape or type.
    with pytest.raises(ImageError, match="shape"):
        prepare(np.zeros((4, 4, 5), np.float32))
    with pytest.raises(ImageError, match="pixel type"):
        prepare(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ImageError):
        prepare(42)  # type: ignore[arg-type]
    for err in cases:
        s = str(err)
        assert "\n" not in s and "Fix:" in s and err.fix


@pytest.mark.parametrize("kwargs", [{"fill": 0.0}, {"fill": 1.5}, {"size": 2}, {"bg_low": 0.2, "bg_high": 0.1},
                                    {"use_rembg": "yes"}, {"max_input_side": 10}])
def test_bad_config(kwargs):
    with pytest.raises(InputError):
        PrepConfig(**kwargs)


def test_rembg_path_with_a_stand_in_module(monkeypatch, caplog):
    from PIL import Image

    h, w = 100, 120
    mask = shape_mask(h, w, 60, 50, 25)
    rgb = paint(mask, flat(h, w, (0.2, 0.2, 0.2)))
    calls = []

    def remove(img):
        calls.append(img.size)
        a = np.asarray(img)
        return Image.fromarray(np.dstack([a, (mask * 255).astype(np.uint8)]), "RGBA")

    monkeypatch.setitem(sys.modules, "rembg", types.SimpleNamespace(remove=remove))
    r = prepare(rgb)
    assert r.method == "rembg" and calls == [(w, h)]
    assert iou(r.alpha > 0.5, mask) >= 0.99
    assert prepare(rgb, PrepConfig(use_rembg=False)).method == "border"

    def broken(img):
        raise RuntimeError("no weights offline")

    monkeypatch.setitem(sys.modules, "rembg", types.SimpleNamespace(remove=broken))
    with caplog.at_level(logging.WARNING, logger="viewforge.engine.mvgen.prep"):
        r = prepare(rgb)
    assert r.method == "border" and "rembg failed" in caplog.text
    with pytest.raises(DependencyError, match="rembg failed"):
        prepare(rgb, PrepConfig(use_rembg=True))
    monkeypatch.setitem(sys.modules, "rembg", None)  # import raises ImportError
    assert prepare(rgb).method == "border"
    with pytest.raises(DependencyError, match="not installed"):
        prepare(rgb, PrepConfig(use_rembg=True))


def test_matte_border_with_a_known_background():
    h, w = 100, 100
    mask = shape_mask(h, w, 50, 50, 25)
    grey = flat(h, w, (0.5, 0.5, 0.5))
    rgb = paint(mask, grey)
    # The object covers a whole border strip: the estimate alone could not know; the given colour can.
    rgb[:, :4] = (0.8, 0.25, 0.2)
    m = matte_border(rgb, background=(0.5, 0.5, 0.5)) > 0.5
    assert iou(m[:, 4:], mask[:, 4:]) >= 0.95


# Per image: (method, object fraction range of the matting-resolution image). Looked at: every
# image is one object (the plant: flowers in a vase on a table in front of a wall).
SHARED_EXPECT = {
    "instantmesh__extinguisher.png": ("alpha", 0.15, 0.25),
    "instantmesh__plant.jpg": ("border", 0.35, 0.55),
    "instantmesh__skating_shoe.jpg": ("border", 0.3, 0.5),
    "threestudio__cactus_rgba.png": ("alpha", 0.15, 0.25),
    "threestudio__catstatue_rgba.png": ("alpha", 0.2, 0.3),
    "trellis__typical_creature_elephant.png": ("alpha", 0.35, 0.55),
    "trellis__typical_misc_lantern.png": ("alpha", 0.2, 0.35),
    "triposr__chair.png": ("alpha", 0.18, 0.3),
    "triposr__flamingo.png": ("alpha", 0.07, 0.15),
    "triposr__hamburger.png": ("alpha", 0.1, 0.2),
    "triposr__robot.png": ("alpha", 0.2, 0.35),
    "triposr__teapot.png": ("border", 0.2, 0.3),
}


@pytest.mark.shared_data
def test_shared_single_images():
    import cv2

    folder = SHARED_DATA / "single_image"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert files
    for path in files:
        r = prepare(path)
        method, lo, hi = SHARED_EXPECT.get(path.name, (r.method, 0.03, 0.7))
        assert r.method == method, path.name
        assert lo <= r.object_fraction <= hi, (path.name, r.object_fraction)
        m = (r.alpha > 0.5).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
        assert areas[0] >= 0.95 * areas.sum(), (path.name, areas[:5])  # one main component
        touches = int(m[0].any()) + int(m[-1].any()) + int(m[:, 0].any()) + int(m[:, -1].any())
        assert touches <= 2, (path.name, touches)
        a = r.image.rgba[..., 3]
        assert r.image.rgba.shape == (320, 320, 4)
        ccx, ccy, side = bbox_centre_and_side(a)
        assert abs(ccx - 160) <= 1 and abs(ccy - 160) <= 1 and abs(side - 256) <= 2, path.name
        # The prepared image's border is background (the object was centred with a margin).
        assert a[:8].max() < 0.5 and a[-8:].max() < 0.5 and a[:, :8].max() < 0.5 and a[:, -8:].max() < 0.5


def test_tiny_photo_is_upsampled_with_a_warning_and_a_huge_one_downscaled_once(caplog, tmp_path, monkeypatch):
    from viewforge.engine import images

    mask = shape_mask(64, 64, 32, 32, 20)
    with caplog.at_level(logging.WARNING, logger="viewforge.engine.mvgen.prep"):
        r = prepare(paint(mask, flat(64, 64, (1, 1, 1))), PrepConfig(size=512, fill=0.85, use_rembg=False))
    assert r.image.rgba.shape == (512, 512, 4)
    side = max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1])
    assert f"only {side} px across: upsampled {0.85 * 512 / side:.1f}x" in caplog.text
    assert "use a larger photo" in caplog.text
    caplog.clear()
    calls = []
    real = images.resize
    monkeypatch.setattr(images, "resize", lambda img, w, h: calls.append(img.shape) or real(img, w, h))
    h, w = 600, 8000
    big = paint(shape_mask(h, w, 4000, 300, 250), flat(h, w, (1, 1, 1)))
    save_png(tmp_path / "big.png", big)
    with caplog.at_level(logging.INFO, logger="viewforge.engine.mvgen.prep"):
        r = prepare(tmp_path / "big.png", PrepConfig(size=512, fill=0.85, use_rembg=False))
    assert r.scale == pytest.approx(2048 / 8000) and r.alpha.shape == (154, 2048)
    assert calls[0][:2] == (600, 8000) and sum(c[:2] == (600, 8000) for c in calls) == 1  # once, before matting
    assert "downscaled" in caplog.text and "upsampled" not in caplog.text
    assert r.image.rgba.shape == (512, 512, 4)


@pytest.mark.parametrize("x0, x1", [(10.3, 30.6), (10.7, 30.2), (0.0, 39.5)])
def test_object_extent_is_sub_pixel(x0, x1):
    from viewforge.engine.mvgen.prep import object_bbox, object_extent

    cols = np.clip(np.minimum(np.arange(40) + 1.0 - x0, x1 - np.arange(40)), 0.0, 1.0).astype(np.float32)
    alpha = np.zeros((20, 40), np.float32)
    alpha[4:16] = cols
    ex = object_extent(alpha)
    assert ex == pytest.approx((x0, 4.0, x1, 16.0), abs=1e-5)
    bx = object_bbox(alpha)
    assert abs(bx[0] - x0) <= 0.5 and abs(bx[2] - x1) <= 0.5  # the whole-pixel box is within half a pixel
