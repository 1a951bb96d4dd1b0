"""Render a posed set (RGBA PNGs + transforms.json) of any mesh with Blender's Cycles.

This is ``viewforge render-views``: synthetic captures for tests, benchmarks and users. It runs in
the current bpy (the PyPI ``bpy`` module in-process, or ``blender -b``) and **resets that Blender
to an empty factory scene**, so it refuses to run in an interactive Blender session.

What it does, in order:

1. Imports the mesh as Blender imports it: ``import_scene.gltf`` for .glb/.gltf and
   ``wm.obj_import`` for .obj (both turn the file's +Y up into Blender's +Z up).
2. Normalises it: all imported root objects are parented to one empty that maps the evaluated
   world-space bounding box of all geometry to centre (0, 0, 0) with its longest side spanning
   [-1, 1]. ``normalized = scale * imported + offset``; both numbers go into transforms.json.
3. Places ``views`` cameras on a sphere around the origin, deterministically (see
   :func:`view_angles`): a golden-angle spiral over the elevation band, or a ring for a single
   elevation. Every camera looks at the origin with world +Z up in the image; the distance makes
   the object's bounding sphere (centred at the origin) fit the field of view with a 10 % margin.
4. Renders RGBA PNGs with Cycles on the CPU: transparent film, view transform "Standard" (the
   PNG holds the texture colours, not a tone-mapped version), a uniform white world light only
   (a white diffuse surface renders white, so colours equal albedo where nothing occludes the
   sky), fixed seed, no adaptive sampling. Denoising (OpenImageDenoise) is off by default: at 32
   samples the Duck renders at ~43 dB PSNR against a 1024-sample reference without it, ~48 dB with
   it, but it costs about 1-2 s per 256 px view on 2 cores against ~0.3 s for the render.
5. Writes ``transforms.json`` whose cameras are read back from the Blender camera objects that
   rendered the images (:func:`viewforge.engine.cameras.camera_from_blender`), so the file is
   exactly what Blender rendered.

Everything is written into a temporary sibling folder that is renamed to ``out_dir`` only when
complete (:func:`viewforge.engine.io.atomic.atomic_dir`): an error or a cancel leaves nothing at
``out_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..engine.cameras import Camera, look_at, transforms_from_cameras
from ..engine.errors import DependencyError, InputError, MeshError, OutputError
from ..engine.io.atomic import atomic_dir, check_output_path
from ..engine.io.posed import dumps_transforms
from ..engine.progress import CancelToken, ProgressCallback, check, report
from .cameras import camera_from_bpy

log = logging.getLogger(__name__)

#: Mesh files render-views can import (lower-case suffixes).
MESH_SUFFIXES = (".glb", ".gltf", ".obj")

#: Object types whose evaluated geometry counts for the bounding box.
_GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "FONT", "META"}
#: Imported object types that would change the lighting or the camera: hidden from the render.
_HIDDEN_TYPES = {"CAMERA", "LIGHT", "LIGHT_PROBE", "SPEAKER"}

#: Camera distance = margin * bounding-sphere radius / sin(fov / 2).
FRAMING_MARGIN = 1.1
_GOLDEN_ANGLE_DEG = 180.0 * (3.0 - math.sqrt(5.0))  # ~137.508 degrees


# ---------------------------------------------------------------------------------------------
# Pure helpers (no bpy)
# ---------------------------------------------------------------------------------------------


def elevation_band(elevation: float | Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` in degrees from a single value (a ring) or a pair; validates the range."""
    if isinstance(elevation, (int, float)):
        lo = hi = float(elevation)
    else:
        values = [float(e) for e in elevation]
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            raise InputError(
                f"elevation needs one value or two (low high), got {len(values)}",
                "give --elevation E for a ring or --elevation LOW HIGH for a band",
            )
        lo, hi = values
    for e in (lo, hi):
        if not math.isfinite(e) or abs(e) > 89.0:
            raise InputError(
                f"elevation {e:g} degrees is outside [-89, 89]",
                "give elevations in degrees between -89 and 89 (0 = horizon, 90 would look straight down)",
            )
    if lo > hi:
        raise InputError(f"elevation band {lo:g} > {hi:g}", "give the lower elevation first")
    return lo, hi


