"""The one camera model of the engine, and converters from Blender, transforms.json and COLMAP.

Conventions (docs/cameras.md has the derivations):

* Camera axes are OpenCV's: x right, y down, z forward. ``world_to_camera`` maps world points to
  that frame. Blender cameras look down -Z with +Y up; NeRF/Blender ``transforms.json`` stores
  camera-to-world matrices in that OpenGL/Blender convention.
* Image coordinates are continuous, in pixels, with the top-left *corner* of the image at (0, 0):
  pixel (i, j) covers [i, i+1] x [j, j+1] and its centre is (i + 0.5, j + 0.5). This is the
  convention of COLMAP, NeRF/instant-ngp transforms.json, gsplat and Blender, so principal points
  from all of them carry over unchanged (a centred principal point is (w/2, h/2)). OpenCV's own
  functions put pixel centres at integers: subtract 0.5 from cx, cy before calling them.
* The world frame is whatever frame the cameras came in (Blender's world, Z up, for cameras from a
  scene or from ``viewforge render-views``).

Nothing here imports bpy: Blender camera data arrives as plain numbers in
:class:`BlenderCameraParams` (filled by ``bridge/``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import CameraError, PosedSetError

#: Camera projections: pinhole, and parallel projection along the camera's +z.
PROJECTIONS = ("perspective", "orthographic")

# OpenCV camera axes <-> OpenGL/Blender camera axes (flip y and z).
_CV_FROM_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Distortion:
    """OpenCV radial-tangential lens distortion (the ``OPENCV`` model of COLMAP)."""

    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0

    @property
    def is_zero(self) -> bool:
        return not any((self.k1, self.k2, self.p1, self.p2, self.k3))

    def as_opencv(self) -> np.ndarray:
        """Coefficients in OpenCV's order ``(k1, k2, p1, p2, k3)``."""
        return np.array([self.k1, self.k2, self.p1, self.p2, self.k3], dtype=np.float64)

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Distort normalised image coordinates ``xy`` (N, 2) -> (N, 2)."""
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3))
        xd = x * radial + 2.0 * self.p1 * x * y + self.p2 * (r2 + 2.0 * x * x)
        yd = y * radial + self.p1 * (r2 + 2.0 * y * y) + 2.0 * self.p2 * x * y
        return np.stack([xd, yd], axis=1)


def _as_matrix4(m: Any, what: str) -> np.ndarray:
    a = np.array(m, dtype=np.float64)
    if a.shape == (3, 4):
        a = np.vstack([a, [0.0, 0.0, 0.0, 1.0]])
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise CameraError(f"{what} is not a finite 4x4 matrix", "give a 4x4 (or 3x4) rigid transform")
    return a


def _orthonormalize(m: np.ndarray) -> np.ndarray:
    """Remove scale/shear from the rotation part (Blender's ``matrix_world.normalized()``)."""
    out = m.copy()
    r = m[:3, :3]
    norms = np.linalg.norm(r, axis=0)
    if np.any(norms < 1e-12):
        raise CameraError("camera matrix has a zero scale axis", "reset the camera's scale to 1")
    out[:3, :3] = r / norms
    return out


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole or orthographic camera: intrinsics in pixels and a world-to-camera pose (OpenCV axes).

    fx, fy: focal lengths in pixels (> 0); for an orthographic camera, pixels per world unit
        (a camera-space point (x, y, z) lands at (fx x + cx, fy y + cy) whatever its depth z).
    cx, cy: principal point in pixels, continuous coordinates (image centre = (width/2, height/2)).
    width, height: image size in pixels.
    world_to_camera: (4, 4) float64 rigid transform, world -> camera (x right, y down, z forward).
    distortion: OpenCV radial-tangential coefficients, or None for an ideal pinhole.
    name: an identifier (Blender object name, image file stem); informational only.
    projection: "perspective" (pinhole) or "orthographic" (parallel rays along +z).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    world_to_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    distortion: Distortion | None = None
    name: str = ""
    projection: str = "perspective"

    def __post_init__(self) -> None:
        label = f"camera '{self.name}'" if self.name else "camera"
        if self.projection not in PROJECTIONS:
            raise CameraError(f"{label} has unknown projection {self.projection!r}",
                              f"use one of {', '.join(PROJECTIONS)}")
        if self.projection == "orthographic" and self.distortion is not None and not self.distortion.is_zero:
            raise CameraError(f"{label} is orthographic with lens distortion", "orthographic cameras have no distortion")
        for key in ("fx", "fy", "cx", "cy"):
            value = float(getattr(self, key))
            if not math.isfinite(value):
                raise CameraError(f"{label} has a non-finite {key}", "check the camera intrinsics")
            object.__setattr__(self, key, value)
        if self.fx <= 0 or self.fy <= 0:
            raise CameraError(
                f"{label} has a zero or negative focal length (fx={self.fx:g}, fy={self.fy:g})",
                "give a positive focal length (fl_x/fl_y or camera_angle_x in transforms.json, lens in Blender)",
            )
        w, h = int(self.width), int(self.height)
        if w <= 0 or h <= 0 or w != self.width or h != self.height:
            raise CameraError(
                f"{label} has an invalid image size {self.width}x{self.height}",
                "give a positive integer width and height",
            )
        object.__setattr__(self, "width", w)
        object.__setattr__(self, "height", h)
        m = _as_matrix4(self.world_to_camera, f"{label} pose")
        r = m[:3, :3]
        if abs(np.linalg.det(r) - 1.0) > 1e-4 or not np.allclose(r @ r.T, np.eye(3), atol=1e-4):
            raise CameraError(
                f"{label} pose is not a rotation (scaled, sheared or mirrored)",
                "give a rigid camera transform (remove scale and negative scale from the camera)",
            )
        if np.any(m[3] != [0.0, 0.0, 0.0, 1.0]):
            raise CameraError(f"{label} pose has a projective last row", "give a rigid 4x4 transform")
        m.setflags(write=False)
        object.__setattr__(self, "world_to_camera", m)
        if self.distortion is not None and self.distortion.is_zero:
            object.__setattr__(self, "distortion", None)

    # -- derived quantities ---------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsic matrix in this module's continuous pixel convention."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def K_opencv(self) -> np.ndarray:
        """(3, 3) intrinsic matrix for OpenCV functions (pixel centres at integers)."""
        k = self.K
        k[0, 2] -= 0.5
        k[1, 2] -= 0.5
        return k

    @property
    def R(self) -> np.ndarray:
        """(3, 3) world-to-camera rotation."""
        return self.world_to_camera[:3, :3].copy()

    @property
    def t(self) -> np.ndarray:
        """(3,) world-to-camera translation."""
        return self.world_to_camera[:3, 3].copy()

    @property
    def camera_to_world(self) -> np.ndarray:
        """(4, 4) camera-to-world transform, OpenCV camera axes."""
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        out = np.eye(4)
        out[:3, :3] = r.T
        out[:3, 3] = -r.T @ t
        return out

    @property
    def camera_to_world_gl(self) -> np.ndarray:
        """(4, 4) camera-to-world transform, OpenGL/Blender camera axes (looks down -Z, +Y up)."""
        return self.camera_to_world @ _CV_FROM_GL

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        return self.camera_to_world[:3, 3]

    @property
    def is_ortho(self) -> bool:
        return self.projection == "orthographic"

    @property
    def ortho_extent(self) -> tuple[float, float]:
        """(width, height) of the image in world units for an orthographic camera."""
        return self.width / self.fx, self.height / self.fy

    @property
    def fov_x(self) -> float:
        """Horizontal field of view in radians (of a centred camera with this fx); 0 when orthographic."""
        if self.is_ortho:
            return 0.0
        return 2.0 * math.atan(0.5 * self.width / self.fx)

    @property
    def fov_y(self) -> float:
        if self.is_ortho:
            return 0.0
        return 2.0 * math.atan(0.5 * self.height / self.fy)

    # -- operations -----------------------------------------------------------------------
    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) -> pixel coordinates (N, 2) and depth along +z (N,).

        Applies the lens distortion when present. Points behind the camera get depth <= 0 and
        meaningless pixel coordinates (orthographic: valid coordinates); callers filter them by depth.
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        pc = p @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]
        z = pc[:, 2]
        if self.is_ortho:
            uv = np.stack([self.fx * pc[:, 0] + self.cx, self.fy * pc[:, 1] + self.cy], axis=1)
            return uv, z
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = pc[:, :2] / z[:, None]
        if self.distortion is not None:
            xy = self.distortion.apply(xy)
        uv = np.empty_like(xy)
        uv[:, 0] = self.fx * xy[:, 0] + self.cx
        uv[:, 1] = self.fy * xy[:, 1] + self.cy
        return uv, z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) at camera-space depths z (N,) -> world points (N, 3); the inverse
        of :meth:`project` for a camera without distortion (distortion is ignored)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        z = np.asarray(depth, dtype=np.float64).reshape(-1)
        x = (uv[:, 0] - self.cx) / self.fx
        y = (uv[:, 1] - self.cy) / self.fy
        if not self.is_ortho:
            x, y = x * z, y * z
        pc = np.stack([x, y, z], axis=1)
        c2w = self.camera_to_world
        return pc @ c2w[:3, :3].T + c2w[:3, 3]

    def resized(self, width: int, height: int) -> "Camera":
        """The same camera for the image resampled to ``width`` x ``height`` pixels."""
        sx, sy = width / self.width, height / self.height
        return replace(
            self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy, width=width, height=height
        )

    def with_pose(self, world_to_camera: np.ndarray) -> "Camera":
        return replace(self, world_to_camera=np.array(world_to_camera, dtype=np.float64))

    def without_distortion(self) -> "Camera":
        return replace(self, distortion=None)

    def __repr__(self) -> str:
        c = self.center
        return (
            f"Camera({self.name!r}, {self.width}x{self.height}, fx={self.fx:.2f}, fy={self.fy:.2f}, "
            f"cx={self.cx:.2f}, cy={self.cy:.2f}, center=({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f})"
            + (", orthographic)" if self.is_ortho else ")")
        )


