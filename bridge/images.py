"""Blender images <-> numpy arrays.

Conventions (the engine's, see ``engine/io/types.py``):

* Arrays have row 0 at the *top* of the image. Blender stores pixels bottom-up; the rows are
  flipped here.
* Colour values are the file's values: sRGB-encoded numbers in [0, 1], no colour management. For
  8-bit images Blender's ``pixels`` already are the stored bytes / 255. Blender converts float
  buffers (16-bit PNG, EXR) to scene-linear and premultiplies their alpha; for those the alpha is
  un-premultiplied and, when the image's colour space is sRGB, the sRGB encoding re-applied, so a
  16-bit PNG reads back as its stored values / 65535. Float images in a linear colour space (EXR)
  come back linear, as stored.
* Everything goes through ``pixels.foreach_get``/``foreach_set`` on whole numpy buffers: no Python
  loop per pixel.
"""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np

from ..engine.errors import ImageError

log = logging.getLogger(__name__)

#: Colour spaces whose float buffers Blender linearised on load (their stored values are sRGB).
_SRGB_SPACES = ("sRGB",)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, None)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1.0 / 2.4) - 0.055).astype(np.float32)


def image_has_alpha(image) -> bool:
    """Whether a Blender image has an alpha channel in its data (RGBA or grey+alpha)."""
    if image.alpha_mode == "NONE":
        return False
    bits = 32 if image.is_float else 8
    planes = int(image.depth) // bits if image.depth else 0
    return planes in (2, 4)


def image_to_array(image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels of a Blender image.

    Returns ``(rgb, alpha)``: rgb (H, W, 3) float32 in [0, 1] (sRGB-encoded as stored, see the
    module docstring), row 0 = top; alpha (H, W) float32 or None when the image has no alpha
    channel. Raises :class:`ImageError` when the image has no pixels (missing or unreadable file).
    """
    w, h = (int(v) for v in image.size)  # reading the size loads the file's buffer
    if w <= 0 or h <= 0:
        where = f" ({image.filepath})" if image.filepath else ""
        raise ImageError(
            f"image '{image.name}'{where} has no pixels (missing or unreadable file)",
            "check that the image file exists and is a PNG or JPEG, then reload it",
        )
    channels = int(image.channels)
    buf = np.empty(w * h * channels, dtype=np.float32)
    image.pixels.foreach_get(buf)
    px = buf.reshape(h, w, channels)[::-1]
    if channels >= 3:
        rgb = px[..., :3]
    else:  # 1 or 2 channels: grey (+ alpha)
        rgb = np.repeat(px[..., :1], 3, axis=2)
    a = None
    if channels in (2, 4):
        a = px[..., -1]
    if image.is_float:
        if a is not None:
            # Blender float buffers are premultiplied; give back straight colour.
            with np.errstate(divide="ignore", invalid="ignore"):
                rgb = np.where(a[..., None] > 0, rgb / a[..., None], 0.0)
        if image.colorspace_settings.name in _SRGB_SPACES:
            rgb = _linear_to_srgb(rgb)
    if not image_has_alpha(image):
        a = None
    rgb = np.ascontiguousarray(np.clip(rgb, 0.0, 1.0) if not image.is_float else rgb, dtype=np.float32)
    return rgb, None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def array_to_image(array: np.ndarray, name: str = "viewforge_image", pack: bool = True):
    """A new packed Blender image from ``array``.

    array: (H, W), (H, W, 3) or (H, W, 4); uint8 (0..255) or float in [0, 1] (clipped), holding
        sRGB-encoded values with row 0 = top. It becomes an 8-bit sRGB image (floats are
        quantised to 8 bit), with alpha when the array has 4 channels.
    name: the datablock name; Blender makes it unique (``name.001``), existing images are never
        renamed or replaced.
    pack: pack the pixels into the .blend (as PNG), so a saved file keeps the image.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image array has shape {a.shape}", "give an (H, W), (H, W, 3) or (H, W, 4) array")
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError("image array has NaN or infinite values", "clip the image to [0, 1]")
        f = np.clip(a.astype(np.float32), 0.0, 1.0)
        f = np.round(f * 255.0) / 255.0  # what the 8-bit buffer will hold
    else:
        raise ImageError(f"image array has dtype {a.dtype}", "give uint8 or float values")
    h, w, c = f.shape
    if c == 1:
        f = np.repeat(f, 3, axis=2)
    alpha = c == 4
    rgba = np.ones((h, w, 4), dtype=np.float32)
    rgba[..., : f.shape[2]] = f
    import bpy

    image = bpy.data.images.new(name, w, h, alpha=alpha, float_buffer=False)
    image.colorspace_settings.name = "sRGB"
    image.alpha_mode = "STRAIGHT"
    image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())
    image.update()
    if pack:
        image.pack()
    log.debug("created image %s (%dx%d, alpha=%s, packed=%s)", image.name, w, h, alpha, pack)
    return image


def png_bytes(rgb: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """An 8-bit RGB(A) PNG file of ``rgb`` (H, W, 3) float in [0, 1] (row 0 = top), ``alpha`` (H, W).

    Written with zlib alone (Blender's Python has no Pillow/OpenCV), so images that exist only in
    memory can be exported identically in every Blender version.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    h, w = rgb.shape[:2]
    planes = [rgb[..., :3]] if alpha is None else [rgb[..., :3], np.asarray(alpha, np.float32)[..., None]]
    px = np.round(np.clip(np.concatenate(planes, axis=2), 0.0, 1.0) * 255.0).astype(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), px.reshape(h, -1)], axis=1)  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    color_type = 2 if alpha is None else 6
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
