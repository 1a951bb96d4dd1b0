"""Engine :class:`~viewforge.engine.io.types.Mesh` -> a Blender mesh object with a material.

The engine's world frame is Blender's world frame (Z up, metres), so vertices are copied as they
are. Everything is set with ``foreach_set`` on whole numpy buffers (no Python loop per vertex or
face); a 1M-face mesh builds in about a second and a half (``bench/import_mesh.py`` has the
table). Per-vertex normals become custom normals (``normals_split_custom_set_from_vertices``,
about 0.5 s per million faces), with smooth shading.

New datablocks only: a mesh, an object, a material and (when the mesh has a texture) a packed
image. Blender gives them unique names (``name.001``) when the name is taken; existing objects,
meshes, materials and images are never renamed, changed or removed.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..engine.errors import MeshError, ViewforgeError
from ..engine.io.types import Mesh

log = logging.getLogger(__name__)

#: Names of the generated layers.
UV_NAME = "UVMap"
COLOR_NAME = "Color"


def _build_material(mesh: Mesh, name: str, image):
    """A Principled BSDF material: texture -> Base Color (+ Alpha), else vertex colour, else grey."""
    import bpy

    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # 5.0 always uses nodes (and deprecates use_nodes)
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    bsdf.inputs["Roughness"].default_value = 0.8
    if image is not None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.name = tex.label = "Viewforge Texture"
        tex.image = image
        tex.interpolation = "Linear"
        tex.extension = "EXTEND"  # no bleeding across the UV border at seams
        tex.location = (bsdf.location.x - 400, bsdf.location.y)
        uv = nodes.new("ShaderNodeUVMap")
        uv.uv_map = UV_NAME
        uv.location = (tex.location.x - 250, tex.location.y)
        links.new(uv.outputs["UV"], tex.inputs["Vector"])
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        if mesh.texture is not None and mesh.texture.shape[2] == 4 and int(mesh.texture[..., 3].min()) < 255:
            links.new(tex.outputs["Alpha"], bsdf.inputs["Alpha"])
    elif mesh.colors is not None:
        col = nodes.new("ShaderNodeVertexColor")
        col.layer_name = COLOR_NAME
        col.location = (bsdf.location.x - 300, bsdf.location.y)
        links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def mesh_to_blender(mesh: Mesh, name: str | None = None, collection=None, scene=None, material: bool = True):
    """Build ``mesh`` as a new Blender object and link it into a collection.

    mesh: the engine mesh (vertices in Blender's world frame, UVs origin bottom-left, texture row
        0 = top, per-vertex normals/colours optional).
    name: object/mesh/material base name (default ``mesh.name``).
    collection: where to link the object; default the context's active collection, else
        ``scene``'s (or the context scene's) master collection.
    scene: used only for the default collection.
    material: add the Principled BSDF material (texture or vertex colours into Base Color).

    Returns the new object. Raises :class:`MeshError` for an empty mesh.
    """
    import bpy

    if mesh.num_faces == 0 or mesh.num_vertices == 0:
        raise MeshError(f"mesh '{mesh.name}' has no faces", "give a mesh with at least one triangle")
    label = name or mesh.name or "viewforge_mesh"
    t0 = time.perf_counter()
    v, f = mesh.vertices, mesh.faces
    nv, nf = len(v), len(f)
    corners = f.reshape(-1)  # (3F,) vertex index per face corner

    me = bpy.data.meshes.new(label)
    me.vertices.add(nv)
    me.vertices.foreach_set("co", v.reshape(-1))
    me.loops.add(3 * nf)
    me.loops.foreach_set("vertex_index", corners)
    me.polygons.add(nf)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * nf, 3, dtype=np.int32))
    me.update(calc_edges=True)

    if mesh.uvs is not None:
        uv_layer = me.uv_layers.new(name=UV_NAME)
        uv_layer.uv.foreach_set("vector", mesh.uvs[corners].reshape(-1))
    if mesh.colors is not None:
        attr = me.color_attributes.new(COLOR_NAME, "BYTE_COLOR", "POINT")
        # Byte colours store sRGB; "color_srgb" takes the stored values directly (no conversion).
        attr.data.foreach_set("color_srgb", (mesh.colors.astype(np.float32) / 255.0).reshape(-1))
        me.color_attributes.active_color = attr
        me.color_attributes.render_color_index = me.color_attributes.active_color_index
    if mesh.normals is not None:
        me.shade_smooth()
        me.normals_split_custom_set_from_vertices(mesh.normals)
    me.update()

    image = None
    if mesh.texture is not None:
        from .images import array_to_image

        image = array_to_image(mesh.texture, f"{label}_texture", pack=True)
    if material:
        me.materials.append(_build_material(mesh, label, image))

    obj = bpy.data.objects.new(label, me)
    if collection is None:
        collection = getattr(bpy.context, "collection", None)
        if collection is None:
            collection = (scene or bpy.context.scene).collection
    collection.objects.link(obj)
    log.info("built mesh %s: %d vertices, %d faces in %.2f s", obj.name, nv, nf, time.perf_counter() - t0)
    return obj


def glb_base_color_png(path) -> bytes | None:
    """The embedded image bytes (PNG or JPEG) of a GLB's first material's base-colour texture,
    or None (no texture, not a GLB, an external image)."""
    import json
    import struct
    from pathlib import Path

    data = Path(path).read_bytes()
    if len(data) < 20 or data[:4] != b"glTF":
        return None
    offset, doc, binary = 12, None, b""
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from("<I4s", data, offset)
        chunk = data[offset + 8 : offset + 8 + length]
        if kind == b"JSON":
            doc = json.loads(chunk.decode("utf-8"))
        elif kind == b"BIN\0":
            binary = chunk
        offset += 8 + length
    try:
        tex = doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]["index"]
        view = doc["bufferViews"][doc["images"][doc["textures"][tex]["source"]]["bufferView"]]
    except (KeyError, IndexError, TypeError):
        return None
    start = int(view.get("byteOffset", 0))
    return binary[start : start + int(view["byteLength"])] or None


def decode_image_with_blender(encoded: bytes) -> np.ndarray | None:
    """PNG or JPEG bytes -> (H, W, 3|4) uint8, row 0 = top, decoded by Blender's image loader
    (for a Blender Python without Pillow). None when Blender cannot read them."""
    import os
    import tempfile

    import bpy

    from .images import image_to_array

    suffix = ".jpg" if encoded[:3] == b"\xff\xd8\xff" else ".png"
    fd, tmp = tempfile.mkstemp(prefix="viewforge-texture-", suffix=suffix)
    image = None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encoded)
        image = bpy.data.images.load(tmp, check_existing=False)
        rgb, alpha = image_to_array(image)
        planes = [rgb] if alpha is None else [rgb, alpha[..., None]]
        return np.round(np.concatenate(planes, axis=2) * 255.0).astype(np.uint8)
    except (RuntimeError, ValueError, ViewforgeError) as e:
        log.warning("the texture could not be decoded by Blender (%s)", e)
        return None
    finally:
        if image is not None:
            bpy.data.images.remove(image)
        os.unlink(tmp)


def read_result_mesh(path) -> Mesh:
    """A job's output mesh (:func:`viewforge.engine.io.mesh.read_mesh`). Without Pillow (a
    Blender whose jobs run in an engine Python has none), the mesh reader cannot decode the
    GLB's texture: Blender's own image loader decodes it then."""
    import importlib.util
    from dataclasses import replace
    from pathlib import Path

    from ..engine.io.mesh import read_mesh

    mesh = read_mesh(path)
    if mesh.texture is None and mesh.uvs is not None and Path(path).suffix.lower() == ".glb" \
            and importlib.util.find_spec("PIL") is None:  # fmt: skip
        encoded = glb_base_color_png(path)
        texture = decode_image_with_blender(encoded) if encoded else None
        if texture is not None:
            mesh = replace(mesh, texture=texture)
    return mesh


def mesh_from_blender_object(obj) -> Mesh:
    """Positions (world frame) and triangles of a Blender mesh object, for tests and tools.

    UVs, colours and textures are not read back; faces with more than three corners are
    triangulated as fans.
    """
    me = obj.data
    nv, nl, np_ = len(me.vertices), len(me.loops), len(me.polygons)
    co = np.empty(nv * 3, np.float32)
    me.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    m = np.array(obj.matrix_world, dtype=np.float64)
    co = (co @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
    loops = np.empty(nl, np.int32)
    me.loops.foreach_get("vertex_index", loops)
    start = np.empty(np_, np.int32)
    total = np.empty(np_, np.int32)
    me.polygons.foreach_get("loop_start", start)
    me.polygons.foreach_get("loop_total", total)
    tris = []
    for k in np.unique(total):
        sel = start[total == k]
        for j in range(1, int(k) - 1):
            tris.append(np.stack([loops[sel], loops[sel + j], loops[sel + j + 1]], axis=1))
    faces = np.concatenate(tris) if tris else np.zeros((0, 3), np.int32)
    return Mesh(co, faces, name=obj.name)