def look_at(
    eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """World-to-camera (4, 4) OpenCV pose of a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that appears up in the image (Blender's +Z by default).
    """
    eye_v, target_v, up_v = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target_v - eye_v
    if np.linalg.norm(z) < 1e-12:
        raise CameraError("look_at: eye and target coincide", "place the camera away from its target")
    z /= np.linalg.norm(z)
    x = np.cross(z, up_v)
    if np.linalg.norm(x) < 1e-9:  # looking straight along up: pick any perpendicular
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # image down
    r = np.stack([x, y, z])  # rows: camera axes in world
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = -r @ eye_v
    return m


# ---------------------------------------------------------------------------------------------
# Blender
# ---------------------------------------------------------------------------------------------

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


@dataclass(frozen=True)
class BlenderCameraParams:
    """The numbers that define a Blender camera's projection (``bridge/`` fills this from bpy).

    lens: focal length in mm (``camera.data.lens``).
    sensor_width, sensor_height: mm (``camera.data.sensor_width/height``).
    sensor_fit: "AUTO" | "HORIZONTAL" | "VERTICAL".
    shift_x, shift_y: lens shift in units of the fitted sensor dimension.
    resolution_x, resolution_y, resolution_percentage: ``scene.render`` values; the image is
        ``resolution * percentage // 100`` pixels.
    pixel_aspect_x, pixel_aspect_y: ``scene.render.pixel_aspect_x/y``.
    matrix_world: (4, 4) camera object's world matrix (scale is ignored, as Blender does).
    type: "PERSP" (the only supported type), "ORTHO" or "PANO".
    name: the camera object's name, used in error messages.
    """

    lens: float
    sensor_width: float
    sensor_height: float
    sensor_fit: str
    shift_x: float
    shift_y: float
    resolution_x: int
    resolution_y: int
    resolution_percentage: int = 100
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0
    matrix_world: np.ndarray = field(default_factory=lambda: np.eye(4))
    type: str = "PERSP"
    name: str = ""

    @property
    def image_size(self) -> tuple[int, int]:
        """Rendered image size in pixels (Blender's integer rounding)."""
        pct = int(self.resolution_percentage)
        return int(self.resolution_x) * pct // 100, int(self.resolution_y) * pct // 100


def camera_from_blender(p: BlenderCameraParams) -> Camera:
    """Engine camera equal to Blender's projection (``BKE_camera_params_compute_viewplane``)."""
    label = f"camera '{p.name}'" if p.name else "camera"
    if p.type != "PERSP":
        kind = {"ORTHO": "orthographic", "PANO": "panoramic"}.get(p.type, p.type)
        raise CameraError(
            f"{label} is {kind}: not supported",
            f"set {p.name or 'the camera'}'s type to Perspective (Camera properties > Lens > Type)",
        )
    if p.sensor_fit not in SENSOR_FITS:
        raise CameraError(f"{label} has unknown sensor fit {p.sensor_fit!r}", "use AUTO, HORIZONTAL or VERTICAL")
    if p.lens <= 0 or p.sensor_width <= 0 or p.sensor_height <= 0:
        raise CameraError(
            f"{label} has a zero or negative focal length or sensor size",
            "give the camera a positive focal length and sensor size",
        )
    if p.pixel_aspect_x <= 0 or p.pixel_aspect_y <= 0:
        raise CameraError(f"{label}: pixel aspect must be positive", "set Output > Format > Aspect to positive values")
    winx, winy = p.image_size
    if winx <= 0 or winy <= 0:
        raise CameraError(f"{label}: render resolution is {winx}x{winy}", "set a positive render resolution")
    xasp, yasp = p.pixel_aspect_x * winx, p.pixel_aspect_y * winy
    ycor = p.pixel_aspect_y / p.pixel_aspect_x
    fit = p.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if xasp >= yasp else "VERTICAL"
    sensor = p.sensor_height if p.sensor_fit == "VERTICAL" else p.sensor_width
    viewfac = winx if fit == "HORIZONTAL" else ycor * winy
    fx = p.lens * viewfac / sensor
    fy = fx / ycor
    cx = 0.5 * winx - p.shift_x * viewfac
    cy = 0.5 * winy + p.shift_y * viewfac / ycor
    c2w_gl = _orthonormalize(_as_matrix4(p.matrix_world, f"{label} matrix_world"))
    if np.linalg.det(c2w_gl[:3, :3]) < 0:
        raise CameraError(f"{label} has a negative (mirroring) scale", f"make {p.name or 'the camera'}'s scale positive")
    w2c = np.linalg.inv(c2w_gl @ _CV_FROM_GL)
    return Camera(fx, fy, cx, cy, winx, winy, w2c, None, p.name)


def blender_params_from_camera(cam: Camera, sensor_width: float = 36.0) -> BlenderCameraParams:
    """Blender camera + render settings that reproduce ``cam``'s projection exactly.

    The sensor is ``sensor_width`` mm with AUTO fit, resolution percentage 100, pixel aspect chosen
    from fx/fy (both >= 1, as Blender requires). Distortion cannot be represented and is dropped.
    """
    ratio = cam.fx / cam.fy  # = ycor = pixel_aspect_y / pixel_aspect_x
    asp_x, asp_y = (1.0, ratio) if ratio >= 1.0 else (1.0 / ratio, 1.0)
    ycor = asp_y / asp_x
    w, h = cam.width, cam.height
    viewfac = w if asp_x * w >= asp_y * h else ycor * h
    lens = cam.fx * sensor_width / viewfac
    shift_x = (0.5 * w - cam.cx) / viewfac
    shift_y = (cam.cy - 0.5 * h) * ycor / viewfac
    return BlenderCameraParams(
        lens=lens,
        sensor_width=sensor_width,
        sensor_height=sensor_width,
        sensor_fit="AUTO",
        shift_x=shift_x,
        shift_y=shift_y,
        resolution_x=w,
        resolution_y=h,
        resolution_percentage=100,
        pixel_aspect_x=asp_x,
        pixel_aspect_y=asp_y,
        matrix_world=cam.camera_to_world_gl,
        type="PERSP",
        name=cam.name,
    )


# ---------------------------------------------------------------------------------------------
# transforms.json (NeRF / Blender / instant-ngp / nerfstudio)
# ---------------------------------------------------------------------------------------------

_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")


def _number(d: dict, key: str, where: str) -> float | None:
    if key not in d or d[key] is None:
        return None
    try:
        value = float(d[key])
    except (TypeError, ValueError):
        raise PosedSetError(f"{where}: '{key}' is not a number ({d[key]!r})", f"write '{key}' as a number") from None
    if not math.isfinite(value):
        raise PosedSetError(f"{where}: '{key}' is not finite", f"write a finite '{key}'")
    return value


def camera_from_transforms_frame(
    meta: dict, frame: dict, image_size: tuple[int, int] | None = None, index: int = 0
) -> Camera:
    """One camera from a transforms.json frame; frame keys override the file's global keys.

    Intrinsics: ``fl_x``/``fl_y`` (pixels) or ``camera_angle_x``/``camera_angle_y`` (radians),
    ``cx``/``cy`` (default centre), ``w``/``h`` (default ``image_size``), optional
    ``k1 k2 p1 p2 [k3]``. ``transform_matrix`` is camera-to-world in OpenGL/Blender axes.
    """
    where = f"transforms.json frame {index} ({frame.get('file_path', '?')})"

    def get(key: str) -> float | None:
        v = _number(frame, key, where)
        return v if v is not None else _number(meta, key, "transforms.json")

    w, h = get("w"), get("h")
    if w is None or h is None:
        if image_size is None:
            raise PosedSetError(
                f"{where}: no image size", "add 'w' and 'h' to transforms.json, or load it with its images"
            )
        w, h = float(image_size[0]), float(image_size[1])
    width, height = int(round(w)), int(round(h))
    if width <= 0 or height <= 0:
        raise PosedSetError(f"{where}: image size {w}x{h} is not positive", "give positive 'w' and 'h'")
    fl_x, fl_y = get("fl_x"), get("fl_y")
    ang_x, ang_y = get("camera_angle_x"), get("camera_angle_y")
    for key, value in (("camera_angle_x", ang_x), ("camera_angle_y", ang_y)):
        if value is not None and not 0.0 < value < math.pi:
            raise CameraError(
                f"{where}: {key} = {value:g} rad is not a field of view in (0, pi)",
                f"give '{key}' in radians, e.g. 0.69 for 40 degrees",
            )
    if fl_x is None and ang_x is not None:
        fl_x = 0.5 * width / math.tan(0.5 * ang_x)
    if fl_y is None and ang_y is not None:
        fl_y = 0.5 * height / math.tan(0.5 * ang_y)
    if fl_x is None and fl_y is None:
        raise PosedSetError(
            f"{where}: no intrinsics (focal length)",
            "add 'camera_angle_x' (radians) or 'fl_x' (pixels) to transforms.json",
        )
    fl_x = fl_y if fl_x is None else fl_x
    fl_y = fl_x if fl_y is None else fl_y
    if fl_x <= 0 or fl_y <= 0:
        raise CameraError(
            f"{where}: zero or negative focal length (fl_x={fl_x:g}, fl_y={fl_y:g})",
            "give a positive 'fl_x'/'fl_y' or a 'camera_angle_x' in (0, pi)",
        )
    cx, cy = get("cx"), get("cy")
    cx = 0.5 * width if cx is None else cx
    cy = 0.5 * height if cy is None else cy
    coeffs = {k: get(k) or 0.0 for k in _DISTORTION_KEYS}
    distortion = Distortion(**coeffs)
    if "transform_matrix" not in frame:
        raise PosedSetError(f"{where}: no 'transform_matrix'", "give each frame a 4x4 camera-to-world 'transform_matrix'")
    try:
        c2w_gl = _as_matrix4(frame["transform_matrix"], f"{where} transform_matrix")
    except CameraError as e:
        raise PosedSetError(e.message, e.fix) from None
    c2w_gl = _orthonormalize(c2w_gl)
    w2c = np.linalg.inv(c2w_gl @ _CV_FROM_GL)
    name = Path(str(frame.get("file_path", f"frame_{index:04d}"))).stem
    return Camera(fl_x, fl_y, cx, cy, width, height, w2c, distortion, name)


def cameras_from_transforms(
    meta: dict, image_sizes: Sequence[tuple[int, int] | None] | None = None
) -> list[Camera]:
    """All cameras of a parsed transforms.json (``image_sizes[i]`` fills a missing w/h)."""
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise PosedSetError("transforms.json has no frames", "add a 'frames' list with file_path and transform_matrix")
    cams = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise PosedSetError(f"transforms.json frame {i} is not an object", "write each frame as a JSON object")
        size = image_sizes[i] if image_sizes is not None else None
        cams.append(camera_from_transforms_frame(meta, frame, size, i))
    return cams


def _intrinsics_dict(cam: Camera) -> dict[str, Any]:
    d: dict[str, Any] = {
        "camera_angle_x": cam.fov_x,
        "camera_angle_y": cam.fov_y,
        "fl_x": cam.fx,
        "fl_y": cam.fy,
        "cx": cam.cx,
        "cy": cam.cy,
        "w": cam.width,
        "h": cam.height,
    }
    if cam.distortion is not None:
        for key in _DISTORTION_KEYS:
            d[key] = getattr(cam.distortion, key)
    return d


def transforms_from_cameras(cameras: Sequence[Camera], file_paths: Sequence[str]) -> dict[str, Any]:
    """A transforms.json dict: shared intrinsics at the top level, otherwise per frame.

    Writes both ``camera_angle_x`` and ``fl_x fl_y cx cy w h`` (plus distortion), so NeRF-synthetic
    readers, instant-ngp and nerfstudio all read it.
    """
    if len(cameras) != len(file_paths):
        raise PosedSetError(
            f"{len(file_paths)} image paths for {len(cameras)} cameras", "give one image path per camera"
        )
    if not cameras:
        raise PosedSetError("no cameras to write", "give at least one camera")
    intr = [_intrinsics_dict(c) for c in cameras]
    shared = all(i == intr[0] for i in intr)
    out: dict[str, Any] = dict(intr[0]) if shared else {}
    frames = []
    for cam, path, i in zip(cameras, file_paths, intr):
        frame: dict[str, Any] = {"file_path": str(path)}
        if not shared:
            frame.update(i)
        frame["transform_matrix"] = cam.camera_to_world_gl.tolist()
        frames.append(frame)
    out["frames"] = frames
    return out


# ---------------------------------------------------------------------------------------------
# COLMAP (sparse model: cameras.txt/images.txt or cameras.bin/images.bin)
# ---------------------------------------------------------------------------------------------

# model id -> (name, number of params)
_COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}


