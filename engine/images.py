"""Image loading, saving, resizing, undistortion (OpenCV underneath) and the Gaussian blur of
image tensors (torch).

Conventions (docs/formats.md):

* Images in the engine are float32 RGB in [0, 1], shape (H, W, 3), values as stored in the file
  (sRGB-encoded, no colour management). Alpha, when the file has it, is returned separately as a
  float32 (H, W) array in [0, 1]; posed sets use it as the object mask.
* Pixels are kept **as stored**: EXIF orientation tags are ignored, because cameras are
  calibrated (by COLMAP, Blender, ...) on the stored pixel grid; rotating the pixels would detach
  them from their intrinsics.
* Pixel (i, j) covers [i, i+1] x [j, j+1] in the continuous coordinates of
  :mod:`viewforge.engine.cameras`; :func:`resize` and :func:`undistort` keep that convention so
  that ``Camera.resized`` / ``Camera.without_distortion`` describe the resulting image exactly.

cv2 and torch are imported inside the functions so that ``import viewforge.engine`` stays light.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .cameras import Camera
from .errors import ImageError, OutputError

log = logging.getLogger(__name__)

def _cv2():
    import cv2

    return cv2


def _to_unit_float(a: np.ndarray, path: Path) -> np.ndarray:
    """Integer or float pixel data -> float32 in [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    if a.dtype == np.uint16:
        return a.astype(np.float32) * np.float32(1.0 / 65535.0)
    if a.dtype in (np.float32, np.float64):
        out = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(out, 0.0, 1.0)
    raise ImageError(
        f"image {path} has an unsupported pixel type {a.dtype}",
        "save it as an 8- or 16-bit PNG or a JPEG",
    )


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PNG (8/16-bit; RGB, RGBA, grayscale, grayscale+alpha, palette) or JPEG.

    Returns ``(rgb, alpha)``: ``rgb`` (H, W, 3) float32 in [0, 1] (grayscale promoted to RGB),
    ``alpha`` (H, W) float32 in [0, 1] or None when the file has no alpha channel.

    The pixels are returned as stored: EXIF orientation is *not* applied (cameras are calibrated
    on the stored pixels). Raises :class:`ImageError` naming the file when it is missing, is a
    folder, or cannot be decoded.
    """
    cv2 = _cv2()
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image {p} not found", "check the path, or put the image there")
    if p.is_dir():
        raise ImageError(f"image path {p} is a folder", "give the path of an image file")
    try:
        data = np.fromfile(p, dtype=np.uint8)  # works with non-ASCII paths, unlike cv2.imread
    except OSError as e:
        raise ImageError(f"image {p} cannot be read ({e.strerror or e})", "check the file's permissions") from None
    a = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if a is None:
        raise ImageError(
            f"image {p} cannot be decoded (corrupt, truncated or not an image)",
            "re-export it as a PNG or JPEG",
        )
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    alpha = None
    if a.ndim == 2:
        rgb = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 2:  # gray + alpha (OpenCV normally expands this itself)
        rgb = np.repeat(a[:, :, :1], 3, axis=2)
        alpha = a[:, :, 1]
    elif a.ndim == 3 and a.shape[2] == 3:
        rgb = a[:, :, ::-1]
    elif a.ndim == 3 and a.shape[2] == 4:
        rgb = a[:, :, 2::-1]
        alpha = a[:, :, 3]
    else:
        raise ImageError(f"image {p} has an unsupported shape {a.shape}", "save it as an RGB or RGBA PNG")
    rgb_f = np.ascontiguousarray(_to_unit_float(rgb, p))
    alpha_f = None if alpha is None else np.ascontiguousarray(_to_unit_float(alpha, p))
    return rgb_f, alpha_f


def _quantize(a: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float [0, 1] (or integer of the right type) -> uint8/uint16."""
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if a.dtype == dtype:
        return a
    if np.issubdtype(a.dtype, np.integer):
        raise ImageError(
            f"cannot save {a.dtype} pixels as a {bit_depth}-bit PNG",
            f"give float values in [0, 1] or {np.dtype(dtype).name} pixels",
        )
    scale = 255.0 if bit_depth == 8 else 65535.0
    f = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0)
    return np.round(np.clip(f, 0.0, 1.0) * scale).astype(dtype)


