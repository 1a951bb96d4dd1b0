"""Blender camera objects <-> engine cameras.

Reading: :func:`params_from_bpy` copies the numbers that define a Blender camera's projection
(lens, sensor, sensor fit, shift, the scene's render resolution/percentage/pixel aspect and the
object's ``matrix_world``) into a :class:`BlenderCameraParams`; ``engine.cameras`` does the math.
Orthographic and panoramic cameras raise :class:`CameraError` ("... not supported") naming the
camera. A camera object's *photo* is its first background image.

Writing: :func:`create_bpy_camera` makes a new camera object whose projection equals an engine
camera's. A Blender scene has **one** render resolution and pixel aspect, shared by all its
cameras, while an engine camera carries its own image size. ``create_bpy_camera`` therefore sets
only the camera's own data (lens, sensor, AUTO fit, shift, ``matrix_world``); the caller decides
the scene's resolution and calls :func:`apply_render_settings` (the projection is reproduced
exactly when the scene's render size has the camera's aspect ratio and pixel aspect; lens and
shift do not depend on the absolute size). :func:`common_render_params` picks that setting for a
set of cameras, or says why none fits them all.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..engine.cameras import BlenderCameraParams, Camera, blender_params_from_camera, camera_from_blender
from ..engine.errors import CameraError

log = logging.getLogger(__name__)

#: Relative tolerance when comparing aspect ratios of cameras that must share a scene resolution.
ASPECT_RTOL = 1e-3


def params_from_bpy(obj, scene) -> BlenderCameraParams:
    """The projection-defining numbers of camera object ``obj`` rendered with ``scene``'s settings."""
    if obj is None or obj.type != "CAMERA":
        name = getattr(obj, "name", None)
        raise CameraError(f"object '{name}' is not a camera", "select camera objects")
    cam = obj.data
    render = scene.render
    return BlenderCameraParams(
        lens=float(cam.lens),
        sensor_width=float(cam.sensor_width),
        sensor_height=float(cam.sensor_height),
        sensor_fit=str(cam.sensor_fit),
        shift_x=float(cam.shift_x),
        shift_y=float(cam.shift_y),
        resolution_x=int(render.resolution_x),
        resolution_y=int(render.resolution_y),
        resolution_percentage=int(render.resolution_percentage),
        pixel_aspect_x=float(render.pixel_aspect_x),
        pixel_aspect_y=float(render.pixel_aspect_y),
        matrix_world=np.array(obj.matrix_world, dtype=np.float64),
        type=str(cam.type),
        name=obj.name,
    )


def camera_from_bpy(obj, scene) -> Camera:
    """Engine camera (image size = the scene's render size) equal to Blender's projection."""
    return camera_from_blender(params_from_bpy(obj, scene))


def camera_photo(obj):
    """The camera object's photo: its first background image's image, or None."""
    data = getattr(obj, "data", None)
    if data is None or not hasattr(data, "background_images") or not len(data.background_images):
        return None
    return data.background_images[0].image


def apply_render_settings(scene, params: BlenderCameraParams) -> None:
    """Set the scene's render resolution, percentage and pixel aspect from ``params``.

    This changes what *every* camera of the scene renders: call it once, with the size the
    cameras share (:func:`common_render_params`).
    """
    render = scene.render
    render.resolution_x = int(params.resolution_x)
    render.resolution_y = int(params.resolution_y)
    render.resolution_percentage = int(params.resolution_percentage)
    render.pixel_aspect_x = float(params.pixel_aspect_x)
    render.pixel_aspect_y = float(params.pixel_aspect_y)


