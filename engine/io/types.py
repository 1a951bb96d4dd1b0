"""Plain data types exchanged between the engine, bridge/ and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cameras import Camera
from ..errors import MeshError, PosedSetError


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh with optional per-vertex normals, UVs, colours and one base-colour texture.

    Coordinates are in the engine's world frame (the cameras' frame; for Blender, Z up). File
    formats with another convention (glTF is +Y up) are converted when read and written.

    vertices: (V, 3) float32.
    faces:    (F, 3) int32 vertex indices, counter-clockwise seen from outside.
    normals:  (V, 3) float32 unit vertex normals, or None.
    uvs:      (V, 2) float32 texture coordinates, origin at the image's *bottom*-left (glTF's v is
              flipped on read/write), or None. Vertices are split along UV seams.
    colors:   (V, 4) uint8 RGBA vertex colours, or None.
    texture:  (H, W, 3|4) uint8 base-colour image, row 0 = top, or None (needs ``uvs``).
    name:     object/mesh name.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    colors: np.ndarray | None = None
    texture: np.ndarray | None = None
    name: str = "viewforge_mesh"

    def __post_init__(self) -> None:
        v = np.ascontiguousarray(self.vertices, dtype=np.float32)
        f = np.ascontiguousarray(self.faces, dtype=np.int32)
        if v.ndim != 2 or v.shape[1] != 3:
            raise MeshError(f"mesh vertices have shape {v.shape}, expected (V, 3)", "give (V, 3) vertex positions")
        if f.ndim != 2 or f.shape[1] != 3:
            raise MeshError(f"mesh faces have shape {f.shape}, expected (F, 3)", "triangulate the mesh")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise MeshError("mesh faces index vertices that do not exist", "check the face indices")
        if not np.all(np.isfinite(v)):
            raise MeshError("mesh has non-finite vertex positions", "remove NaN/Inf vertices")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)
        for key, width, dtype in (("normals", 3, np.float32), ("uvs", 2, np.float32), ("colors", 4, np.uint8)):
            a = getattr(self, key)
            if a is None:
                continue
            a = np.ascontiguousarray(a, dtype=dtype)
            if a.shape != (len(v), width):
                raise MeshError(f"mesh {key} have shape {a.shape}, expected ({len(v)}, {width})", f"give one {key[:-1]} per vertex")
            object.__setattr__(self, key, a)
        if self.texture is not None:
            t = np.ascontiguousarray(self.texture, dtype=np.uint8)
            if t.ndim != 3 or t.shape[2] not in (3, 4):
                raise MeshError(f"mesh texture has shape {t.shape}, expected (H, W, 3|4)", "give an RGB(A) uint8 image")
            if self.uvs is None:
                raise MeshError("mesh has a texture but no UVs", "give UVs with the texture")
            object.__setattr__(self, "texture", t)

    @property
    def num_faces(self) -> int:
        return int(len(self.faces))

    @property
    def num_vertices(self) -> int:
        return int(len(self.vertices))

    def bounds(self) -> np.ndarray:
        """(2, 3) min and max corner."""
        if not len(self.vertices):
            raise MeshError("mesh is empty", "give a mesh with at least one face")
        return np.stack([self.vertices.min(0), self.vertices.max(0)])


@dataclass(frozen=True, eq=False)
class PosedSet:
    """Images with their cameras: the in-memory form of transforms.json + images.

    cameras: one Camera per image; camera i's width/height equal image i's size.
    images:  list of (H, W, 3) float32 RGB in [0, 1], linear in the file's values (sRGB-encoded
             as stored; no colour management).
    masks:   list of (H, W) float32 alpha in [0, 1], or None when the images have no alpha.
    names:   per-image identifiers (file stems).
    meta:    extra keys of transforms.json that are not camera data (kept for round trips).
    """

    cameras: list[Camera]
    images: list[np.ndarray]
    masks: list[np.ndarray] | None = None
    names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.cameras)
        if len(self.images) != n:
            raise PosedSetError(
                f"{len(self.images)} images for {n} cameras", "give exactly one image per camera (frame)"
            )
        if n == 0:
            raise PosedSetError("the posed set is empty", "give at least one image with its camera")
        if self.masks is not None and len(self.masks) != n:
            raise PosedSetError(f"{len(self.masks)} masks for {n} images", "give one mask per image or none")
        if not self.names:
            object.__setattr__(self, "names", [c.name or f"{i:04d}" for i, c in enumerate(self.cameras)])
        elif len(self.names) != n:
            raise PosedSetError(f"{len(self.names)} names for {n} images", "give one name per image")
        for i, (cam, img) in enumerate(zip(self.cameras, self.images)):
            if img.ndim != 3 or img.shape[2] != 3:
                raise PosedSetError(f"image {self.names[i]} has shape {img.shape}", "give (H, W, 3) RGB images")
            if img.shape[:2] != (cam.height, cam.width):
                raise PosedSetError(
                    f"image {self.names[i]} is {img.shape[1]}x{img.shape[0]} but its camera is {cam.width}x{cam.height}",
                    "fix 'w'/'h' in transforms.json or use the images the cameras were calibrated for",
                )
            if self.masks is not None and self.masks[i].shape != img.shape[:2]:
                raise PosedSetError(f"mask {self.names[i]} does not match its image size", "give masks of the image size")

    def __len__(self) -> int:
        return len(self.cameras)