def view_angles(views: int, elevation: float | Sequence[float] = (-20.0, 60.0)) -> np.ndarray:
    """Deterministic camera directions: (views, 2) array of (azimuth, elevation) in degrees.

    A band ``(low, high)`` gets a golden-angle (Fibonacci) spiral: view ``i`` is at
    ``sin(elevation) = sin(low) + (i + 0.5) / views * (sin(high) - sin(low))`` (uniform in area
    over the band) and ``azimuth = i * 137.508 deg mod 360``, so any number of views covers all
    azimuths evenly. A single elevation (or ``low == high``) gets a ring with azimuths
    ``360 * i / views``.

    Azimuth 0 looks from -Y towards +Y (Blender's front view); azimuth grows counter-clockwise seen
    from above (azimuth 90 looks from +X).
    """
    lo, hi = elevation_band(elevation)
    n = int(views)
    i = np.arange(n, dtype=np.float64)
    if lo == hi:
        az = 360.0 * i / n
        el = np.full(n, lo)
    else:
        s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        el = np.degrees(np.arcsin(s_lo + (i + 0.5) / n * (s_hi - s_lo)))
        az = np.mod(i * _GOLDEN_ANGLE_DEG, 360.0)
    return np.stack([az, el], axis=1)


def view_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector from the origin towards a camera at that azimuth/elevation (see :func:`view_angles`)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


def camera_distance(radius: float, fov_deg: float, margin: float = FRAMING_MARGIN) -> float:
    """Distance at which a sphere of ``radius`` at the origin fills ``fov_deg`` with ``margin``."""
    return margin * radius / math.sin(math.radians(fov_deg) / 2.0)


def check_render_settings(
    *, views: int, resolution: int, elevation: float | Sequence[float], fov_deg: float, samples: int
) -> None:
    """Raise :class:`InputError` when a render-views number is out of range."""
    if int(views) != views or not 1 <= views <= 10000:
        raise InputError(f"views must be a whole number from 1 to 10000, got {views}", "give e.g. --views 24")
    if int(resolution) != resolution or not 8 <= resolution <= 8192:
        raise InputError(f"resolution must be 8 to 8192 pixels, got {resolution}", "give e.g. --resolution 256")
    if not (math.isfinite(fov_deg) and 1.0 <= fov_deg <= 170.0):
        raise InputError(f"field of view {fov_deg:g} degrees is outside [1, 170]", "give e.g. --fov 40")
    if int(samples) != samples or not 1 <= samples <= 65536:
        raise InputError(f"samples must be 1 to 65536, got {samples}", "give e.g. --samples 32")
    elevation_band(elevation)


def check_mesh_input(mesh_path: str | os.PathLike) -> Path:
    """An existing mesh file render-views can import, as an absolute path, or :class:`MeshError`."""
    mesh = Path(mesh_path).expanduser().absolute()
    if not mesh.is_file():
        what = "is a folder" if mesh.is_dir() else "does not exist"
        raise MeshError(f"mesh file {mesh} {what}", "give the path of a .glb, .gltf or .obj file")
    if mesh.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(
            f"mesh format '{mesh.suffix or mesh.name}' is not supported by render-views",
            "give a .glb, .gltf or .obj file (convert other formats in Blender: File > Export > glTF 2.0)",
        )
    return mesh


def check_render_views_args(
    mesh_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    views: int,
    resolution: int,
    elevation: float | Sequence[float],
    fov_deg: float,
    samples: int,
) -> tuple[Path, Path]:
    """Validate everything a user can get wrong before any work; returns (mesh, out_dir) absolute.

    Raises :class:`MeshError` (missing file, unsupported format), :class:`OutputError` (missing
    parent folder, a file or a foreign non-empty folder at ``out_dir``) or :class:`InputError`
    (numbers out of range).
    """
    mesh = check_mesh_input(mesh_path)
    out = check_posed_set_output(out_dir)
    check_render_settings(views=views, resolution=resolution, elevation=elevation, fov_deg=fov_deg, samples=samples)
    return mesh, out