def common_render_params(cameras: Sequence[Camera]) -> tuple[BlenderCameraParams, list[str]]:
    """Render settings one scene can use for all ``cameras``, and warnings.

    All cameras the same size -> that size. Different sizes with the same aspect ratio and pixel
    aspect -> the largest size, and a warning (each camera's projection is still exact, in
    pixels of that size). Different aspect ratios or pixel aspects -> :class:`CameraError`: one
    scene resolution cannot reproduce them all.
    """
    if not cameras:
        raise CameraError("no cameras", "give at least one camera")
    params = [blender_params_from_camera(c) for c in cameras]
    ref = params[0]
    ref_aspect = (ref.resolution_x * ref.pixel_aspect_x) / (ref.resolution_y * ref.pixel_aspect_y)
    for cam, p in zip(cameras, params):
        if not np.isclose(p.pixel_aspect_y / p.pixel_aspect_x, ref.pixel_aspect_y / ref.pixel_aspect_x, rtol=ASPECT_RTOL):
            raise CameraError(
                f"camera '{cam.name}' has pixel aspect {p.pixel_aspect_x:g}:{p.pixel_aspect_y:g} but "
                f"'{cameras[0].name}' has {ref.pixel_aspect_x:g}:{ref.pixel_aspect_y:g}; a Blender scene has one pixel aspect",
                "import cameras with the same fl_x/fl_y ratio separately, into different scenes",
            )
        aspect = (p.resolution_x * p.pixel_aspect_x) / (p.resolution_y * p.pixel_aspect_y)
        if not np.isclose(aspect, ref_aspect, rtol=ASPECT_RTOL):
            raise CameraError(
                f"camera '{cam.name}' is {cam.width}x{cam.height} but '{cameras[0].name}' is "
                f"{cameras[0].width}x{cameras[0].height}; a Blender scene has one render resolution",
                "crop or resize the photos to one aspect ratio, or import each size into its own scene",
            )
    warnings: list[str] = []
    sizes = sorted({(c.width, c.height) for c in cameras})
    if len(sizes) > 1:
        best = max(range(len(cameras)), key=lambda i: cameras[i].width * cameras[i].height)
        ref = params[best]
        warnings.append(
            f"cameras have {len(sizes)} image sizes of one aspect ratio; the render resolution is set to the "
            f"largest, {ref.resolution_x}x{ref.resolution_y}"
        )
    return ref, warnings


def create_bpy_camera(camera: Camera, scene, collection=None, name: str | None = None, photo=None):
    """A new camera object reproducing ``camera``'s projection (with matching render settings).

    camera: the engine camera. Its distortion, if any, cannot be represented in Blender and is
        dropped (a warning is logged).
    scene: the scene the camera is for; used for the default collection only (the render
        settings are not touched: see :func:`apply_render_settings`).
    collection: where to link the object (default: the scene's master collection).
    name: object and camera-data name (default ``camera.name`` or "Camera"); Blender makes it
        unique, existing objects are never renamed.
    photo: a Blender image to show as the camera's background image (its photo), or None.
    """
    import bpy
    from mathutils import Matrix

    params = blender_params_from_camera(camera)
    if camera.distortion is not None:
        log.warning("camera %s: lens distortion cannot be represented in Blender and is dropped", camera.name)
    label = name or camera.name or "Camera"
    data = bpy.data.cameras.new(label)
    data.type = "PERSP"
    data.lens_unit = "MILLIMETERS"
    data.sensor_fit = params.sensor_fit
    data.sensor_width = params.sensor_width
    data.sensor_height = params.sensor_height
    data.lens = params.lens
    data.shift_x = params.shift_x
    data.shift_y = params.shift_y
    obj = bpy.data.objects.new(label, data)
    obj.matrix_world = Matrix(np.asarray(params.matrix_world, dtype=np.float64).tolist())
    if photo is not None:
        bg = data.background_images.new()
        bg.image = photo
        bg.frame_method = "STRETCH"  # the photo spans the camera frame, as the engine camera's image does
        data.show_background_images = True
    (collection if collection is not None else scene.collection).objects.link(obj)
    return obj


def scene_posed_cameras(scene, selected_only: bool = False, view_layer=None) -> list[tuple[object, Camera, object]]:
    """``(camera object, engine camera, photo image or None)`` for the scene's camera objects.

    Cameras are sorted by object name (a stable order for exports). ``selected_only`` keeps only
    selected cameras (of ``view_layer``, default the scene's first view layer / the context's).
    Raises :class:`CameraError` for an orthographic or panoramic camera among them.
    """
    objs = [o for o in scene.objects if o.type == "CAMERA"]
    if selected_only:
        if view_layer is None:
            import bpy

            ctx_layer = getattr(bpy.context, "view_layer", None)
            view_layer = ctx_layer if ctx_layer is not None and getattr(bpy.context, "scene", None) == scene else scene.view_layers[0]
        objs = [o for o in objs if o.select_get(view_layer=view_layer)]
    objs.sort(key=lambda o: o.name)
    return [(o, camera_from_bpy(o, scene), camera_photo(o)) for o in objs]
