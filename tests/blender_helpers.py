"""Blender test helpers: test scenes (objects, cameras around them and their Cycles photos), the
figures a test reads back (bounding boxes, the scene's datablocks) and a layout that records what
a panel draws.

Shared by the Blender tests (tests/test_blender_*.py) and scripts/blender_latest_check.py, which
runs inside Blender with this folder on ``sys.path``. Needs bpy and numpy only (no pytest).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Objects and light
# ---------------------------------------------------------------------------------------------


def suzanne(bpy, texture: str = "noise"):
    """A subdivided Suzanne (size 1.5, at the origin) with a material named "Suzanne" whose base
    colour is ``texture``: "noise" (a noise texture), "blotches" (a finer noise through a colour
    ramp: high-contrast blotches, features SIFT can match) or "flat" (one colour)."""
    bpy.ops.mesh.primitive_monkey_add(size=1.5)
    obj = bpy.context.active_object
    obj.modifiers.new("Subdivision", "SUBSURF").levels = 2
    bpy.ops.object.modifier_apply(modifier="Subdivision")
    mat = bpy.data.materials.new("Suzanne")
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(nd for nd in nodes if nd.type == "BSDF_PRINCIPLED")
    if texture == "noise":
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = 5.0
        links.new(noise.outputs["Color"], bsdf.inputs["Base Color"])
    elif texture == "blotches":
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value, noise.inputs["Detail"].default_value = 12.0, 8.0
        ramp = nodes.new("ShaderNodeValToRGB")
        stops = ramp.color_ramp.elements
        stops[0].position, stops[0].color = 0.42, (0.05, 0.05, 0.3, 1.0)
        stops[1].position, stops[1].color = 0.58, (0.95, 0.95, 0.9, 1.0)
        mid = stops.new(0.5)
        mid.color = (0.9, 0.5, 0.1, 1.0)
        links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
        links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    elif texture == "flat":
        bsdf.inputs["Base Color"].default_value = (0.6, 0.45, 0.3, 1.0)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    obj.data.materials.append(mat)
    return obj


def procedural_object(bpy):
    """A textured, non-symmetric object (a squashed UV sphere with a bump) with a checker material."""
    bpy.ops.mesh.primitive_uv_sphere_add(segments=24, ring_count=12, radius=0.8, location=(0.1, -0.05, 0.0))
    obj = bpy.context.active_object
    obj.scale = (1.0, 0.7, 0.9)
    bpy.ops.object.transform_apply(scale=True)
    mat = bpy.data.materials.new("Procedural")
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    noise = nodes.new("ShaderNodeTexChecker")
    noise.inputs["Scale"].default_value = 6.0
    noise.inputs["Color1"].default_value = (0.9, 0.3, 0.1, 1)
    noise.inputs["Color2"].default_value = (0.1, 0.4, 0.9, 1)
    links.new(noise.outputs["Color"], bsdf.inputs["Base Color"])
    obj.data.materials.append(mat)
    return obj


def sun(bpy, energy: float | None = None):
    """A sun lamp at (2, -2, 4) (Blender's default strength unless ``energy``)."""
    bpy.ops.object.light_add(type="SUN", location=(2, -2, 4))
    lamp = bpy.context.active_object
    if energy is not None:
        lamp.data.energy = energy
    return lamp


def world_light(bpy, grey: float) -> None:
    """A uniform world of brightness ``grey`` (ambient light, or the background of unlit
    objects) and the Standard view transform (photo colours as rendered)."""
    scene = bpy.context.scene
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    scene.world.color = (grey, grey, grey)
    scene.view_settings.view_transform = "Standard"


# ---------------------------------------------------------------------------------------------
# Cameras and their photos
# ---------------------------------------------------------------------------------------------


def engine_camera(i: int, n: int, size: int, elevation: float = 0.45, dist: float = 4.0):
    """Engine camera ``i`` of ``n`` on a ring around the origin (``elevation`` in radians, at
    ``dist``, 35 degree field of view, ``size`` px square), named ``Cam<i>``."""
    from viewforge.engine.cameras import Camera, look_at

    a = 2 * math.pi * i / n
    eye = dist * np.array([math.cos(a) * math.cos(elevation), math.sin(a) * math.cos(elevation), math.sin(elevation)])
    f = size / (2 * math.tan(math.radians(35) / 2))
    return Camera(f, f, size / 2, size / 2, size, size, look_at(eye, (0, 0, 0)), name=f"Cam{i}")


def cycles_photos(scene, size: int, samples: int) -> None:
    """Render settings of the tests' photos: Cycles on the CPU, ``size`` px square, no denoising,
    a transparent film, RGBA PNG files."""
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"


def photograph(bpy, cam, path: Path, background: bool = True):
    """Make ``cam`` the scene's camera, render it to ``path`` and, with ``background``, load the
    render as the camera's first background image (its photo). Returns the image (None without
    ``background``)."""
    scene = bpy.context.scene
    scene.camera = cam
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    if not background:
        return None
    image = bpy.data.images.load(scene.render.filepath)
    bg = cam.data.background_images[0] if len(cam.data.background_images) else cam.data.background_images.new()
    bg.image = image
    return image


def ring_cameras(bpy, folder: Path, n: int, size: int, *, rings=(25, -10), distance: float = 4.0, fov_deg: float = 40.0,
                 name: str = "Cam{i}", samples: int = 4, background: bool = True) -> list:  # fmt: skip
    """``n`` cameras at ``distance`` around the origin (azimuth step 360 / n, elevations in
    degrees alternating over ``rings``, field of view ``fov_deg``), named ``name.format(i=i)``,
    each photographed (:func:`photograph`, with :func:`cycles_photos` at ``size`` px and
    ``samples``) to ``folder/<name>.png``."""
    from viewforge.bridge.cameras import create_bpy_camera
    from viewforge.engine.cameras import Camera, look_at

    scene = bpy.context.scene
    cycles_photos(scene, size, samples)
    cams = []
    for i in range(n):
        a, el = 2 * math.pi * i / n, math.radians(rings[i % len(rings)])
        eye = distance * np.array([math.cos(a) * math.cos(el), math.sin(a) * math.cos(el), math.sin(el)])
        f = size / (2 * math.tan(math.radians(fov_deg) / 2))
        cam = create_bpy_camera(Camera(f, f, size / 2, size / 2, size, size, look_at(eye, (0, 0, 0))), scene,
                                name=name.format(i=i))  # fmt: skip
        photograph(bpy, cam, Path(folder) / f"{cam.name}.png", background)
        cams.append(cam)
    return cams


def suzanne_scene(bpy, tmp: Path, n: int, size: int, textured: bool = True):
    """``n`` cameras (:func:`ring_cameras`: elevations 25 / -10 degrees, distance 4) around a
    subdivided Suzanne (noise texture, or one flat colour), lit by a sun, with their Cycles
    renders at ``size`` px as camera background images. Returns (Suzanne, cameras)."""
    obj = suzanne(bpy, "noise" if textured else "flat")
    sun(bpy)
    return obj, ring_cameras(bpy, tmp, n, size)


# ---------------------------------------------------------------------------------------------
# What a test reads back
# ---------------------------------------------------------------------------------------------


def scene_state(bpy) -> dict:
    """Every datablock collection a job could touch, by name (plus the object transforms)."""
    return {
        "objects": sorted((o.name, tuple(round(v, 6) for v in o.matrix_world.col[3])) for o in bpy.data.objects),
        "meshes": sorted(m.name for m in bpy.data.meshes),
        "materials": sorted(m.name for m in bpy.data.materials),
        "images": sorted(i.name for i in bpy.data.images),
        "cameras": sorted(c.name for c in bpy.data.cameras),
        "collections": sorted(c.name for c in bpy.data.collections),
    }


@contextlib.contextmanager
def one_undo_step(bpy, operator):
    """Runs ``operator`` (it must finish) on a scene saved as an undo step and yields the objects it
    added; after the block one undo must leave every datablock collection as it was before."""
    before = {o.name for o in bpy.data.objects}
    bpy.ops.ed.undo_push(message="scene ready")
    state = scene_state(bpy)
    assert operator() == {"FINISHED"}
    new = [o for o in bpy.data.objects if o.name not in before]
    assert new and scene_state(bpy) != state
    yield new
    bpy.ops.ed.undo()
    assert scene_state(bpy) == state


def world_vertices(obj) -> np.ndarray:
    v = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", v)
    m = np.array(obj.matrix_world)
    v = v.reshape(-1, 3)
    return v @ m[:3, :3].T + m[:3, 3]


def bbox(points: np.ndarray) -> np.ndarray:
    return np.stack([points.min(0), points.max(0)])


def bbox_iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return float(inter / (np.prod(a[1] - a[0]) + np.prod(b[1] - b[0]) - inter))


class RecordingLayout:
    """A recording stand-in for ``UILayout``: every container call returns itself; labels, props,
    progress bars and operators are appended to ``log``."""

    def __init__(self, log):
        self.log = log
        self.scale_y = 1.0
        self.enabled = True

    def _self(self, *a, **kw):
        return self

    box = row = column = split = _self

    def label(self, **kw):
        self.log.append(("label", kw.get("text")))

    def prop(self, data, name, **kw):
        self.log.append(("prop", name))

    def progress(self, **kw):
        self.log.append(("progress", kw.get("factor"), kw.get("text")))

    def operator(self, idname, **kw):
        import types

        op = types.SimpleNamespace()
        self.log.append(("operator", idname, op))
        return op
