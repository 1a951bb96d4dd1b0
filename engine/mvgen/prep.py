"""Input preparation for "generate a 3D asset from one image".

:func:`prepare_image` turns a user's image (a file or an array) into a
:class:`~viewforge.engine.mvgen.base.ConditionImage`: a square RGBA image with the object cut out,
its bounding box centred and its longest side spanning ``fill`` of the side.

1. **Alpha.** An image with a meaningful alpha channel (some pixels transparent) uses it. Otherwise
   the background is removed: by ``rembg`` when it is installed (``PrepConfig.use_rembg``), else by
   :func:`matte_border`, a built-in matting for objects on plain backgrounds (white, grey, a flat
   colour, slight gradients, vignetting, JPEG noise; up to three background colours, e.g. a wall
   and a table).
2. **Clean-up.** The largest connected components are kept, small holes inside the object filled,
   the edge feathered (:func:`clean_alpha`).
3. **Recentre.** The object (alpha > ``alpha_threshold``) is scaled so its bounding box's longest
   side (measured to a fraction of a pixel, :func:`object_extent`) spans ``fill * size`` pixels and its centre lands on the image centre (one exact affine
   resampling of premultiplied colour; see :func:`recentre`).

Border matting, the model:

* The *border strip* (``border`` of the shorter side) is sampled from a lightly blurred copy of the
  image (sigma 1 px, which divides JPEG/sensor noise by about 3).
* The main background model is a quadratic colour surface ``c(x, y)`` (per channel, in normalised
  image coordinates, ridge-regularised) fitted robustly to the border samples: seeded at the
  most common border colour, then refitted to the samples within ``max(bg_high, noise_factor *
  sigma)`` of the model, where ``sigma`` is the robust (MAD) residual noise. Border pixels of an
  object touching the image edge are outliers and do not pull the fit. A quadratic surface holds a
  linear gradient and radial vignetting.
* Border samples that no model explains, when they are at least ``min_background_share`` of the
  border and reach two opposite sides of the image, seed another model (a second background
  colour such as a floor); at most three. An object cut by the frame at a corner is not taken for
  background; an object crossing the whole picture in one flat colour would be.
* Alpha is a ramp of the colour distance ``d`` to the nearest model: 0 at ``d <= low``, 1 at
  ``d >= low + (bg_high - bg_low)``, with ``low = max(bg_low, noise_factor * sigma)`` per model;
  within 2 px of the background it is capped by the mixing fraction (``d - low`` over the largest
  ``d - low`` nearby), which keeps the 0.5 level on a high-contrast edge instead of a pixel out.
* Clean-up (:func:`clean_alpha`) opens the hard mask by a small disk (cuts 1-2 px lines such as
  a table's edge), keeps the large components and fills small holes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..errors import DependencyError, ImageError, InputError
from .base import ConditionImage

log = logging.getLogger(__name__)

#: An object upsampled by more than this to the condition size gets a warning (soft detail): for
#: Zero123++ v1.2 an object under 87 px across. Milder upsampling is what v1.2's own pipeline
#: does with its usual 256-320 px inputs (its VAE branch resizes them to 512).
MAX_UPSAMPLE = 5.0


@dataclass(frozen=True)
class PrepConfig:
    """How an input image is prepared. Distances are Euclidean RGB distances of [0, 1] colours.

    size: side of the square output image in pixels (default 320; generate prepares at the
        generator's ``GeneratorInfo.condition_size``, 512 for Zero123++ v1.2's VAE branch).
    fill: the object's longest bounding-box side divided by the image side, in (0, 1]; generate
        uses the generator's ``GeneratorInfo.condition_fill`` (0.85 for Zero123++ v1.2), so an
        input of any framing becomes the same condition image, which agrees with the rig's framing.
    bg_low: colour distance to the background at or below which a pixel is background (alpha 0);
        raised to ``noise_factor`` times the background's measured noise when that is larger.
    bg_high: the distance at which alpha reaches 1 is ``low + (bg_high - bg_low)``.
    noise_factor: thresholds are at least this many robust noise sigmas of the background.
    border: width of the border strip the background is estimated from, as a fraction of the
        shorter image side (at least 2 px).
    min_background_share: a further background colour (a floor, a second wall) must cover at least
        this share of the border strip.
    min_component: connected parts of the object smaller than this fraction of the largest part
        are dropped (specks, dust, a stray shadow).
    max_hole: holes inside the object smaller than this fraction of the object's area are filled
        (a highlight the colour of the background); larger ones (a cup's handle) stay open.
    feather: Gaussian sigma in pixels of the matted image that softens the matte's edge.
    alpha_threshold: alpha above this is "object" for the bounding box and the object fraction.
    min_object_fraction: an object covering less than this fraction of the image is an error
        (a speck is not an asset; crop closer).
    max_input_side: images with a longer side are downscaled to it (area filter) before matting.
    use_rembg: "auto" uses rembg for images without alpha when it is importable (falling back to
        border matting if it fails); True requires it; False never uses it.
    """

    size: int = 320
    fill: float = 0.8
    bg_low: float = 0.06
    bg_high: float = 0.16
    noise_factor: float = 4.0
    border: float = 0.02
    min_background_share: float = 0.2
    min_component: float = 0.05
    max_hole: float = 0.002
    feather: float = 0.7
    alpha_threshold: float = 0.5
    min_object_fraction: float = 0.002
    max_input_side: int = 2048
    use_rembg: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if int(self.size) < 8:
            raise InputError(f"prepared image size {self.size} is too small", "use a size of at least 8 px (320 for Zero123++)")
        if not 0.0 < float(self.fill) <= 1.0:
            raise InputError(f"fill {self.fill} is outside (0, 1]", "use a fill such as 0.8")
        if not 0.0 <= self.bg_low < self.bg_high:
            raise InputError(f"matting thresholds bg_low={self.bg_low}, bg_high={self.bg_high} are not increasing",
                             "use 0 <= bg_low < bg_high, e.g. 0.06 and 0.16")
        if not 0.0 < self.alpha_threshold < 1.0:
            raise InputError(f"alpha_threshold {self.alpha_threshold} is outside (0, 1)", "use 0.5")
        if int(self.max_input_side) < 64:
            raise InputError(f"max_input_side {self.max_input_side} is too small", "use at least 64 px, e.g. 2048")
        if self.use_rembg not in ("auto", True, False):
            raise InputError(f"use_rembg={self.use_rembg!r} is not one of 'auto', True, False", "use 'auto'")


@dataclass(frozen=True, eq=False)
class PrepResult:
    """What :func:`prepare` did.

    image: the prepared condition image.
    method: where the alpha came from: "alpha" (the input's), "rembg" or "border" (matte_border).
    input_size: (width, height) of the input as given.
    has_alpha: the input had a meaningful alpha channel.
    scale: factor the input was downscaled by before matting (1.0: not downscaled).
    alpha: (H, W) float32 cleaned alpha at the matting resolution (input size times ``scale``).
    object_fraction: object pixels (alpha > threshold) / image pixels, at the matting resolution.
    bbox: (x0, y0, x1, y1) of the object in input pixels, x1/y1 exclusive.
    background: the background colour(s) matting estimated (median border colour of each), else ().
    seconds: wall time.
    """

    image: ConditionImage
    method: str
    input_size: tuple[int, int]
    has_alpha: bool
    scale: float
    alpha: np.ndarray
    object_fraction: float
    bbox: tuple[int, int, int, int]
    background: tuple[tuple[float, float, float], ...] = field(default=())
    seconds: float = 0.0


def _cv2():
    import cv2

    return cv2


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _array_to_unit(a: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An in-memory image (H, W), (H, W, 1|2|3|4) of uint8/uint16/float/bool -> (rgb, alpha)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or 0 in a.shape[:2]:
        raise ImageError(f"image {name} has an unusable shape {a.shape}",
                         "give an (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA array")
    if a.dtype == bool:
        f = a.astype(np.float32)
    elif a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        f = np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    else:
        raise ImageError(f"image {name} has an unsupported pixel type {a.dtype}",
                         "give uint8, uint16 or float pixels in [0, 1]")
    if f.ndim == 2:
        return np.repeat(f[:, :, None], 3, axis=2), None
    if f.shape[2] == 2:
        return np.repeat(f[:, :, :1], 3, axis=2), np.ascontiguousarray(f[:, :, 1])
    if f.shape[2] == 3:
        return np.ascontiguousarray(f), None
    return np.ascontiguousarray(f[:, :, :3]), np.ascontiguousarray(f[:, :, 3])


def _load(source: str | os.PathLike | np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
    if isinstance(source, np.ndarray):
        rgb, alpha = _array_to_unit(source, "array")
        return rgb, alpha, "array"
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}",
                         "give a PNG/JPEG path or an (H, W, 3|4) array")
    from ..images import load_image

    rgb, alpha = load_image(source)
    return rgb, alpha, Path(source).name


def has_meaningful_alpha(alpha: np.ndarray | None) -> bool:
    """True when an alpha channel marks something transparent (at least 0.1% of the pixels below
    0.5). An all-opaque channel (a JPEG saved as RGBA) is not meaningful: the image is matted."""
    return alpha is not None and float(np.mean(alpha < 0.5)) >= 1e-3


# ---------------------------------------------------------------------------------------------
# Border matting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _BackgroundModel:
    coef: np.ndarray  # (6, 3): colour = basis(x, y) @ coef, basis = [1, x, y, x^2, y^2, xy], x, y in [-1, 1]
    lo: np.ndarray  # (3,) clip range of the model's colour (its inliers' range, a little wider)
    hi: np.ndarray
    sigma: float  # robust noise of its inliers (Euclidean distance units)
    share: float  # fraction of border samples it explains
    typical: tuple[float, float, float]  # median colour of its border inliers

    def colour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        b = _basis(x, y)
        return np.clip(b @ self.coef, self.lo, self.hi)



def _basis(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)


def _border_samples(img: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colours (N, 3) and normalised positions x, y (N,) of the border strip's pixels."""
    h, w = img.shape[:2]
    m = np.zeros((h, w), bool)
    m[:width, :] = m[-width:, :] = True
    m[:, :width] = m[:, -width:] = True
    ys, xs = np.nonzero(m)
    return img[ys, xs], (xs + 0.5) / w * 2.0 - 1.0, (ys + 0.5) / h * 2.0 - 1.0


def _mode_seed(cols: np.ndarray) -> np.ndarray:
    """Boolean (N,) of the samples in the most populated colour bin (16 levels per channel)."""
    q = np.clip((cols * 16).astype(np.int32), 0, 15)
    key = (q[:, 0] * 16 + q[:, 1]) * 16 + q[:, 2]
    counts = np.bincount(key, minlength=4096)
    return key == int(np.argmax(counts))


def _fit_model(cols: np.ndarray, x: np.ndarray, y: np.ndarray, seed: np.ndarray, config: PrepConfig,
               ) -> tuple[_BackgroundModel, np.ndarray] | None:
    """Robust quadratic colour surface through the samples, starting from the ``seed`` samples.
    Returns the model and its inlier mask, None when too few samples support it."""
    n_all = len(cols)
    basis = _basis(x, y)
    c0 = np.median(cols[seed], axis=0)
    inl = np.linalg.norm(cols - c0, axis=1) < config.bg_high
    coef = np.zeros((6, 3), np.float64)
    coef[0] = c0
    sigma = 0.0
    for it in range(6):
        if inl.sum() < 12:
            return None
        a = basis[inl].astype(np.float64)
        # Ridge on the non-constant terms: a surface seen on one edge only cannot swing wildly.
        lam = np.diag([0.0, 1.0, 1.0, 4.0, 4.0, 4.0]) * (0.002 * len(a) if it > 0 else 1e9)
        coef = np.linalg.solve(a.T @ a + lam, a.T @ cols[inl].astype(np.float64))
        res = np.linalg.norm(cols - basis @ coef, axis=1)
        # MAD of the distances; the 1/0.85 makes it about the per-channel sigma for Gaussian noise.
        sigma = float(np.median(res[inl])) / 1.5
        radius = max(config.bg_high, config.noise_factor * sigma * 1.5)
        new = res < radius
        if it >= 1 and np.array_equal(new, inl):
            break
        inl = new
    pts = cols[inl]
    margin = 0.05
    lo = pts.min(axis=0) - margin
    hi = pts.max(axis=0) + margin
    typical = tuple(float(v) for v in np.median(pts, axis=0))
    return _BackgroundModel(coef.astype(np.float32), lo.astype(np.float32), hi.astype(np.float32),
                            sigma, float(inl.sum()) / n_all, typical), inl  # type: ignore[arg-type]


def _spans(x: np.ndarray, y: np.ndarray) -> bool:
    """True when border samples at normalised positions x, y reach two opposite image sides."""
    if len(x) == 0:
        return False
    edge = 0.9
    return bool(((x < -edge).any() and (x > edge).any()) or ((y < -edge).any() and (y > edge).any()))


def estimate_background(rgb: np.ndarray, config: PrepConfig = PrepConfig()) -> list[_BackgroundModel]:
    """Background colour models from the border strip of ``rgb`` (H, W, 3) in [0, 1] (see the module
    docstring). The first model is the dominant background."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    width = max(2, int(round(config.border * min(h, w))))
    width = min(width, max(1, min(h, w) // 4))
    smooth = cv2.GaussianBlur(np.ascontiguousarray(rgb, np.float32), (0, 0), 1.0)
    cols, x, y = _border_samples(smooth, width)
    models: list[_BackgroundModel] = []
    free = np.ones(len(cols), bool)
    for k in range(3):
        if k > 0 and free.mean() < config.min_background_share:
            break
        seed = np.zeros(len(cols), bool)
        seed[free] = _mode_seed(cols[free])
        fit = _fit_model(cols, x, y, seed, config)
        if fit is None:
            break
        model, inl = fit
        share = float((inl & free).mean())
        if k > 0 and share < config.min_background_share:
            break
        if k > 0 and not _spans(x[inl & free], y[inl & free]):
            # A second background (a floor, a wall) runs from one side of the picture to the
            # opposite one; an object cut by the frame at a corner does not.
            log.debug("border colour %s covers %.0f%% of the border but spans no two opposite sides: object, not background",
                      model.typical, 100 * share)
            break
        models.append(model)
        free &= ~inl
    return models


def _distance_alpha(rgb: np.ndarray, models: Sequence[_BackgroundModel], config: PrepConfig) -> np.ndarray:
    """Soft alpha (H, W) from the colour distance to the nearest background model.

    ``e`` = distance minus the model's ``low`` threshold (nearest model). Inside: the ramp
    ``e / (bg_high - bg_low)``. Within 2 px of the background the ramp would put the 0.5 level up
    to a pixel outside a high-contrast edge (the 1 px denoising blur spreads the edge), so there
    alpha is also capped by the mixing fraction ``e / E`` with ``E`` the largest ``e`` within 2 px
    (the object's own contrast next to that edge)."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    smooth = cv2.GaussianBlur(np.ascontiguousarray(rgb, np.float32), (0, 0), 1.0)
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0)[None, :].repeat(h, 0)
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0)[:, None].repeat(w, 1)
    e = np.full((h, w), np.inf, np.float32)
    for m in models:
        d = np.linalg.norm(smooth - m.colour(xs, ys), axis=2)
        e = np.minimum(e, d - max(config.bg_low, config.noise_factor * m.sigma))
    ramp_w = config.bg_high - config.bg_low
    ramp = np.clip(e / ramp_w, 0.0, 1.0)
    contrast = cv2.dilate(e, _disk(2))
    mix = np.clip(e / np.maximum(contrast, ramp_w), 0.0, 1.0)
    near_bg = cv2.dilate((ramp <= 0.5).astype(np.uint8), _disk(2)).astype(bool)
    return np.where(near_bg, np.minimum(ramp, mix), ramp).astype(np.float32)


def _disk(radius: int) -> np.ndarray:
    cv2 = _cv2()
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def clean_alpha(alpha: np.ndarray, config: PrepConfig = PrepConfig(), *, soft_edges: bool = True,
                open_radius: int = 0) -> np.ndarray:
    """Clean a soft alpha (H, W) in [0, 1]: keep the largest connected components (those of at
    least ``min_component`` of the largest's area), fill holes smaller than ``max_hole`` of the
    object's area, make the interior opaque and feather the edge. ``open_radius`` > 0 first opens
    the hard mask with a disk (cuts thin lines and specks that matting leaves). With
    ``soft_edges=False`` the input's alpha values are kept where the object is (an RGBA input's own
    alpha), only the dropped components and filled holes change. All zero in, all zero out."""
    cv2 = _cv2()
    alpha = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)
    hard = (alpha > config.alpha_threshold).astype(np.uint8)
    if open_radius > 0:
        hard = cv2.morphologyEx(hard, cv2.MORPH_OPEN, _disk(open_radius))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    if n <= 1:
        return np.zeros_like(alpha)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.nonzero(areas >= config.min_component * areas.max())[0] + 1
    lut = np.zeros(n, np.uint8)
    lut[keep] = 1
    mask = lut[labels]
    # Holes: background components (4-connected) not touching the image border.
    h, w = mask.shape
    nh, hl, hstats, _ = cv2.connectedComponentsWithStats((1 - mask).astype(np.uint8), connectivity=4)
    filled = np.zeros_like(mask)
    if nh > 1:
        x0, y0 = hstats[1:, cv2.CC_STAT_LEFT], hstats[1:, cv2.CC_STAT_TOP]
        x1, y1 = x0 + hstats[1:, cv2.CC_STAT_WIDTH], y0 + hstats[1:, cv2.CC_STAT_HEIGHT]
        inner = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
        small = hstats[1:, cv2.CC_STAT_AREA] < config.max_hole * mask.sum()
        hole_ids = np.nonzero(inner & small)[0] + 1
        if len(hole_ids):
            hlut = np.zeros(nh, np.uint8)
            hlut[hole_ids] = 1
            filled = hlut[hl]
    obj = mask | filled
    near = cv2.dilate(obj, _disk(max(2, open_radius + 1))).astype(bool)
    out = np.where(near, alpha, 0.0).astype(np.float32)
    out[filled.astype(bool)] = 1.0
    if soft_edges:
        core = cv2.erode(obj, _disk(1)).astype(bool)
        out[core] = 1.0
        if config.feather > 0:
            out = cv2.GaussianBlur(out, (0, 0), config.feather)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def matte_border(rgb: np.ndarray, config: PrepConfig = PrepConfig(), *,
                 background: Sequence[float] | None = None) -> np.ndarray:
    """Alpha (H, W) float32 of the object in ``rgb`` (H, W, 3) in [0, 1] in front of a plain
    background, estimated from the image border (see the module docstring), cleaned with
    :func:`clean_alpha`. ``background``: a known flat RGB background colour (a generator's grey)
    instead of the estimate. Returns all zeros when nothing differs from the background."""
    alpha, _ = _matte(rgb, config, background)
    return alpha