def check_output_folder(out_dir: str | os.PathLike, marker: str = "transforms.json", what: str = "posed set") -> Path:
    """Validate an output folder: its parent exists and it is new, empty or an earlier output.

    An earlier output (a folder holding ``marker``) is replaced when the new one is complete; any
    other non-empty folder is refused, so a typo cannot delete unrelated files.
    """
    out = check_output_path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"output {out} exists and is a file", f"give a folder path for the {what}")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise OutputError(
                f"output folder {out} is not empty and holds no {what} ({marker})",
                "give a new or empty folder, or remove that one",
            )
    return out


def check_posed_set_output(out_dir: str | os.PathLike) -> Path:
    """:func:`check_output_folder` for a posed set (an earlier one, with transforms.json, is replaced)."""
    return check_output_folder(out_dir, "transforms.json", "posed set")


# ---------------------------------------------------------------------------------------------
# bpy
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stdout(enabled: bool = True) -> Iterator[None]:
    """Silence what Blender's C code and importers print to stdout (fd 1) while they run."""
    if not enabled:
        yield
        return
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real fd 1 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _interrupt_between_views() -> Iterator[Callable[[], None]]:
    """Turn Ctrl-C into a KeyboardInterrupt raised between two views; yields the poll function.

    Importing bpy installs Blender's SIGINT handler (which swallows the first Ctrl-C), and a
    KeyboardInterrupt raised while Cycles renders lands in Blender's Python render callbacks, which
    print and drop it. So while rendering, Ctrl-C only sets a flag; ``poll()`` raises
    KeyboardInterrupt (the atomic output is then removed). On exit Python's handler is re-installed.
    Main thread only (elsewhere ``poll`` does nothing).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    hits: list[int] = []

    def _on_sigint(signum, frame) -> None:  # noqa: ARG001
        hits.append(signum)

    def poll() -> None:
        if hits:
            raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield poll
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _require_background(bpy) -> None:
    if not bpy.app.background:
        raise InputError(
            "render-views resets Blender to an empty scene and cannot run in an interactive session",
            "run it from the command line (viewforge render-views) or with blender -b",
        )


def _import_mesh(bpy, mesh: Path) -> None:
    suffix = mesh.suffix.lower()
    try:
        if suffix in (".glb", ".gltf"):
            result = bpy.ops.import_scene.gltf(filepath=str(mesh))
        else:
            result = bpy.ops.wm.obj_import(filepath=str(mesh))
    except RuntimeError as e:
        reason = " ".join(str(e).split()).removeprefix("Error:").strip() or "unknown error"
        raise MeshError(
            f"mesh file {mesh.name} could not be read ({reason})",
            "check that the file is a valid, complete glTF 2.0 (.glb/.gltf) or OBJ file",
        ) from None
    if "FINISHED" not in result:
        raise MeshError(f"mesh file {mesh.name} could not be imported", "check that the file is a valid mesh")


def _world_vertices(bpy, objects) -> np.ndarray:
    """(N, 3) world-space vertex positions of the evaluated (modifiers applied) objects."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    chunks, faces = [], 0
    for obj in objects:
        ob_eval = obj.evaluated_get(depsgraph)
        try:
            me = ob_eval.to_mesh()
        except RuntimeError:
            continue
        if me is None:
            continue
        try:
            n = len(me.vertices)
            faces += len(me.polygons)
            if n:
                co = np.empty(n * 3, dtype=np.float32)
                me.vertices.foreach_get("co", co)
                m = np.array(ob_eval.matrix_world, dtype=np.float64)
                chunks.append(co.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3])
        finally:
            ob_eval.to_mesh_clear()
    if not chunks or faces == 0:
        raise MeshError("the mesh file holds no faces", "give a mesh with at least one face (not only points or lines)")
    return np.concatenate(chunks)