@dataclass(frozen=True)
class _ColmapIntrinsics:
    model: str
    width: int
    height: int
    params: tuple[float, ...]


def _colmap_intrinsics(c: _ColmapIntrinsics) -> tuple[float, float, float, float, Distortion | None]:
    p = c.params
    if c.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], None
    if c.model == "PINHOLE":
        return p[0], p[1], p[2], p[3], None
    if c.model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3])
    if c.model == "RADIAL":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3], k2=p[4])
    if c.model == "OPENCV":
        return p[0], p[1], p[2], p[3], Distortion(k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    raise CameraError(
        f"COLMAP camera model {c.model} is not supported",
        "re-run COLMAP with a PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL or OPENCV camera model",
    )


def _qvec_to_rotation(q: Sequence[float]) -> np.ndarray:
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if n < 1e-12:
        raise CameraError("COLMAP image has a zero quaternion", "check images.txt/images.bin")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _read_colmap_cameras_txt(path: Path) -> dict[int, _ColmapIntrinsics]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        out[int(parts[0])] = _ColmapIntrinsics(parts[1], int(parts[2]), int(parts[3]), tuple(map(float, parts[4:])))
    return out


def _read_colmap_images_txt(path: Path) -> list[tuple[str, int, np.ndarray]]:
    # As COLMAP's own reader: a non-comment pose line, then always one (maybe empty) points line.
    lines = iter(path.read_text().splitlines())
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        q = [float(v) for v in parts[1:5]]
        t = [float(v) for v in parts[5:8]]
        w2c = np.eye(4)
        w2c[:3, :3] = _qvec_to_rotation(q)
        w2c[:3, 3] = t
        out.append((" ".join(parts[9:]), int(parts[8]), w2c))
        next(lines, None)
    return out


def _read_colmap_cameras_bin(path: Path) -> dict[int, _ColmapIntrinsics]:
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data, 0)
    off = 8
    out = {}
    for _ in range(n):
        cam_id, model_id, w, h = struct.unpack_from("<iiQQ", data, off)
        off += 24
        if model_id not in _COLMAP_MODELS:
            raise CameraError(f"{path.name}: unknown COLMAP camera model id {model_id}", "export the model from COLMAP again")
        name, nparams = _COLMAP_MODELS[model_id]
        params = struct.unpack_from(f"<{nparams}d", data, off)
        off += 8 * nparams
        out[cam_id] = _ColmapIntrinsics(name, int(w), int(h), tuple(params))
    return out


