"""Posed sets on disk: a NeRF/Blender ``transforms.json`` plus its images.

Reading follows the conventions of :func:`viewforge.engine.cameras.camera_from_transforms_frame`
(``camera_angle_x`` or ``fl_x fl_y cx cy``, ``k1 k2 p1 p2 [k3]``, ``w h``, global or per frame;
``transform_matrix`` camera-to-world in OpenGL/Blender axes). docs/formats.md describes the keys
read and written, and what resizing and undistortion do to images and intrinsics.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..cameras import Camera, camera_from_transforms_frame, transforms_from_cameras
from ..errors import ImageError, InputError, OutputError, PosedSetError
from ..images import load_image, resize, save_png
from ..images import undistort as undistort_image
from ..progress import CancelToken, ProgressCallback, check, report
from .atomic import atomic_dir
from .types import PosedSet

log = logging.getLogger(__name__)

#: Suffixes tried, in order, when a frame's file_path does not name an existing file
#: (NeRF-synthetic writes "./train/r_0" for "train/r_0.png").
IMAGE_SUFFIXES_TRIED = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")

#: Top-level transforms.json keys that describe cameras; every other top-level key except
#: "frames" is kept in ``PosedSet.meta`` and written back by :func:`write_posed_set` (except
#: LOADER_KEYS).
CAMERA_KEYS = frozenset(
    {
        "camera_angle_x",
        "camera_angle_y",
        "fl_x",
        "fl_y",
        "cx",
        "cy",
        "w",
        "h",
        "k1",
        "k2",
        "k3",
        "k4",
        "p1",
        "p2",
        "camera_model",
        "frames",
    }
)

#: Keys :func:`load_posed_set` adds to ``PosedSet.meta`` about the files it read (not written back:
#: ``source_size``, the images' size before the loader resized them, when they share one).
LOADER_KEYS = frozenset({"source_size"})

# Aspect-ratio check between transforms.json's w/h and the image: a downscale with rounding of
# odd sizes moves the implied size by under a pixel (times the scale when upscaling).
_ASPECT_PIXELS = 1.0


def read_transforms(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a transforms.json (or the transforms.json inside a folder) into a dict.

    Raises :class:`PosedSetError` when the file is missing, is not JSON, or is not a JSON object
    with a non-empty ``frames`` list.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "transforms.json"
    if not p.is_file():
        raise PosedSetError(
            f"transforms file {p} not found",
            "give the path of a transforms.json (NeRF/Blender convention) or the folder that holds it",
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PosedSetError(f"{p} cannot be read ({e})", "check the file's permissions and encoding (UTF-8)") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise PosedSetError(
            f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            "fix the JSON syntax (a JSON validator shows the spot)",
        ) from None
    if not isinstance(meta, dict):
        raise PosedSetError(
            f"{p} holds a JSON {type(meta).__name__}, not an object",
            "write transforms.json as a JSON object with a 'frames' list",
        )
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise PosedSetError(
            f"{p} has no frames",
            "add a 'frames' list whose entries have 'file_path' and 'transform_matrix'",
        )
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise PosedSetError(
                f"{p}: frame {i} is not a JSON object",
                "write each frame as an object with 'file_path' and 'transform_matrix'",
            )
    return meta


def resolve_image_path(root: Path, file_path: str) -> Path | None:
    """The image a frame's ``file_path`` names (relative to ``root``), trying known suffixes; None if absent."""
    base = Path(file_path).expanduser()
    if not base.is_absolute():
        base = root / base
    if base.is_file():
        return base
    for suffix in IMAGE_SUFFIXES_TRIED:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _frame_label(index: int, frame: dict) -> str:
    return f"transforms.json frame {index} ({frame.get('file_path', '?')})"


def _camera_for_image(meta: dict, frame: dict, index: int, image_size: tuple[int, int]) -> Camera:
    """The frame's camera, scaled to the image when transforms.json's w/h are for another size."""
    cam = camera_from_transforms_frame(meta, frame, image_size, index)
    width, height = image_size
    if (cam.width, cam.height) == (width, height):
        return cam
    sx, sy = width / cam.width, height / cam.height
    # Same aspect up to the rounding of a downscale: the implied sizes agree within a pixel.
    tol = _ASPECT_PIXELS + 0.5 * max(sx, sy)
    if abs(sx * cam.height - height) > tol and abs(sy * cam.width - width) > tol:
        raise PosedSetError(
            f"{_frame_label(index, frame)}: image is {width}x{height} but transforms.json says "
            f"{cam.width}x{cam.height} (a different aspect ratio)",
            "use the images the cameras were calibrated for, or fix 'w'/'h' (and the intrinsics) in transforms.json",
        )
    factor = cam.width / width
    near_integer = min(abs(factor - round(factor)), abs(1 / factor - round(1 / factor)))
    level = logging.INFO if near_integer < 0.02 else logging.WARNING
    log.log(
        level,
        "%s: image is %dx%d, transforms.json says %dx%d; scaling the camera by %.4g",
        _frame_label(index, frame),
        width,
        height,
        cam.width,
        cam.height,
        1 / factor,
    )
    return cam.resized(width, height)