def _normalise(bpy, scene, geometry) -> tuple[float, np.ndarray, float]:
    """Parent every root object to an empty that centres and scales the geometry.

    Returns ``(scale, offset, radius)``: normalized = scale * imported + offset, and the radius of
    the normalised geometry's bounding sphere about the origin.
    """
    pts = _world_vertices(bpy, geometry)
    lo, hi = pts.min(0), pts.max(0)
    extent = float((hi - lo).max())
    if not math.isfinite(extent) or extent <= 1e-12:
        raise MeshError("the mesh has no extent (all vertices at one point)", "give a mesh with a non-degenerate shape")
    scale = 2.0 / extent
    centre = 0.5 * (lo + hi)
    offset = -scale * centre
    roots = [o for o in scene.objects if o.parent is None]
    pivot = bpy.data.objects.new("viewforge_normalize", None)
    scene.collection.objects.link(pivot)
    from mathutils import Matrix  # bpy ships mathutils

    for obj in roots:
        obj.parent = pivot
        obj.matrix_parent_inverse = Matrix.Identity(4)
    pivot.scale = (scale, scale, scale)
    pivot.location = tuple(float(x) for x in offset)
    bpy.context.view_layer.update()
    norm = _world_vertices(bpy, geometry)
    lo2, hi2 = norm.min(0), norm.max(0)
    if np.abs(0.5 * (lo2 + hi2)).max() > 1e-4 or abs(float((hi2 - lo2).max()) - 2.0) > 1e-4:
        raise MeshError(
            "the mesh could not be normalised (its objects have constraints or drivers that resist re-parenting)",
            "apply constraints and drivers, or export the mesh without them",
        )
    radius = float(np.linalg.norm(norm, axis=1).max())
    return scale, offset, radius


def _setup_scene(bpy, scene, *, resolution: int, samples: int, seed: int, denoise: bool) -> None:
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x = r.resolution_y = int(resolution)
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = True
    r.use_persistent_data = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    r.image_settings.compression = 15
    cy = scene.cycles
    cy.device = "CPU"
    cy.samples = int(samples)
    cy.seed = int(seed)
    cy.use_animated_seed = False
    cy.use_adaptive_sampling = False
    cy.use_denoising = bool(denoise)
    # Cycles' default pixel filter, set explicitly: transforms.json records it and the mesh
    # evaluation renders meshes with the same filter (engine/mesh/evaluate.py image_formation)
    cy.pixel_filter_type = "BLACKMAN_HARRIS"
    cy.filter_width = 1.5
    if denoise:
        import _cycles  # Cycles' C module, shipped with bpy

        if not getattr(_cycles, "with_openimagedenoise", False):
            raise DependencyError(
                "this Blender build has no OpenImageDenoise", "render without --denoise (raise --samples instead)"
            )
        cy.denoiser = "OPENIMAGEDENOISE"
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    world = bpy.data.worlds.new("viewforge_white")
    if world.node_tree is None:  # Blender < 5 creates worlds without nodes (use_nodes is deprecated in 5)
        world.use_nodes = True
    bg = world.node_tree.nodes.get("Background")
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    scene.world = world