def _read_colmap_images_bin(path: Path) -> list[tuple[str, int, np.ndarray]]:
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data, 0)
    off = 8
    out = []
    for _ in range(n):
        _image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = struct.unpack_from("<i7di", data, off)
        off += 4 + 56 + 4
        end = data.index(b"\x00", off)
        name = data[off:end].decode("utf-8")
        off = end + 1
        (npts,) = struct.unpack_from("<Q", data, off)
        off += 8 + npts * 24
        w2c = np.eye(4)
        w2c[:3, :3] = _qvec_to_rotation((qw, qx, qy, qz))
        w2c[:3, 3] = (tx, ty, tz)
        out.append((name, cam_id, w2c))
    return out


def cameras_from_colmap(model_dir: str | Path) -> list[Camera]:
    """Cameras of a COLMAP sparse model folder (text or binary), sorted by image name.

    Each camera's ``name`` is the image file name as COLMAP stored it (relative to the image folder).
    """
    d = Path(model_dir)
    try:
        if (d / "cameras.bin").exists() and (d / "images.bin").exists():
            intr = _read_colmap_cameras_bin(d / "cameras.bin")
            images = _read_colmap_images_bin(d / "images.bin")
        elif (d / "cameras.txt").exists() and (d / "images.txt").exists():
            intr = _read_colmap_cameras_txt(d / "cameras.txt")
            images = _read_colmap_images_txt(d / "images.txt")
        else:
            raise PosedSetError(
                f"{d} is not a COLMAP sparse model (no cameras/images .txt or .bin)",
                "point to the folder that holds cameras.bin and images.bin (e.g. sparse/0)",
            )
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
        raise PosedSetError(f"COLMAP model in {d} does not parse ({e})", "export the model from COLMAP again") from None
    cams = []
    for name, cam_id, w2c in sorted(images, key=lambda x: x[0]):
        if cam_id not in intr:
            raise PosedSetError(f"COLMAP image {name} uses missing camera {cam_id}", "export the model from COLMAP again")
        c = intr[cam_id]
        fx, fy, cx, cy, dist = _colmap_intrinsics(c)
        cams.append(Camera(fx, fy, cx, cy, c.width, c.height, w2c, dist, name))
    if not cams:
        raise PosedSetError(f"COLMAP model in {d} has no registered images", "run COLMAP's mapper until images register")
    return cams


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle in degrees of the relative rotation between two (3, 3) rotation matrices."""
    c = (np.trace(np.asarray(r_a).T @ np.asarray(r_b)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def orthonormal_pose(m: np.ndarray) -> np.ndarray:
    """The (4, 4) rigid transform nearest ``m``: its rotation block projected onto SO(3) by SVD
    (a reflection flipped back to a rotation), its translation kept."""
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = m[:3, 3]
    return out