def _matte(rgb: np.ndarray, config: PrepConfig, background: Sequence[float] | None = None,
           ) -> tuple[np.ndarray, list[_BackgroundModel]]:
    rgb = np.asarray(rgb, np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"cannot matte an image of shape {rgb.shape}", "give (H, W, 3) RGB in [0, 1]")
    if background is not None:
        c = np.asarray(background, np.float32).reshape(3)
        coef = np.zeros((6, 3), np.float32)
        coef[0] = c
        models = [_BackgroundModel(coef, c, c, 0.0, 1.0, (float(c[0]), float(c[1]), float(c[2])))]
    else:
        models = estimate_background(rgb, config)
    if not models:
        return np.zeros(rgb.shape[:2], np.float32), models
    soft = _distance_alpha(rgb, models, config)
    radius = max(1, int(round(min(rgb.shape[:2]) / 400)))
    return clean_alpha(soft, config, open_radius=radius), models


# ---------------------------------------------------------------------------------------------
# rembg (optional)
# ---------------------------------------------------------------------------------------------


def _rembg_alpha(rgb: np.ndarray, config: PrepConfig) -> np.ndarray | None:
    """Alpha from rembg, or None when it is not to be used (not installed in "auto" mode, or it
    failed in "auto" mode: the caller falls back to border matting)."""
    if config.use_rembg is False:
        return None
    try:
        import rembg  # type: ignore[import-not-found]
    except ImportError:
        if config.use_rembg is True:
            raise DependencyError("rembg is not installed (PrepConfig.use_rembg=True)",
                                  "install rembg into the engine's environment, or use use_rembg='auto'") from None
        return None
    from PIL import Image

    u8 = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    try:
        out = rembg.remove(Image.fromarray(u8))
        a = np.asarray(out.convert("RGBA") if hasattr(out, "convert") else out)
        if a.ndim != 3 or a.shape[2] != 4 or a.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"unexpected rembg output of shape {a.shape}")
    except Exception as exc:  # noqa: BLE001 - rembg (weights download, onnxruntime) is optional
        if config.use_rembg is True:
            raise DependencyError(f"rembg failed: {exc}", "check rembg's model download, or use use_rembg='auto'") from None
        log.warning("rembg failed (%s); using border matting instead", exc)
        return None
    return a[:, :, 3].astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Recentring
