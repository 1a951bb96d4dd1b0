"""bridge.mesh: engine Mesh -> Blender object with UVs, normals, colours and a textured material."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.blender


def _cube_mesh(with_texture=True, with_colors=True, name="scan"):
    """A cube split along UV seams: 24 vertices (4 per side), 12 triangles, random UVs/texture."""
    rng = np.random.default_rng(0)
    verts, faces, normals = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            u, v = np.eye(3)[(axis + 1) % 3], np.eye(3)[(axis + 2) % 3]
            if sign < 0:
                u, v = v, u
            base = len(verts)
            for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                verts.append(n + a * u + b * v)
                normals.append(n)
            faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    from viewforge.engine.io.types import Mesh

    nv = len(verts)
    return Mesh(
        vertices=np.array(verts) * 0.5 + [1.0, 2.0, 3.0],
        faces=np.array(faces),
        normals=np.array(normals),
        uvs=rng.random((nv, 2)),
        colors=(rng.random((nv, 4)) * 255).astype(np.uint8) if with_colors else None,
        texture=(rng.random((16, 24, 3)) * 255).astype(np.uint8) if with_texture else None,
        name=name,
    )


def _faces_of(me):
    loops = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", loops)
    total = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", total)
    assert (total == 3).all()
    return loops.reshape(-1, 3)


def _existing_state(bpy):
    """Name -> a fingerprint of the data of every object, mesh, material and image."""
    state = {}
    for ob in bpy.data.objects:
        state[("object", ob.name)] = (ob.data.name if ob.data else None, tuple(np.array(ob.matrix_world).ravel()))
    for me in bpy.data.meshes:
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        state[("mesh", me.name)] = (tuple(co), len(me.polygons), tuple(m.name for m in me.materials))
    for mat in bpy.data.materials:
        nodes = tuple(sorted(n.name for n in mat.node_tree.nodes)) if mat.node_tree else ()
        state[("material", mat.name)] = (nodes, tuple(mat.diffuse_color))
    for im in bpy.data.images:
        px = np.empty(im.size[0] * im.size[1] * 4, np.float32)
        im.pixels.foreach_get(px)
        state[("image", im.name)] = (tuple(im.size), float(px.sum()))
    return state


def _make_existing(bpy):
    """User data whose names collide with the ones mesh_to_blender wants to use."""
    from viewforge.bridge.images import array_to_image

    me = bpy.data.meshes.new("scan")
    me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    mat = bpy.data.materials.new("scan")
    mat.diffuse_color = (0.2, 0.3, 0.4, 1.0)
    me.materials.append(mat)
    ob = bpy.data.objects.new("scan", me)
    bpy.context.scene.collection.objects.link(ob)
    img = array_to_image(np.full((4, 4, 3), 100, np.uint8), "scan_texture")
    img.use_fake_user = True
    return ob


def test_textured_mesh_round_trips(blender):
    from viewforge.bridge.images import image_to_array
    from viewforge.bridge.mesh import mesh_to_blender

    _make_existing(blender)
    before = _existing_state(blender)
    mesh = _cube_mesh()
    obj = mesh_to_blender(mesh)
    me = obj.data

    # Existing datablocks untouched; the new ones got unique names.
    after = _existing_state(blender)
    assert {k: v for k, v in after.items() if k in before} == before
    assert obj.name != "scan" and me.name != "scan" and obj.name.startswith("scan")
    assert obj.name in blender.context.scene.collection.objects

    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), mesh.vertices)
    np.testing.assert_array_equal(_faces_of(me), mesh.faces)
    uv = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers["UVMap"].uv.foreach_get("vector", uv)
    np.testing.assert_array_equal(uv.reshape(-1, 2), mesh.uvs[mesh.faces.ravel()])
    cn = np.empty(len(me.loops) * 3, np.float32)
    me.corner_normals.foreach_get("vector", cn)
    np.testing.assert_allclose(cn.reshape(-1, 3), mesh.normals[mesh.faces.ravel()], atol=1e-3)
    col = np.empty(len(me.vertices) * 4, np.float32)
    me.color_attributes["Color"].data.foreach_get("color_srgb", col)
    np.testing.assert_allclose(col.reshape(-1, 4) * 255, mesh.colors, atol=1e-3)

    mat = me.materials[0]
    assert mat.name not in ("scan",) and mat.name.startswith("scan")
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    tex = bsdf.inputs["Base Color"].links[0].from_node
    assert tex.type == "TEX_IMAGE"
    assert tex.image.packed_file is not None and tex.image.name != "scan_texture"
    rgb, alpha = image_to_array(tex.image)
    np.testing.assert_allclose(rgb * 255, mesh.texture, atol=1e-3)
    assert alpha is None
    out = next(n for n in mat.node_tree.nodes if n.type == "OUTPUT_MATERIAL")
    assert out.inputs["Surface"].links[0].from_node == bsdf


def test_texture_survives_save_and_reload(blender, tmp_path):
    from viewforge.bridge.images import image_to_array
    from viewforge.bridge.mesh import mesh_to_blender

    mesh = _cube_mesh(name="saved")
    mesh_to_blender(mesh)
    path = tmp_path / "scene.blend"
    blender.ops.wm.save_as_mainfile(filepath=str(path))
    blender.ops.wm.read_factory_settings(use_empty=True)
    blender.ops.wm.open_mainfile(filepath=str(path))
    obj = blender.data.objects["saved"]
    tex = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    np.testing.assert_allclose(image_to_array(tex.image)[0] * 255, mesh.texture, atol=1e-3)


def test_vertex_colours_feed_base_color_without_texture(blender):
    from viewforge.bridge.mesh import mesh_to_blender

    coll = blender.data.collections.new("results")
    blender.context.scene.collection.children.link(coll)
    obj = mesh_to_blender(_cube_mesh(with_texture=False, name="coloured"), collection=coll)
    assert obj.users_collection == (coll,)
    bsdf = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    src = bsdf.inputs["Base Color"].links[0].from_node
    assert src.type == "VERTEX_COLOR" and src.layer_name == "Color"
    assert not any(n.type == "TEX_IMAGE" for n in obj.data.materials[0].node_tree.nodes)
    assert len(blender.data.images) == 0


def test_plain_mesh_and_read_back(blender):
    from viewforge.bridge.mesh import mesh_from_blender_object, mesh_to_blender
    from viewforge.engine.io.types import Mesh

    cube = _cube_mesh(with_texture=False, with_colors=False)
    plain = Mesh(cube.vertices, cube.faces, name="plain")
    obj = mesh_to_blender(plain)
    assert len(obj.data.uv_layers) == 0 and len(obj.data.color_attributes) == 0
    assert not obj.data.has_custom_normals
    bsdf = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert not bsdf.inputs["Base Color"].links
    obj.location = (1.0, 0.0, 0.0)
    blender.context.view_layer.update()
    back = mesh_from_blender_object(obj)
    np.testing.assert_allclose(back.vertices, plain.vertices + [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(back.faces, plain.faces)


def test_empty_mesh_is_an_error(blender):
    from viewforge.bridge.mesh import mesh_to_blender
    from viewforge.engine.errors import MeshError
    from viewforge.engine.io.types import Mesh

    with pytest.raises(MeshError, match="no faces"):
        mesh_to_blender(Mesh(np.zeros((3, 3)), np.zeros((0, 3)), name="empty"))
    assert len(blender.data.meshes) == 0 and len(blender.data.objects) == 0


def test_large_mesh_builds(blender):
    """~200k faces with UVs, normals and colours (timings: bench/import_mesh.py)."""
    from viewforge.bridge.mesh import mesh_to_blender
    from viewforge.engine.io.types import Mesh

    n = 317  # (n-1)^2 * 2 = 199,712 faces
    xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    v = np.stack([xs.ravel(), ys.ravel(), 0.1 * np.sin(6 * xs.ravel())], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    normals = np.tile([0.0, 0.0, 1.0], (len(v), 1))
    rng = np.random.default_rng(1)
    mesh = Mesh(v, f, normals=normals, uvs=v[:, :2], colors=(rng.random((len(v), 4)) * 255).astype(np.uint8),
                texture=np.zeros((64, 64, 3), np.uint8), name="big")
    obj = mesh_to_blender(mesh)
    me = obj.data
    assert len(me.polygons) == len(f) == 199_712
    assert len(me.vertices) == n * n and len(me.loops) == 3 * len(f)
    assert len(me.edges) == 3 * (n - 1) ** 2 + 2 * (n - 1)
    assert me.validate(verbose=False) is False  # nothing to fix