def _target_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    s = resolution / max(width, height)
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def load_posed_set(
    transforms_path: str | os.PathLike,
    *,
    resolution: int | None = None,
    undistort: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PosedSet:
    """Load a transforms.json and its images into a :class:`PosedSet`.

    transforms_path: the transforms.json, or the folder that holds it. ``file_path`` entries are
        relative to its folder, with or without an image suffix.
    resolution: target size in pixels of each image's *longer* side (aspect kept, sizes rounded
        to integers, intrinsics scaled with the actual integer sizes), or None to keep the size.
    undistort: remove lens distortion (k1 k2 p1 p2 k3) from images and masks before resizing;
        the cameras then have none. With False the distortion stays on the cameras.
    progress, cancel: one progress report and one cancel check per image.

    Alpha channels become masks (images without alpha in a set where others have it get a full
    mask); ``masks`` is None when no image has alpha. Images may differ in size (each frame has
    its own camera). When transforms.json's ``w``/``h`` differ from an image's size by a scale
    factor (images downscaled after calibration) the camera is scaled to the image; a different
    aspect ratio is an error. Every problem raises a one-line :class:`InputError` subclass that
    names the frame or file.
    """
    if resolution is not None and (not isinstance(resolution, (int, np.integer)) or resolution <= 0):
        raise InputError(
            f"resolution {resolution!r} is not a positive integer",
            "give the target size of the longer image side in pixels, e.g. 512",
        )
    meta = read_transforms(transforms_path)
    p = Path(transforms_path).expanduser()
    json_path = p / "transforms.json" if p.is_dir() else p
    root = json_path.parent
    frames: list[dict] = meta["frames"]
    n = len(frames)

    # 1. Validate cameras before touching any image (cheap; a placeholder size where w/h are absent).
    for i, frame in enumerate(frames):
        if "file_path" not in frame or not isinstance(frame["file_path"], str) or not frame["file_path"]:
            raise PosedSetError(
                f"transforms.json frame {i} has no 'file_path'",
                "give each frame the path of its image, relative to transforms.json",
            )
        camera_from_transforms_frame(meta, frame, (1000, 1000), i)

    # 2. Find every image before loading any.
    paths: list[Path | None] = [resolve_image_path(root, f["file_path"]) for f in frames]
    missing = [i for i, q in enumerate(paths) if q is None]
    if len(missing) == 1:
        i = missing[0]
        raise ImageError(
            f"{_frame_label(i, frames[i])}: image not found in {root} (also tried {', '.join(IMAGE_SUFFIXES_TRIED)})",
            "put the image at that path relative to transforms.json, or fix the frame's 'file_path'",
        )
    if missing:
        shown = ", ".join(str(frames[i]["file_path"]) for i in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise PosedSetError(
            f"transforms.json in {root} lists {n} frames but only {n - len(missing)} of their images exist "
            f"(missing: {shown})",
            "copy the missing images next to transforms.json, or remove their frames from transforms.json",
        )

    # 3. Load, fix up the camera, undistort, resize.
    cameras: list[Camera] = []
    images: list[np.ndarray] = []
    alphas: list[np.ndarray | None] = []
    names: list[str] = []
    source_sizes: set[tuple[int, int]] = set()
    for i, (frame, path) in enumerate(zip(frames, paths)):
        check(cancel)
        assert path is not None
        try:
            rgb, alpha = load_image(path)
        except ImageError as e:
            raise ImageError(f"{_frame_label(i, frame)}: {e.message}", e.fix) from None
        h, w = rgb.shape[:2]
        source_sizes.add((w, h))
        cam = _camera_for_image(meta, frame, i, (w, h))
        if undistort and cam.distortion is not None:
            rgb, alpha, cam = undistort_image(rgb, cam, alpha)
        if resolution is not None:
            tw, th = _target_size(w, h, int(resolution))
            if (tw, th) != (w, h):
                rgb = resize(rgb, tw, th)
                alpha = None if alpha is None else resize(alpha, tw, th)
                cam = cam.resized(tw, th)
        rgb = np.clip(rgb, 0.0, 1.0, out=rgb).astype(np.float32, copy=False)
        if alpha is not None:
            alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32, copy=False)
        cameras.append(cam)
        images.append(rgb)
        alphas.append(alpha)
        names.append(path.stem)
        report(progress, "load", i + 1, n, f"image {i + 1}/{n}")

    masks = None
    if any(a is not None for a in alphas):
        masks = [a if a is not None else np.ones(img.shape[:2], np.float32) for a, img in zip(alphas, images)]
    extra = {k: v for k, v in meta.items() if k not in CAMERA_KEYS}
    if len(source_sizes) == 1:
        # the size the images were made at, before any resize here (how the mesh is evaluated
        # against them: engine/mesh/evaluate.py ``image_formation``)
        extra["source_size"] = list(next(iter(source_sizes)))
    log.info("loaded %d images from %s", n, json_path)
    return PosedSet(cameras=cameras, images=images, masks=masks, names=names, meta=extra)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(index: int, name: str, suffix: str) -> str:
    safe = _SAFE_NAME.sub("_", name).strip("._") or "image"
    return f"{index:04d}_{safe}{suffix}"


# A list of numbers as json.dumps(indent=2) lays it out, one number a line (a string cannot hold
# a raw newline, so file names with brackets are left alone).
_NUMBER_LIST = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def dumps_transforms(transforms: dict[str, Any]) -> str:
    """The text of a transforms.json: indented JSON with each number list (a matrix row, a
    distortion vector) on one line, ending in a newline. Every transforms.json Viewforge writes
    goes through here. Raises OutputError for values JSON cannot hold."""
    try:
        text = json.dumps(transforms, indent=2)
    except (TypeError, ValueError) as e:
        raise OutputError(
            f"posed set meta cannot be written as JSON ({e})",
            "keep only JSON values (numbers, strings, lists, dicts) in PosedSet.meta",
        ) from None
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_transforms(path: str | os.PathLike, transforms: dict[str, Any]) -> Path:
    """Write ``transforms`` (a transforms.json dict) to ``path`` as :func:`dumps_transforms` lays
    it out (UTF-8). The caller picks the folder and makes the write atomic where it needs to."""
    path = Path(path)
    path.write_text(dumps_transforms(transforms), encoding="utf-8")
    return path


def write_posed_set(posed: PosedSet, out_dir: str | os.PathLike, *, image_format: str = "png") -> Path:
    """Write ``posed`` as ``out_dir/transforms.json`` + ``out_dir/images/NNNN_name.png``.

    Images are 8-bit RGB PNGs, RGBA when the set has masks (the mask is the alpha). transforms.json
    has both intrinsics forms (see :func:`transforms_from_cameras`) and the keys of ``posed.meta``.
    ``image_format`` "jpg" writes JPEGs (quality 95), only for sets without masks. The folder is
    written atomically: it appears complete or not at all (an existing one is replaced).
    Returns the absolute folder path.
    """
    import cv2

    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise OutputError(
            f"image format {image_format!r} is not supported", "use 'png' (or 'jpg' for sets without masks)"
        )
    if fmt != "png" and posed.masks is not None:
        raise OutputError("JPEG cannot store the posed set's masks (alpha)", "write the set with image_format='png'")
    suffix = ".png" if fmt == "png" else ".jpg"
    file_paths = [f"images/{_file_name(i, name, suffix)}" for i, name in enumerate(posed.names)]
    transforms = transforms_from_cameras(posed.cameras, file_paths)
    clash = sorted(set(posed.meta) & (CAMERA_KEYS | set(transforms)))
    if clash:
        log.debug("meta keys %s are camera data and are written from the cameras", clash)
    out: dict[str, Any] = {k: v for k, v in posed.meta.items()
                           if k not in CAMERA_KEYS and k not in LOADER_KEYS and k not in transforms}
    out.update(transforms)
    text = dumps_transforms(out)
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for i, rel in enumerate(file_paths):
            rgb = posed.images[i]
            if fmt == "png":
                save_png(tmp / rel, rgb, None if posed.masks is None else posed.masks[i])
            else:
                bgr = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)[:, :, ::-1]
                ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise OutputError(f"JPEG encoding failed for {rel}", "write the set as PNG")
                (tmp / rel).write_bytes(buf.tobytes())
        (tmp / "transforms.json").write_text(text, encoding="utf-8")
    final = Path(out_dir).expanduser().absolute()
    log.info("wrote posed set of %d images to %s", len(posed), final)
    return final


__all__ = [
    "IMAGE_SUFFIXES_TRIED",
    "dumps_transforms",
    "load_posed_set",
    "read_transforms",
    "resolve_image_path",
    "write_posed_set",
    "write_transforms",
]
