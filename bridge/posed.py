"""Posed sets (transforms.json + photos) <-> Blender cameras with background photos.

* :func:`import_transforms` creates one camera per frame, in a new collection, each with its photo
  as background image, and sets the scene's render resolution from the cameras.
* :func:`export_transforms` writes the scene's cameras as transforms.json plus their photos in an
  ``images/`` folder next to it (the BlenderNeRF / nerfstudio / instant-ngp layout).
* :func:`scene_posed_set` reads the scene's cameras and photos into an engine ``PosedSet``.

Import and export check everything before they change anything: on error they raise a one-line
:class:`~viewforge.engine.errors.ViewforgeError`, the scene is as before (images loaded on the
way are removed again) and no file is written.

Image sizes. A Blender scene has one render resolution for all cameras (see
:mod:`.cameras`). Import: when frames differ in size but share the aspect ratio and pixel aspect,
the largest size is used with a warning; other mixes are an error. When transforms.json's
``w``/``h`` differ from a photo's size by a scale factor (photos downscaled after calibration) the
camera is scaled to the photo; another aspect ratio is an error. Export: each camera is written at
its photo's size (``Camera.resized``), which must have the render's aspect ratio; cameras without
a photo are written at the render size.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.cameras import Camera, camera_from_transforms_frame, transforms_from_cameras
from ..engine.errors import CameraError, ImageError, OutputError, PosedSetError
from .cameras import apply_render_settings, common_render_params, create_bpy_camera, scene_posed_cameras

log = logging.getLogger(__name__)

#: Folder (next to transforms.json) that exported photos go to.
IMAGES_DIR = "images"

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ImportResult:
    """What :func:`import_transforms` made: the new collection, its camera objects, warnings."""

    collection: object
    objects: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """What :func:`export_transforms` wrote."""

    path: Path
    image_paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _collection_name(path: Path) -> str:
    """``<folder>_<stem>`` (e.g. ``lego_transforms``): generic file names stay recognisable."""
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def _same_aspect(w0: int, h0: int, w1: int, h1: int) -> bool:
    """Equal aspect ratio up to the rounding of a resize (half a pixel, scaled)."""
    tol = 0.5 + 0.5 * max(w1 / w0, h1 / h0)
    return abs(w0 * h1 / h0 - w1) <= tol or abs(h0 * w1 / w0 - h1) <= tol


def _camera_for_photo(meta: dict, frame: dict, index: int, size: tuple[int, int]) -> Camera:
    cam = camera_from_transforms_frame(meta, frame, size, index)
    w, h = size
    if (cam.width, cam.height) == (w, h):
        return cam
    if not _same_aspect(cam.width, cam.height, w, h):
        raise PosedSetError(
            f"transforms.json frame {index} ({frame.get('file_path', '?')}): photo is {w}x{h} but transforms.json "
            f"says {cam.width}x{cam.height} (a different aspect ratio)",
            "use the photos the cameras were calibrated for, or fix 'w'/'h' and the intrinsics in transforms.json",
        )
    return cam.resized(w, h)


def _load_photo(path: Path, label: str, new_images: list):
    import bpy

    before = {im.as_pointer() for im in bpy.data.images}
    try:
        image = bpy.data.images.load(str(path), check_existing=True)
    except RuntimeError as e:
        raise ImageError(f"{label}: photo {path} cannot be read ({str(e).strip()})", "check that the file is a PNG or JPEG") from None
    if image.as_pointer() not in before:
        new_images.append(image)
    w, h = (int(v) for v in image.size)
    if w <= 0 or h <= 0:
        raise ImageError(f"{label}: photo {path} cannot be read (not an image Blender can decode)", "convert it to PNG or JPEG")
    return image


def import_transforms(path: str | os.PathLike, scene, parent_collection=None, set_render: bool = True) -> ImportResult:
    """Create the cameras of a transforms.json in ``scene``, each with its photo as background.

    path: the transforms.json (or the folder holding it).
    parent_collection: where the new collection goes (default the scene's master collection).
    set_render: set the scene's render resolution and pixel aspect from the cameras (their images
        then render exactly like the photos). Without it the scene's settings stay and the cameras
        reproduce the photos only when the render size has their aspect ratio.

    The new collection is named ``<folder>_<file stem>``, each camera after its photo's file stem.
    Lens distortion cannot be shown by Blender cameras: it is dropped with a warning. When the
    scene has no active camera, the first new camera becomes it.
    """
    import bpy

    from ..engine.io.posed import read_transforms, resolve_image_path

    p = Path(path).expanduser()
    json_path = (p / "transforms.json" if p.is_dir() else p).absolute()
    meta = read_transforms(json_path)
    frames: list[dict] = meta["frames"]
    root = json_path.parent
    for i, frame in enumerate(frames):  # camera data first: cheap, and before loading any image
        if not isinstance(frame.get("file_path"), str) or not frame["file_path"]:
            raise PosedSetError(f"transforms.json frame {i} has no 'file_path'", "give each frame the path of its photo, relative to transforms.json")
        camera_from_transforms_frame(meta, frame, (1000, 1000), i)
    photo_paths = []
    for i, frame in enumerate(frames):
        q = resolve_image_path(root, frame["file_path"])
        if q is None:
            raise ImageError(
                f"transforms.json frame {i}: photo {frame['file_path']} not found in {root}",
                "put the photo at that path relative to transforms.json, or fix the frame's 'file_path'",
            )
        photo_paths.append(q)

    new_images: list = []
    created: list = []
    collection = None
    try:
        photos = [
            _load_photo(q, f"transforms.json frame {i}", new_images) for i, q in enumerate(photo_paths)
        ]
        cameras = [
            _camera_for_photo(meta, frame, i, tuple(int(v) for v in photo.size))
            for i, (frame, photo) in enumerate(zip(frames, photos))
        ]
        render, warnings = common_render_params(cameras) if set_render else (None, [])
        n_dist = sum(c.distortion is not None for c in cameras)
        if n_dist:
            warnings.append(f"{n_dist} camera(s) have lens distortion, which Blender cameras cannot show: ignored")
        collection = bpy.data.collections.new(_collection_name(json_path))
        (parent_collection if parent_collection is not None else scene.collection).children.link(collection)
        for cam, photo, q in zip(cameras, photos, photo_paths):
            obj = create_bpy_camera(cam, scene, collection, name=q.stem, photo=photo)
            created.append(obj)
        if render is not None:
            apply_render_settings(scene, render)
        if scene.camera is None:
            scene.camera = created[0]
    except BaseException:
        for obj in created:
            data = obj.data
            bpy.data.objects.remove(obj)
            bpy.data.cameras.remove(data)
        if collection is not None:
            bpy.data.collections.remove(collection)
        for image in new_images:
            bpy.data.images.remove(image)
        raise
    log.info("imported %d cameras from %s into collection %s", len(created), json_path, collection.name)
    return ImportResult(collection, created, warnings)


# ---------------------------------------------------------------------------------------------
# scene -> engine
# ---------------------------------------------------------------------------------------------


def camera_at_photo(obj, cam: Camera, image) -> Camera:
    """``cam`` (at the render size) scaled to its photo's pixel size.

    The photo spans the camera frame, so the camera at the photo's size is ``cam.resized``; a
    photo of another aspect ratio than the render is a :class:`CameraError` naming the camera.
    """
    pw, ph = (int(v) for v in image.size)
    if pw <= 0 or ph <= 0:
        raise ImageError(
            f"camera '{obj.name}': its photo '{image.name}' has no pixels (missing or unreadable file)",
            f"reload or replace the background image of {obj.name}",
        )
    if (pw, ph) == (cam.width, cam.height):
        return cam
    if not _same_aspect(cam.width, cam.height, pw, ph):
        raise CameraError(
            f"camera '{obj.name}': photo is {pw}x{ph} but the render is {cam.width}x{cam.height} (another aspect ratio)",
            "set the render resolution (Output properties) to the photos' size",
        )
    return cam.resized(pw, ph)


def scene_posed_set(scene, selected_only: bool = False, view_layer=None):
    """The scene's cameras and their photos as an engine :class:`PosedSet` (input of reconstruction).

    Cameras are in Blender's world frame, each at its photo's size; images are the photos'
    stored values (see :mod:`.images`); masks are the photos' alpha (a full mask for photos
    without alpha) or None when no photo has alpha. Names are the camera object names. Every
    camera needs a photo: one without is an :class:`ImageError` naming it.
    """
    from ..engine.io.types import PosedSet
    from .images import image_to_array

    items = scene_posed_cameras(scene, selected_only=selected_only, view_layer=view_layer)
    if not items:
        which = "selected cameras" if selected_only else "cameras"
        raise CameraError(f"the scene has no {which}", "add perspective cameras with photos as background images")
    cameras, images, alphas = [], [], []
    for obj, cam, image in items:
        if image is None:
            raise ImageError(
                f"camera '{obj.name}' has no photo (background image)",
                f"add a background image to {obj.name}, or leave it out (select the cameras to use)",
            )
        cameras.append(camera_at_photo(obj, cam, image))
        try:
            rgb, alpha = image_to_array(image)
        except ImageError as e:
            raise ImageError(f"camera '{obj.name}': {e.message}", e.fix) from None
        images.append(rgb)
        alphas.append(alpha)
    masks = None
    if any(a is not None for a in alphas):
        masks = [a if a is not None else np.ones(im.shape[:2], np.float32) for a, im in zip(alphas, images)]
    return PosedSet(cameras=cameras, images=images, masks=masks, names=[o.name for o, _, _ in items])


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


@dataclass
class _PhotoSource:
    """How to produce one exported photo: copy a file, write packed bytes, or save the buffer."""

    image: object
    file: Path | None = None
    packed: bytes | None = None
    suffix: str = ".png"


_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "OPEN_EXR": ".exr", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}


def _photo_source(obj, image) -> _PhotoSource:
    import bpy

    label = f"camera '{obj.name}'"
    if image.packed_file is not None:
        suffix = Path(image.filepath).suffix.lower() or _FORMAT_SUFFIX.get(image.file_format, ".png")
        return _PhotoSource(image, packed=bytes(image.packed_file.data), suffix=suffix)
    if image.source == "FILE" and image.filepath and not image.is_dirty:
        f = Path(bpy.path.abspath(image.filepath, library=image.library)).expanduser()
        if f.is_file():
            return _PhotoSource(image, file=f, suffix=f.suffix.lower() or ".png")
        raise ImageError(f"{label}: its photo file {f} is missing", f"reload or replace the background image of {obj.name}")
    if image.source in ("GENERATED", "FILE") and image.size[0] > 0 and image.size[1] > 0:
        return _PhotoSource(image)  # generated or edited in Blender: saved as PNG
    raise ImageError(
        f"{label}: its photo '{image.name}' is a {image.source.lower()} image with no pixels to export",
        f"give {obj.name} a still image (file or packed) as background image",
    )


def _export_name(obj_name: str, suffix: str, used: set[str]) -> str:
    """``<camera name><suffix>`` made file-name safe and unique (case-insensitively).

    Named after the camera, so that importing the export back gives the cameras their names.
    """
    stem = _SAFE_NAME.sub("_", obj_name).strip("._") or "camera"
    name = f"{stem}{suffix}"
    k = 1
    while name.lower() in used:
        name = f"{stem}_{k}{suffix}"
        k += 1
    used.add(name.lower())
    return name


def _save_png_copy(image, dest: Path) -> None:
    """Write a Blender image's current pixels as an 8-bit PNG at ``dest`` (the image is not changed).

    Encoded here (not with ``Image.save``) so that generated and edited images, whose pixels
    exist only in memory, are written the same way in every Blender version.
    """
    from .images import image_to_array, png_bytes

    rgb, alpha = image_to_array(image)
    dest.write_bytes(png_bytes(rgb, alpha))


def _write_photo(src: _PhotoSource, dest: Path) -> None:
    if src.file is not None:
        shutil.copyfile(src.file, dest)
    elif src.packed is not None:
        dest.write_bytes(src.packed)
    else:
        _save_png_copy(src.image, dest)


def export_transforms(
    path: str | os.PathLike, scene, selected_only: bool = False, allow_missing_photos: bool = False, view_layer=None
) -> ExportResult:
    """Write the scene's cameras to transforms.json at ``path`` and their photos to ``images/``.

    Each frame's ``file_path`` is ``images/<camera name>.<photo's suffix>`` (file-name safe,
    unique), so importing the export back names the cameras as before. A camera's
    intrinsics are at its photo's size. Cameras without a photo are an error naming the camera,
    unless ``allow_missing_photos``: then their frame points at ``images/<camera>.png``, which is
    not written (render the cameras to fill it in), at the render size.

    Nothing is written on error: everything is validated first, the files are written to a
    temporary folder beside ``path`` and moved into place at the end.
    """
    from ..engine.io.atomic import check_output_path

    out = check_output_path(path, (".json",))
    items = scene_posed_cameras(scene, selected_only=selected_only, view_layer=view_layer)
    if not items:
        which = "selected cameras" if selected_only else "cameras"
        raise CameraError(f"the scene has no {which} to export", "add perspective cameras (with photos as background images)")
    used: set[str] = set()
    cameras: list[Camera] = []
    file_paths: list[str] = []
    sources: list[tuple[_PhotoSource, str]] = []
    warnings: list[str] = []
    for obj, cam, image in items:
        if image is None:
            if not allow_missing_photos:
                raise ImageError(
                    f"camera '{obj.name}' has no photo (background image)",
                    f"add a background image to {obj.name}, or export with 'Cameras Without Photo' enabled",
                )
            name = _export_name(obj.name, ".png", used)
            warnings.append(f"camera '{obj.name}' has no photo: {IMAGES_DIR}/{name} is listed but not written")
            cameras.append(cam)
            file_paths.append(f"{IMAGES_DIR}/{name}")
            continue
        src = _photo_source(obj, image)
        cam = camera_at_photo(obj, cam, image)
        name = _export_name(obj.name, src.suffix, used)
        cameras.append(cam)
        file_paths.append(f"{IMAGES_DIR}/{name}")
        sources.append((src, name))
    transforms = transforms_from_cameras(cameras, file_paths)

    from ..engine.io.posed import dumps_transforms

    text = dumps_transforms(transforms)
    images_dir = out.parent / IMAGES_DIR
    if images_dir.exists() and not images_dir.is_dir():
        raise OutputError(f"{images_dir} exists and is not a folder", "remove it or export to another folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    moved: list[Path] = []
    made_dir = False
    try:
        for src, name in sources:
            _write_photo(src, tmp / name)
        (tmp / out.name).write_text(text, encoding="utf-8")
        if sources and not images_dir.exists():
            images_dir.mkdir()
            made_dir = True
        for _src, name in sources:
            os.replace(tmp / name, images_dir / name)
            moved.append(images_dir / name)
        os.replace(tmp / out.name, out)
    except BaseException as e:
        for f in moved:
            f.unlink(missing_ok=True)
        if made_dir:
            shutil.rmtree(images_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"could not write {out} ({e})", "choose a writable folder with free space") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %d cameras to %s", len(cameras), out)
    return ExportResult(out, moved, warnings)


__all__ = [
    "ExportResult",
    "IMAGES_DIR",
    "ImportResult",
    "camera_at_photo",
    "export_transforms",
    "import_transforms",
    "scene_posed_set",
]
