"""Mesh files: read GLB/glTF/OBJ/PLY (trimesh), write GLB and PLY.

Frames (docs/formats.md): the engine's world is Z up (Blender's). glTF is +Y up, so reading
converts exactly as Blender's glTF importer does, ``(x, y, z)_gltf -> (x, -z, y)``, and writing
does the inverse, ``(x, y, z) -> (x, z, -y)_gltf``: a GLB written here and imported into Blender
lands where the mesh was. OBJ and PLY have no fixed up axis: their coordinates are used as they
are (no conversion either way).

UVs: the engine's v axis points up from the image's bottom edge (Blender's convention); glTF's v
points down from the top edge, so v -> 1 - v on read and write.

GLB writing is done here (a few dozen lines of glTF JSON + binary buffers) rather than through
trimesh's exporter so that the material (PBR, metallic 0, roughness 0.8, embedded PNG), the
normals, the UVs and vertex colours *together with* a texture are written exactly as specified.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MeshError, OutputError
from .atomic import atomic_file, check_output_path
from .types import Mesh

log = logging.getLogger(__name__)

READ_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
WRITE_SUFFIXES = (".glb", ".ply")

#: glTF (Y up) -> engine/Blender (Z up): (x, y, z) -> (x, -z, y). A proper rotation (det +1).
GLTF_TO_ENGINE = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
#: Engine/Blender (Z up) -> glTF (Y up): (x, y, z) -> (x, z, -y).
ENGINE_TO_GLTF = GLTF_TO_ENGINE.T

#: Material written into GLB files.
GLB_METALLIC = 0.0
GLB_ROUGHNESS = 0.8


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _pil_to_uint8(img: Any) -> np.ndarray | None:
    """A PIL image (trimesh material texture) -> (H, W, 3|4) uint8, row 0 = top."""
    if img is None:
        return None
    try:
        has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
        arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except Exception as e:  # a texture that does not decode must not lose the geometry
        log.warning("texture could not be decoded (%s); reading the mesh without it", e)
        return None
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _material_image(material: Any) -> Any:
    if material is None:
        return None
    for attr in ("baseColorTexture", "image"):  # PBRMaterial (glTF), SimpleMaterial (OBJ)
        img = getattr(material, attr, None)
        if img is not None:
            return img
    return None


def _colors_to_rgba8(colors: Any, count: int) -> np.ndarray | None:
    if colors is None:
        return None
    c = np.asarray(colors)
    if c.ndim != 2 or len(c) != count or c.shape[1] not in (3, 4):
        return None
    if np.issubdtype(c.dtype, np.floating):
        c = np.round(np.clip(c, 0.0, 1.0) * 255.0)
    elif c.dtype == np.uint16:
        c = np.round(c / 257.0)
    c = c.astype(np.uint8)
    if c.shape[1] == 3:
        c = np.concatenate([c, np.full((count, 1), 255, np.uint8)], axis=1)
    return c


def _ply_property(data: np.ndarray, names: tuple[str, ...]) -> np.ndarray | None:
    for name in names:
        if name in data.dtype.names:
            return np.asarray(data[name])
    return None


def _read_ply(p: Path) -> Mesh:
    """PLY through plyfile (trimesh drops vertex colours when a PLY also has UVs)."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(p))
        vert = ply["vertex"].data
        x, y, z = (np.asarray(vert[k], dtype=np.float64) for k in ("x", "y", "z"))
    except Exception as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise MeshError(
            f"mesh file {p} does not parse as PLY ({reason})",
            "re-export it from a 3D application as binary or ASCII PLY",
        ) from None
    vertices = np.stack([x, y, z], axis=1)
    faces = np.zeros((0, 3), np.int64)
    if "face" in ply and len(ply["face"].data):
        fdata = ply["face"].data
        key = next((k for k in ("vertex_indices", "vertex_index") if k in fdata.dtype.names), None)
        if key is not None:
            lists = fdata[key]
            if lists.dtype != object and lists.ndim == 2:
                polys = [np.asarray(lists, dtype=np.int64)]
            else:  # variable-length lists: fan-triangulate polygons
                polys = []
                for poly in lists:
                    poly = np.asarray(poly, dtype=np.int64)
                    if len(poly) >= 3:
                        polys.append(np.stack([np.full(len(poly) - 2, poly[0]), poly[1:-1], poly[2:]], axis=1))
            if polys and polys[0].shape[1] > 3:
                polys = [np.concatenate([q[:, [0, k, k + 1]] for k in range(1, q.shape[1] - 1)]) for q in polys]
            faces = np.concatenate(polys) if polys else faces
    if len(faces) == 0:
        raise MeshError(f"mesh file {p} has no triangles", "export the object as a triangle mesh (not a point cloud)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"mesh file {p} has faces that index missing vertices", "re-export the mesh")
    n = [_ply_property(vert, (k,)) for k in ("nx", "ny", "nz")]
    normals = np.stack(n, axis=1) if all(c is not None for c in n) else vertex_normals(vertices, faces)
    u = _ply_property(vert, ("s", "u", "texture_u", "texture_s"))
    v = _ply_property(vert, ("t", "v", "texture_v", "texture_t"))
    uvs = np.stack([u, v], axis=1) if u is not None and v is not None else None
    rgb = [_ply_property(vert, (k, "diffuse_" + k)) for k in ("red", "green", "blue")]
    colors = None
    if all(c is not None for c in rgb):
        a = _ply_property(vert, ("alpha",))
        colors = _colors_to_rgba8(np.stack(rgb + ([a] if a is not None else []), axis=1), len(vertices))
    mesh = Mesh(vertices, faces, normals, uvs, colors, None, p.stem)
    log.info("read %s: %d vertices, %d faces", p.name, mesh.num_vertices, mesh.num_faces)
    return mesh


def _loaded_normals(geom: Any) -> np.ndarray | None:
    """The vertex normals the file gave, or None (trimesh keeps them in its cache; asking
    ``geom.vertex_normals`` would compute missing ones through scipy, which is not installed)."""
    try:
        cache = geom._cache
        nrm = cache["vertex_normals"] if "vertex_normals" in cache else None
    except Exception:
        return None
    if nrm is None:
        return None
    nrm = np.asarray(nrm, dtype=np.float64)
    return nrm if nrm.shape == (len(geom.vertices), 3) else None


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read a GLB, glTF, OBJ or PLY file into one engine :class:`Mesh`.

    A scene with several meshes/nodes is flattened with the node transforms applied. glTF
    coordinates are converted to the engine's Z-up frame as Blender's importer does; OBJ/PLY are
    taken as they are. Kept: UVs (v flipped for glTF), the base-colour texture of the first
    textured material, vertex colours and vertex normals (computed when the file has none).
    Raises :class:`MeshError` naming the file when it is missing, does not parse or has no
    triangles.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "not found"
        raise MeshError(f"mesh file {p} {what}", "give the path of a .glb, .gltf, .obj or .ply file")
    suffix = p.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise MeshError(
            f"mesh file {p.name} has an unsupported format '{p.suffix}'",
            f"convert it to one of {', '.join(READ_SUFFIXES)}",
        )
    if suffix == ".ply":
        return _read_ply(p)
    import trimesh

    try:
        scene = trimesh.load_scene(str(p), file_type=suffix[1:], process=False)
    except Exception as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise MeshError(
            f"mesh file {p} does not parse as {suffix[1:].upper()} ({reason})",
            "re-export it from a 3D application as GLB, OBJ or PLY",
        ) from None

    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        parts.append((np.asarray(transform, dtype=np.float64), geom))
    if not parts:
        raise MeshError(
            f"mesh file {p} has no triangles",
            "export the object as a triangle mesh (not points, lines or an empty scene)",
        )

    is_gltf = suffix in (".glb", ".gltf")
    vertices, faces, normals, uvs, colors = [], [], [], [], []
    texture = None
    texture_source = None
    any_uv = any(getattr(g.visual, "uv", None) is not None for _, g in parts)
    any_color = False
    offset = 0
    textured_parts = 0
    for transform, geom in parts:
        v = np.asarray(geom.vertices, dtype=np.float64)
        f = np.asarray(geom.faces, dtype=np.int64)
        nrm = _loaded_normals(geom)
        if nrm is None:
            nrm = vertex_normals(v, f).astype(np.float64)
        lin = transform[:3, :3]
        v = v @ lin.T + transform[:3, 3]
        if not np.allclose(lin, np.eye(3)):
            nrm = nrm @ np.linalg.inv(lin)  # (inv(L)^T n)^T = n^T inv(L)
            if np.linalg.det(lin) < 0:  # a mirroring node flips the winding
                f = f[:, ::-1]
        if is_gltf:
            v = v @ GLTF_TO_ENGINE.T
            nrm = nrm @ GLTF_TO_ENGINE.T
        length = np.linalg.norm(nrm, axis=1, keepdims=True)
        nrm = np.where(length > 1e-12, nrm / np.maximum(length, 1e-12), 0.0)
        visual = geom.visual
        uv = getattr(visual, "uv", None)
        if any_uv:
            uvs.append(np.asarray(uv, np.float64) if uv is not None and len(uv) == len(v) else np.zeros((len(v), 2)))
        image = _material_image(getattr(visual, "material", None)) if uv is not None else None
        if image is not None:
            textured_parts += 1
            if texture is None:
                texture = _pil_to_uint8(image)
                texture_source = image
            elif image is not texture_source:
                log.warning(
                    "%s: %s has its own texture; only the first textured material's texture is kept",
                    p.name,
                    geom.metadata.get("name", "a part"),
                )
        col = None
        if getattr(visual, "kind", None) == "vertex" and hasattr(visual, "vertex_colors"):
            col = _colors_to_rgba8(visual.vertex_colors, len(v))
        elif hasattr(visual, "vertex_attributes"):
            col = _colors_to_rgba8(visual.vertex_attributes.get("color"), len(v))
        any_color = any_color or col is not None
        colors.append(col if col is not None else np.full((len(v), 4), 255, np.uint8))
        vertices.append(v)
        faces.append(f + offset)
        normals.append(nrm)
        offset += len(v)

    mesh = Mesh(
        vertices=np.concatenate(vertices).astype(np.float32),
        faces=np.concatenate(faces).astype(np.int32),
        normals=np.concatenate(normals).astype(np.float32),
        uvs=np.concatenate(uvs).astype(np.float32) if any_uv else None,
        colors=np.concatenate(colors) if any_color else None,
        texture=texture,
        name=p.stem,
    )
    log.info(
        "read %s: %d vertices, %d faces, %d parts%s",
        p.name,
        mesh.num_vertices,
        mesh.num_faces,
        len(parts),
        f", texture {texture.shape[1]}x{texture.shape[0]}" if texture is not None else "",
    )
    return mesh


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) float32; (0, 0, 1) where undefined."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(length > 1e-20, n / np.maximum(length, 1e-30), np.array([0.0, 0.0, 1.0]))
    return out.astype(np.float32)