# ---------------------------------------------------------------------------------------------


def object_bbox(alpha: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the pixels with alpha > threshold; None if there are none."""
    m = np.asarray(alpha) > threshold
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def object_extent(alpha: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of the object in continuous pixel coordinates (pixel i covers [i, i+1]),
    to a fraction of a pixel: :func:`object_bbox`'s edges moved by the anti-aliased coverage of
    the edge pixels (the largest alpha of each column / row, and of its outer neighbour), so the
    measured size does not jump by a whole pixel with the framing. None if there is no object."""
    box = object_bbox(alpha, threshold)
    if box is None:
        return None
    a = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)
    out = []
    for prof, lo, hi in ((a.max(axis=0), box[0], box[2]), (a.max(axis=1), box[1], box[3])):
        i0, i1 = lo, hi - 1
        before = float(prof[i0 - 1]) if i0 > 0 else 0.0
        after = float(prof[i1 + 1]) if i1 + 1 < len(prof) else 0.0
        # a step edge at e covers pixel i by clip(i + 1 - e, 0, 1): e = i0 + (1 - c_i0) - c_(i0-1)
        out.append((i0 + (1.0 - float(prof[i0])) - before, i1 + float(prof[i1]) + after))
    (x0, x1), (y0, y1) = out
    return x0, y0, x1, y1