def render_views(
    mesh_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    views: int = 24,
    resolution: int = 256,
    elevation: float | Sequence[float] = (-20.0, 60.0),
    fov_deg: float = 40.0,
    samples: int = 32,
    seed: int = 0,
    denoise: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Render a posed set of ``mesh_path`` into ``out_dir`` (created; replaced if it is a posed set).

    mesh_path: .glb, .gltf or .obj file.
    out_dir: folder to create: ``transforms.json`` + ``images/0000.png`` ... (RGBA, 8 bit).
    views: number of cameras; resolution: square image side in pixels.
    elevation: degrees; a pair ``(low, high)`` for a band (golden-angle spiral) or one value for a
        ring (see :func:`view_angles`).
    fov_deg: field of view of the square images in degrees.
    samples, seed, denoise: Cycles samples per pixel, noise seed, OpenImageDenoise on/off.
    progress: called with stage "render" once per view; cancel: checked before each view.

    transforms.json holds the cameras (both ``camera_angle_x`` and ``fl_x fl_y cx cy w h``; world
    frame = the normalised object, Z up), per frame ``azimuth_deg``/``elevation_deg``, and
    ``normalization`` (``scale``, ``offset``: ``normalized = scale * imported + offset``),
    ``source_mesh`` and ``renderer`` records.

    Raises MeshError (missing, unsupported, unparsable or empty mesh), OutputError, InputError,
    Cancelled. Returns the absolute output folder.
    """
    mesh, out = check_render_views_args(
        mesh_path, out_dir, views=views, resolution=resolution, elevation=elevation, fov_deg=fov_deg, samples=samples
    )
    angles = view_angles(views, elevation)
    check(cancel)
    import bpy  # noqa: PLC0415  (heavy; only this function needs it)

    _require_background(bpy)
    debug = log.isEnabledFor(logging.DEBUG)
    with _interrupt_between_views() as interrupted, atomic_dir(out) as tmp:
        images = tmp / "images"
        images.mkdir()
        report(progress, "render", 0, views, "importing the mesh")
        with _quiet_stdout(not debug):
            bpy.ops.wm.read_factory_settings(use_empty=True)
            scene = bpy.context.scene
            _import_mesh(bpy, mesh)
        interrupted()
        for obj in scene.objects:
            if obj.type in _HIDDEN_TYPES:
                obj.hide_render = True
        geometry = [o for o in scene.objects if o.type in _GEOMETRY_TYPES and not o.hide_render]
        if not geometry:
            raise MeshError(f"mesh file {mesh.name} holds no mesh objects", "give a file that contains a mesh")
        scale, offset, radius = _normalise(bpy, scene, geometry)
        _setup_scene(bpy, scene, resolution=resolution, samples=samples, seed=seed, denoise=denoise)

        cam_data = bpy.data.cameras.new("viewforge_camera")
        cam_data.type = "PERSP"
        cam_data.sensor_fit = "AUTO"
        cam_data.sensor_width = 36.0
        cam_data.angle = math.radians(fov_deg)
        distance = camera_distance(radius, fov_deg)
        cam_data.clip_start = max(1e-3, 0.05 * (distance - radius))
        cam_data.clip_end = 2.0 * (distance + radius)
        cam_obj = bpy.data.objects.new("viewforge_camera", cam_data)
        scene.collection.objects.link(cam_obj)
        scene.camera = cam_obj
        from mathutils import Matrix

        gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
        cameras: list[Camera] = []
        paths: list[str] = []
        for i, (az, el) in enumerate(angles):
            interrupted()
            check(cancel)
            eye = distance * view_direction(az, el)
            c2w_gl = np.linalg.inv(look_at(eye, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))) @ gl_from_cv
            cam_obj.matrix_world = Matrix(c2w_gl.tolist())
            bpy.context.view_layer.update()
            cam = camera_from_bpy(cam_obj, scene)
            rel = f"images/{i:04d}.png"
            scene.render.filepath = str(tmp / rel)
            with _quiet_stdout(not debug):
                bpy.ops.render.render(write_still=True)
            if not (tmp / rel).is_file():
                raise OutputError(f"Blender did not write {rel}", "check free disk space and the output folder's permissions")
            cameras.append(dataclasses.replace(cam, name=f"{i:04d}"))
            paths.append(rel)
            report(progress, "render", i + 1, views, f"view {i + 1}/{views}")
        interrupted()
        check(cancel)
        meta = transforms_from_cameras(cameras, paths)
        for frame, (az, el) in zip(meta["frames"], angles):
            frame["azimuth_deg"] = float(az)
            frame["elevation_deg"] = float(el)
        meta["normalization"] = {
            "scale": scale,
            "offset": [float(x) for x in offset],
            "convention": "normalized = scale * imported + offset; imported = the mesh as Blender's "
            "importer places it (glTF/OBJ +Y up becomes +Z up)",
        }
        meta["source_mesh"] = mesh.name
        meta["up_axis"] = "Z"
        meta["renderer"] = {
            "engine": "CYCLES",
            "device": "CPU",
            "samples": int(samples),
            "seed": int(seed),
            "denoise": bool(denoise),
            "view_transform": "Standard",
            "pixel_filter": {"type": str(scene.cycles.pixel_filter_type), "width": float(scene.cycles.filter_width)},
            "film_transparent": True,
            "world": "uniform white, strength 1",
            "camera_distance": distance,
            "fov_deg": float(fov_deg),
            "blender_version": bpy.app.version_string,
        }
        (tmp / "transforms.json").write_text(dumps_transforms(meta), encoding="utf-8")
    log.info("rendered %d views of %s into %s", views, mesh.name, out)
    return out