def _unit_normals(mesh: Mesh) -> np.ndarray:
    if mesh.normals is None:
        return vertex_normals(mesh.vertices, mesh.faces)
    n = mesh.normals.astype(np.float64)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    fallback = vertex_normals(mesh.vertices, mesh.faces).astype(np.float64)
    return np.where(length > 1e-12, n / np.maximum(length, 1e-12), fallback).astype(np.float32)


def _check_writable(mesh: Mesh, path: Path) -> None:
    if mesh.num_faces == 0 or mesh.num_vertices == 0:
        raise MeshError(
            f"mesh '{mesh.name}' has no faces; nothing to write to {path.name}",
            "give a mesh with at least one triangle",
        )


def _encode_png(image: np.ndarray) -> bytes:
    import cv2

    bgr = image[:, :, 2::-1] if image.shape[2] == 3 else image[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise OutputError("PNG encoding of the mesh texture failed", "check the texture image")
    return buf.tobytes()


class _GlbBuilder:
    """Accumulates 4-byte aligned buffer views and accessors of one binary buffer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-self.length) % 4
        if pad:
            self.chunks.append(b"\x00" * pad)
            self.length += pad
        entry: dict[str, Any] = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        self.chunks.append(data)
        self.length += len(data)
        self.views.append(entry)
        return len(self.views) - 1

    def accessor(
        self, array: np.ndarray, component: int, kind: str, target: int, normalized: bool = False, bounds: bool = False
    ) -> int:
        data = np.ascontiguousarray(array)
        entry: dict[str, Any] = {
            "bufferView": self.view(data.tobytes(), target),
            "componentType": component,
            "count": int(len(data)),
            "type": kind,
        }
        if normalized:
            entry["normalized"] = True
        if bounds:
            entry["min"] = [float(x) for x in data.min(axis=0)]
            entry["max"] = [float(x) for x in data.max(axis=0)]
        self.accessors.append(entry)
        return len(self.accessors) - 1

    def binary(self) -> bytes:
        blob = b"".join(self.chunks)
        return blob + b"\x00" * ((-len(blob)) % 4)


_FLOAT, _UBYTE, _UINT = 5126, 5121, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def glb_bytes(mesh: Mesh) -> bytes:
    """The GLB file content for ``mesh`` (see :func:`write_glb`)."""
    _check_writable(mesh, Path(mesh.name))
    b = _GlbBuilder()
    positions = (mesh.vertices.astype(np.float64) @ ENGINE_TO_GLTF.T).astype(np.float32)
    normals = (_unit_normals(mesh).astype(np.float64) @ ENGINE_TO_GLTF.T).astype(np.float32)
    attributes: dict[str, int] = {
        "POSITION": b.accessor(positions, _FLOAT, "VEC3", _ARRAY_BUFFER, bounds=True),
        "NORMAL": b.accessor(normals, _FLOAT, "VEC3", _ARRAY_BUFFER),
    }
    if mesh.uvs is not None:
        uv = mesh.uvs.astype(np.float32).copy()
        uv[:, 1] = 1.0 - uv[:, 1]
        attributes["TEXCOORD_0"] = b.accessor(uv, _FLOAT, "VEC2", _ARRAY_BUFFER)
    if mesh.colors is not None:
        attributes["COLOR_0"] = b.accessor(mesh.colors, _UBYTE, "VEC4", _ARRAY_BUFFER, normalized=True)
    indices = b.accessor(mesh.faces.astype(np.uint32).reshape(-1), _UINT, "SCALAR", _ELEMENT_ARRAY_BUFFER)

    pbr: dict[str, Any] = {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
        "metallicFactor": GLB_METALLIC,
        "roughnessFactor": GLB_ROUGHNESS,
    }
    gltf: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "viewforge"},
        "scene": 0,
        "scenes": [{"name": "Scene", "nodes": [0]}],
        "nodes": [{"name": mesh.name, "mesh": 0}],
        "meshes": [
            {
                "name": mesh.name,
                "primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": 4}],
            }
        ],
        "materials": [{"name": f"{mesh.name}_material", "pbrMetallicRoughness": pbr, "doubleSided": False}],
    }
    if mesh.texture is not None:
        image_view = b.view(_encode_png(mesh.texture))
        gltf["images"] = [{"name": f"{mesh.name}_basecolor", "mimeType": "image/png", "bufferView": image_view}]
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987}]  # LINEAR, LINEAR_MIPMAP_LINEAR; wrap REPEAT
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        pbr["baseColorTexture"] = {"index": 0, "texCoord": 0}
    binary = b.binary()
    gltf["buffers"] = [{"byteLength": len(binary)}]
    gltf["bufferViews"] = b.views
    gltf["accessors"] = b.accessors
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * ((-len(js)) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return b"".join(
        [
            struct.pack("<4sII", b"glTF", 2, total),
            struct.pack("<I4s", len(js), b"JSON"),
            js,
            struct.pack("<I4s", len(binary), b"BIN\x00"),
            binary,
        ]
    )


def write_glb(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` as a binary glTF (.glb), converted from the engine's Z up to glTF's Y up.

    Contents: positions, unit normals (computed when the mesh has none), TEXCOORD_0 (v flipped),
    COLOR_0 (uint8 normalised) when present, uint32 indices, and one PBR material (metallic 0,
    roughness 0.8) whose base colour is the embedded PNG texture when the mesh has one. Blender's
    glTF importer puts the vertices back where they are in the engine frame. Atomic; returns the
    absolute path.
    """
    p = check_output_path(path, (".glb",))
    data = glb_bytes(mesh)
    with atomic_file(p) as tmp:
        tmp.write_bytes(data)
    log.info("wrote %s (%d vertices, %d faces)", p, mesh.num_vertices, mesh.num_faces)
    return p


def write_ply(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` as a binary little-endian PLY (plyfile), coordinates as they are (no axis change).

    Vertex properties: x y z, nx ny nz, red green blue alpha (uint8, when the mesh has colours),
    s t (float, when it has UVs; v up as in the engine); faces as ``vertex_indices`` lists. A
    texture image cannot be stored in PLY and is dropped (write a GLB to keep it). Atomic;
    returns the absolute path.
    """
    from plyfile import PlyData, PlyElement

    p = check_output_path(path, (".ply",))
    _check_writable(mesh, p)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    if mesh.uvs is not None:
        fields += [("s", "<f4"), ("t", "<f4")]
    vert = np.empty(mesh.num_vertices, dtype=fields)
    normals = _unit_normals(mesh)
    for k, name in enumerate("xyz"):
        vert[name] = mesh.vertices[:, k]
        vert["n" + name] = normals[:, k]
    if mesh.colors is not None:
        for k, name in enumerate(("red", "green", "blue", "alpha")):
            vert[name] = mesh.colors[:, k]
    if mesh.uvs is not None:
        vert["s"] = mesh.uvs[:, 0]
        vert["t"] = mesh.uvs[:, 1]
    face = np.empty(mesh.num_faces, dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = mesh.faces
    if mesh.texture is not None:
        log.warning("PLY cannot hold the texture of %s; it is not written (use .glb)", mesh.name)
    ply = PlyData([PlyElement.describe(vert, "vertex"), PlyElement.describe(face, "face")], text=False, byte_order="<")
    with atomic_file(p) as tmp:
        ply.write(str(tmp))
    log.info("wrote %s (%d vertices, %d faces)", p, mesh.num_vertices, mesh.num_faces)
    return p


def write_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` in the format of ``path``'s suffix: .glb or .ply.

    A .blend is built in Blender, not by the engine: use the Blender bridge (or ``viewforge
    reconstruct -o OUT.blend``, which runs it).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".glb":
        return write_glb(mesh, path)
    if suffix == ".ply":
        return write_ply(mesh, path)
    if suffix == ".blend":
        raise OutputError(
            f"the engine cannot write {Path(path).name}: .blend files are made in Blender",
            "write .glb or .ply here, or use the Blender bridge (viewforge.bridge) to build the object "
            "and save the .blend",
        )
    raise OutputError(
        f"mesh output {Path(path).name} has an unsupported extension '{Path(path).suffix}'",
        f"use one of {', '.join(WRITE_SUFFIXES)}",
    )


__all__ = [
    "ENGINE_TO_GLTF",
    "GLTF_TO_ENGINE",
    "glb_bytes",
    "read_mesh",
    "vertex_normals",
    "write_glb",
    "write_mesh",
    "write_ply",
]