def recentre(rgb: np.ndarray, alpha: np.ndarray, size: int, fill: float, threshold: float = 0.5) -> np.ndarray:
    """(size, size, 4) float32 straight RGBA: the object (alpha > threshold) scaled so its bounding
    box's longest side (:func:`object_extent`, to a fraction of a pixel) spans ``fill * size`` and
    its centre is the image centre.

    Continuous pixel coordinates (pixel i covers [i, i+1]) map as ``u' = s (u - c) + size / 2``.
    Premultiplied colour and alpha are resampled together (area filter for the bulk of a
    reduction, then one bilinear affine warp), so no background colour bleeds into the edge; fully
    transparent pixels get the colour of the nearest object pixels (smeared outward)."""
    cv2 = _cv2()
    from ..images import resize

    ext = object_extent(alpha, threshold)
    if ext is None:
        raise ImageError("no object to recentre", "give an image with an object")
    x0, y0, x1, y1 = ext
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    s = fill * size / max(x1 - x0, y1 - y0)
    a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    premul = np.concatenate([rgb.astype(np.float32) * a[:, :, None], a[:, :, None]], axis=2)
    h, w = a.shape
    sx = sy = s
    if s < 0.5:  # shrink most of the way with the area filter; the warp then scales by about 1
        nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
        premul = resize(premul, nw, nh)
        fx, fy = nw / w, nh / h  # resize maps continuous u -> u * f
        cx, cy, sx, sy = cx * fx, cy * fy, s / fx, s / fy
    # continuous: u' = sx (u - cx) + size/2; OpenCV's pixel centres are at integers: i = u - 0.5
    m = np.array([[sx, 0.0, sx * (0.5 - cx) + size / 2.0 - 0.5],
                  [0.0, sy, sy * (0.5 - cy) + size / 2.0 - 0.5]], np.float64)
    out = cv2.warpAffine(np.ascontiguousarray(premul), m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0))
    out_a = np.clip(out[:, :, 3], 0.0, 1.0)
    pm = out[:, :, :3]
    colour = pm / np.maximum(out_a, 1e-6)[:, :, None]
    # Smear the object's colour outward for the (near) transparent pixels: normalised convolution.
    sigma = max(2.0, size / 64.0)
    num = cv2.GaussianBlur(np.ascontiguousarray(pm), (0, 0), sigma)
    den = cv2.GaussianBlur(np.ascontiguousarray(out_a), (0, 0), sigma)
    total = float(out_a.sum())
    mean = pm.reshape(-1, 3).sum(0) / total if total > 0 else np.full(3, 0.5, np.float32)
    smear = np.where(den[:, :, None] > 1e-4, num / np.maximum(den, 1e-4)[:, :, None], mean)
    colour = np.where(out_a[:, :, None] > 1.0 / 255.0, colour, smear)
    return np.concatenate([np.clip(colour, 0.0, 1.0), out_a[:, :, None]], axis=2).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------------