def save_png(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, bit_depth: int = 8) -> Path:
    """Write ``rgb`` (H, W, 3) or gray (H, W), plus optional ``alpha`` (H, W), as a PNG.

    Float data is taken as [0, 1] (clipped) and rounded to ``bit_depth`` (8 or 16) bits; uint8 /
    uint16 data matching ``bit_depth`` is written as is. The write is atomic: the file appears
    complete or not at all. Returns the absolute path.
    """
    cv2 = _cv2()
    if bit_depth not in (8, 16):
        raise ImageError(f"PNG bit depth {bit_depth} is not supported", "use bit_depth=8 or 16")
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(
            f"cannot save an image of shape {rgb.shape} as PNG", "give (H, W, 3) RGB or (H, W) gray pixels"
        )
    channels = [_quantize(rgb, bit_depth)[:, :, ::-1]]
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.shape != rgb.shape[:2]:
            raise ImageError(
                f"alpha of shape {alpha.shape} does not match the image {rgb.shape[:2]}",
                "give an (H, W) alpha of the image's size",
            )
        channels.append(_quantize(alpha, bit_depth)[:, :, None])
    bgr = np.ascontiguousarray(np.concatenate(channels, axis=2))
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OutputError(f"PNG encoding failed for {Path(path).name}", "check the image data")
    from .io.atomic import atomic_file  # here, not at the top: engine.io imports this module

    with atomic_file(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path).expanduser().absolute()


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample (H, W), (H, W, C) to ``height`` x ``width`` (area filter shrinking, linear enlarging).

    OpenCV's resize aligns pixel *areas* (dst pixel centre (i+0.5)/s -> src), which is exactly the
    scaling ``Camera.resized`` applies to the intrinsics, so projections stay consistent.
    """
    cv2 = _cv2()
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ImageError(f"cannot resize to {width}x{height}", "give a positive width and height")
    a = np.asarray(image)
    h, w = a.shape[:2]
    if (w, h) == (width, height):
        return a.copy()
    squeeze = a.ndim == 3 and a.shape[2] == 1
    src = a[:, :, 0] if squeeze else a
    if src.dtype == bool:
        src = src.astype(np.float32)
    interp = cv2.INTER_AREA if (width <= w and height <= h) else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(src), (width, height), interpolation=interp)
    return out[:, :, None] if squeeze else out


def gaussian_blur(img, sigma: float, *, radius: int | None = None, padding: str = "reflect"):
    """(N, C, H, W) tensor -> blurred with a separable Gaussian of std ``sigma`` px (sigma <= 0:
    ``img`` itself). radius: the kernel's half width (None: ``max(1, round(3 sigma))``).
    padding: torch ``pad`` mode at the borders ("reflect", "replicate")."""
    import torch

    if sigma <= 0:
        return img
    r = max(1, int(round(3 * sigma))) if radius is None else int(radius)
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    img = torch.nn.functional.pad(img, (r, r, r, r), mode=padding)
    img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def mask_signed_distance(mask: np.ndarray, threshold: float = 0.5, upsample: int = 4) -> np.ndarray:
    """(H u, W u) signed distance, in pixels of the ORIGINAL image and positive outside, to the
    outline of ``mask > threshold`` on the mask upsampled ``u`` times (linear: a sub-pixel outline);
    sample ``(x, y)`` of the result lies at original pixel coordinates ``((x + 0.5) / u, (y + 0.5) / u)``."""
    from scipy.ndimage import distance_transform_edt

    a = np.asarray(mask, np.float32)
    u = max(int(upsample), 1)
    inside = resize(a, a.shape[1] * u, a.shape[0] * u) > threshold
    d_out = distance_transform_edt(~inside)  # outside pixels: distance to the nearest inside one
    d_in = distance_transform_edt(inside)
    return (np.where(inside, -(d_in - 0.5), d_out - 0.5) / u).astype(np.float32)


def undistort(
    image: np.ndarray, camera: Camera, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, Camera]:
    """Remove ``camera``'s lens distortion from ``image`` (H, W[, C]) and ``mask`` (H, W).

    The result is the image an ideal pinhole with the *same* intrinsics (fx, fy, cx, cy, size)
    would see; returns ``(image, mask, camera.without_distortion())``. Borders replicate the edge
    pixels; where the ideal pinhole sees beyond the source image, the returned mask is 0 (the
    mask is returned only when one is given). Without distortion the inputs are returned as is.
    """
    cv2 = _cv2()
    if camera.distortion is None:
        return image, mask, camera
    h, w = image.shape[:2]
    if (w, h) != (camera.width, camera.height):
        raise ImageError(
            f"image is {w}x{h} but camera '{camera.name}' is {camera.width}x{camera.height}",
            "resize the camera to the image (Camera.resized) before undistorting",
        )
    k = camera.K_opencv
    map_x, map_y = cv2.initUndistortRectifyMap(k, camera.distortion.as_opencv(), None, k, (w, h), cv2.CV_32FC1)
    out = cv2.remap(np.ascontiguousarray(image), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    out_mask = None
    if mask is not None:
        m = np.ascontiguousarray(np.asarray(mask, dtype=np.float32))
        out_mask = cv2.remap(m, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # OpenCV sample positions have pixel centres at integers: the source covers [-0.5, n-0.5].
        inside = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
        out_mask = np.where(inside, out_mask, 0.0).astype(np.float32)
    log.debug("undistorted %dx%d image of camera %s", w, h, camera.name)
    return out, out_mask, camera.without_distortion()