def _touches(alpha: np.ndarray, threshold: float) -> int:
    m = alpha > threshold
    return int(m[0].any()) + int(m[-1].any()) + int(m[:, 0].any()) + int(m[:, -1].any())


def prepare(source: str | os.PathLike | np.ndarray, config: PrepConfig = PrepConfig()) -> PrepResult:
    """Prepare ``source`` (a PNG/JPEG path, or an (H, W[, 1|2|3|4]) uint8/uint16/float array) and say
    how: see the module docstring. Raises :class:`ImageError` for a missing or unreadable file, an
    image without an object (fully transparent, or all one background colour) or an object smaller
    than ``min_object_fraction``; :class:`DependencyError` when ``use_rembg=True`` and rembg is
    missing."""
    t0 = time.perf_counter()
    rgb, alpha, name = _load(source)
    h0, w0 = rgb.shape[:2]
    has_alpha = has_meaningful_alpha(alpha)
    scale = 1.0
    if max(h0, w0) > config.max_input_side:
        from ..images import resize

        scale = config.max_input_side / max(h0, w0)
        nw, nh = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        log.info("image %s is %dx%d: downscaled to %dx%d before matting", name, w0, h0, nw, nh)
        rgb = resize(rgb, nw, nh)
        if alpha is not None:
            alpha = resize(alpha, nw, nh)
    models: list[_BackgroundModel] = []
    if has_alpha:
        assert alpha is not None
        method = "alpha"
        if float(alpha.max()) <= config.alpha_threshold:
            raise ImageError(f"image {name} is fully transparent (its alpha channel hides everything)",
                             "export the image with the object opaque, or without an alpha channel")
        cut = clean_alpha(alpha, config, soft_edges=False)
    else:
        method = "border"
        cut = None
        if config.use_rembg is not False:
            ra = _rembg_alpha(rgb, config)
            if ra is not None:
                method = "rembg"
                cut = clean_alpha(ra, config, soft_edges=False)
        if cut is None:
            cut, models = _matte(rgb, config)
    frac = float(np.mean(cut > config.alpha_threshold))
    if frac == 0.0:
        if method == "border":
            spread = float(np.percentile(np.linalg.norm(rgb - np.median(rgb.reshape(-1, 3), axis=0), axis=2), 99))
            what = "all one background colour" if spread < config.bg_high else "not separable from its background"
            raise ImageError(f"no object found in {name}: the image is {what}",
                             "use a photo of the object in front of a plain background, or an RGBA image with the object's alpha")
        raise ImageError(f"no object found in {name} ({method} matting left nothing)",
                         "use an RGBA image with the object's alpha, or an object on a plain background")
    if frac < config.min_object_fraction:
        raise ImageError(f"the object in {name} covers only {100 * frac:.2g}% of the image",
                         f"crop the image closer to the object (at least {100 * config.min_object_fraction:.2g}% "
                         "of the image), or lower PrepConfig.min_object_fraction")
    if method != "alpha" and _touches(cut, config.alpha_threshold) == 4:
        log.warning("the object matted in %s touches all four image borders: the background may not be plain", name)
    rgba = recentre(rgb, cut, config.size, config.fill, config.alpha_threshold)
    box = object_bbox(cut, config.alpha_threshold)
    assert box is not None
    bx = tuple(int(round(v / scale)) for v in box)
    bbox = (min(bx[0], w0), min(bx[1], h0), min(bx[2], w0), min(bx[3], h0))
    side = max(bbox[2] - bbox[0], bbox[3] - bbox[1])  # in the photo's own pixels
    up = config.fill * config.size / max(side, 1)
    if up > MAX_UPSAMPLE:
        log.warning("the object in %s is only %d px across: upsampled %.1fx to the %d px condition image, so its "
                    "detail will be soft; use a larger photo (the object at least %d px across)", name, side, up,
                    config.size, int(np.ceil(config.fill * config.size / MAX_UPSAMPLE)))
    seconds = time.perf_counter() - t0
    log.debug("prepared %s: %s, object %.1f%% of the image, %.2f s", name, method, 100 * frac, seconds)
    return PrepResult(
        image=ConditionImage(rgba, fill=float(config.fill), source=name),
        method=method,
        input_size=(w0, h0),
        has_alpha=has_alpha,
        scale=scale,
        alpha=cut,
        object_fraction=frac,
        bbox=bbox,  # type: ignore[arg-type]
        background=tuple(m.typical for m in models),
        seconds=seconds,
    )


def prepare_image(source: str | os.PathLike | np.ndarray, config: PrepConfig = PrepConfig()) -> ConditionImage:
    """The :class:`ConditionImage` of ``source``: :func:`prepare` without the report."""
    return prepare(source, config).image
