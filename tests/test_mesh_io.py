"""engine.io.mesh: GLB/glTF/OBJ/PLY reading, GLB/PLY writing, axis and UV conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from viewforge.engine.errors import MeshError, OutputError
from viewforge.engine.io import Mesh, read_mesh, write_glb, write_mesh, write_ply
from viewforge.engine.io.mesh import ENGINE_TO_GLTF, GLTF_TO_ENGINE, vertex_normals

RNG = np.random.default_rng(11)


def box_mesh(textured: bool = True, colors: bool = True, rgba: bool = False) -> Mesh:
    """An off-centre, non-cubic box with split (per-face) vertices, random UVs, texture, colours."""
    import trimesh

    box = trimesh.creation.box((1.0, 2.0, 3.0))
    v = box.vertices[box.faces].reshape(-1, 3) + (0.5, 0.2, 3.0)
    f = np.arange(len(v)).reshape(-1, 3)
    return Mesh(
        vertices=v,
        faces=f,
        normals=np.repeat(box.face_normals, 3, axis=0),
        uvs=RNG.random((len(v), 2)) if textured else None,
        colors=RNG.integers(0, 256, (len(v), 4), dtype=np.uint8) if colors else None,
        texture=RNG.integers(0, 256, (8, 16, 4 if rgba else 3), dtype=np.uint8) if textured else None,
        name="box",
    )


def gltf_accessor(gltf, index: int) -> np.ndarray:
    """Read an accessor of a pygltflib GLB (tightly packed float32/uint8/uint32 data)."""
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    blob = gltf.binary_blob()
    dtype = {5126: np.float32, 5121: np.uint8, 5125: np.uint32}[acc.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
    start = view.byteOffset + (acc.byteOffset or 0)
    return np.frombuffer(blob, dtype=dtype, count=acc.count * width, offset=start).reshape(acc.count, width)


def test_axis_conversion_matrices():
    assert np.allclose(GLTF_TO_ENGINE @ [1.0, 2.0, 3.0], [1.0, -3.0, 2.0])  # Blender's importer
    assert np.allclose(ENGINE_TO_GLTF @ GLTF_TO_ENGINE, np.eye(3))
    assert np.linalg.det(GLTF_TO_ENGINE) == pytest.approx(1.0)  # a rotation: winding unchanged


@pytest.mark.parametrize("rgba", [False, True])
def test_glb_round_trip(tmp_path, rgba):
    mesh = box_mesh(rgba=rgba)
    out = write_glb(mesh, tmp_path / "box.glb")
    assert out == (tmp_path / "box.glb").absolute() and [p.name for p in tmp_path.iterdir()] == ["box.glb"]
    back = read_mesh(out)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_allclose(back.uvs, mesh.uvs, atol=1e-6)
    np.testing.assert_allclose(back.normals, mesh.normals, atol=1e-6)
    np.testing.assert_array_equal(back.colors, mesh.colors)
    np.testing.assert_array_equal(back.texture, mesh.texture)
    assert back.name == "box"


def test_glb_contents_with_pygltflib(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    mesh = box_mesh()
    write_glb(mesh, tmp_path / "box.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "box.glb"))
    prim = gltf.meshes[0].primitives[0]
    # Y up in the file: (x, y, z)_engine -> (x, z, -y)_gltf; glTF v = 1 - engine v.
    pos = gltf_accessor(gltf, prim.attributes.POSITION)
    np.testing.assert_array_equal(pos, np.stack([mesh.vertices[:, 0], mesh.vertices[:, 2], -mesh.vertices[:, 1]], 1))
    acc = gltf.accessors[prim.attributes.POSITION]
    np.testing.assert_allclose(acc.min, pos.min(0)) and np.testing.assert_allclose(acc.max, pos.max(0))
    uv = gltf_accessor(gltf, prim.attributes.TEXCOORD_0)
    np.testing.assert_allclose(uv[:, 1], 1.0 - mesh.uvs[:, 1], atol=1e-6)
    normals = gltf_accessor(gltf, prim.attributes.NORMAL)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(gltf_accessor(gltf, prim.indices).reshape(-1, 3), mesh.faces)
    assert gltf.accessors[prim.attributes.COLOR_0].normalized
    pbr = gltf.materials[prim.material].pbrMetallicRoughness
    assert pbr.metallicFactor == 0.0 and pbr.roughnessFactor == pytest.approx(0.8)
    texture = gltf.textures[pbr.baseColorTexture.index]
    image = gltf.images[texture.source]
    assert image.mimeType == "image/png" and image.bufferView is not None
    view = gltf.bufferViews[image.bufferView]
    assert gltf.binary_blob()[view.byteOffset : view.byteOffset + 8] == b"\x89PNG\r\n\x1a\n"


def test_glb_without_texture_or_normals(tmp_path):
    mesh = Mesh(
        vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], faces=[[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]
    )
    back = read_mesh(write_mesh(mesh, tmp_path / "t.glb"))
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    assert back.uvs is None and back.texture is None and back.colors is None
    np.testing.assert_allclose(back.normals, vertex_normals(mesh.vertices, mesh.faces), atol=1e-6)
    assert back.normals[0] @ [-1, -1, -1] > 0.99  # points away from the solid at the corner


def test_gltf_scene_is_flattened_with_node_transforms_and_axis_conversion(tmp_path):
    """Two nodes (one rotated and translated, one instancing the same mesh) in a trimesh-written GLB."""
    import trimesh

    tri = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], faces=[[0, 1, 2]], process=False)
    scene = trimesh.Scene()
    rot = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 0, 1])  # +90 deg about glTF z
    rot[:3, 3] = [10, 20, 30]
    scene.add_geometry(tri, geom_name="tri", node_name="a", transform=rot)
    scene.add_geometry(
        tri, geom_name="tri", node_name="b", transform=trimesh.transformations.translation_matrix([0, 0, 5])
    )
    (tmp_path / "s.glb").write_bytes(scene.export(file_type="glb"))
    mesh = read_mesh(tmp_path / "s.glb")
    assert mesh.num_faces == 2 and mesh.num_vertices == 6
    gltf_a = np.array([[10, 20, 30], [10, 21, 30], [9, 20, 30]], float)  # rot then translate
    gltf_b = np.array([[0, 0, 5], [1, 0, 5], [0, 1, 5]], float)
    expected = np.concatenate([gltf_a, gltf_b]) @ GLTF_TO_ENGINE.T
    got = mesh.vertices[mesh.faces.reshape(-1)]
    # node order is the file's; compare as sets of triangles
    key = lambda a: sorted(map(tuple, np.round(a.reshape(-1, 3, 3), 6).reshape(-1, 9)))  # noqa: E731
    assert key(got) == key(expected)
    # Face normals: glTF +z -> engine (0, -1, 0) for both nodes (the rotation is about z).
    np.testing.assert_allclose(mesh.normals, np.tile([0.0, -1.0, 0.0], (6, 1)), atol=1e-6)


def test_obj_has_no_axis_conversion(tmp_path):
    (tmp_path / "t.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 2 3\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n")
    mesh = read_mesh(tmp_path / "t.obj")
    np.testing.assert_allclose(np.sort(mesh.vertices, axis=0), np.sort([[0, 0, 0], [1, 0, 0], [0, 2, 3]], axis=0))
    by_pos = {tuple(v): tuple(uv) for v, uv in zip(mesh.vertices.tolist(), mesh.uvs.tolist())}
    assert by_pos[(0.0, 2.0, 3.0)] == (0.0, 1.0)  # OBJ v is bottom-up like the engine's: unchanged


@pytest.mark.parametrize("textured,colors", [(True, True), (False, True), (True, False), (False, False)])
def test_ply_round_trip(tmp_path, textured, colors):
    mesh = box_mesh(textured=textured, colors=colors)
    back = read_mesh(write_ply(mesh, tmp_path / "box.ply"))
    assert (tmp_path / "box.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_allclose(back.normals, mesh.normals, atol=1e-6)
    if colors:
        np.testing.assert_array_equal(back.colors, mesh.colors)
    else:
        assert back.colors is None
    if textured:
        np.testing.assert_array_equal(back.uvs, mesh.uvs)
    assert back.texture is None  # PLY holds no image


def test_ascii_ply_with_quads_is_triangulated(tmp_path):
    (tmp_path / "q.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"
    )
    mesh = read_mesh(tmp_path / "q.ply")
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(mesh.normals, np.tile([0, 0, 1.0], (4, 1)), atol=1e-6)


@pytest.mark.parametrize(
    "name,content",
    [
        ("bad.glb", b"glTF\x02\x00\x00\x00garbage"),
        ("bad.gltf", b"{ not json"),
        ("bad.ply", b"ply\nformat nonsense\n"),
        ("bad.obj", b"\x00\xff\x00 binary junk"),
    ],
)
def test_mesh_file_that_does_not_parse(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(MeshError, match=name) as e:
        read_mesh(tmp_path / name)
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_missing_empty_or_unsupported_mesh_files(tmp_path):
    with pytest.raises(MeshError, match="nope.glb.*not found"):
        read_mesh(tmp_path / "nope.glb")
    (tmp_path / "m.stl").write_text("solid x\nendsolid x\n")
    with pytest.raises(MeshError, match="unsupported format"):
        read_mesh(tmp_path / "m.stl")
    (tmp_path / "points.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n1 1 1\n"
    )
    with pytest.raises(MeshError, match="points.ply has no triangles"):
        read_mesh(tmp_path / "points.ply")
    with pytest.raises(MeshError, match="no faces"):
        write_glb(Mesh(np.zeros((3, 3)), np.zeros((0, 3))), tmp_path / "empty.glb")
    assert not (tmp_path / "empty.glb").exists()


@pytest.mark.parametrize("suffix", [".glb", ".ply"])
def test_output_path_in_missing_folder(tmp_path, suffix):
    with pytest.raises(OutputError, match="does not exist") as e:
        write_mesh(box_mesh(), tmp_path / "missing" / f"out{suffix}")
    assert "Fix:" in str(e.value) and not (tmp_path / "missing").exists()


def test_write_mesh_dispatch_and_unsupported(tmp_path):
    with pytest.raises(OutputError, match="Blender bridge"):
        write_mesh(box_mesh(), tmp_path / "out.blend")
    with pytest.raises(OutputError, match="unsupported extension"):
        write_mesh(box_mesh(), tmp_path / "out.stl")
    with pytest.raises(OutputError, match="unsupported extension"):
        write_glb(box_mesh(), tmp_path / "out.gltf")
    assert list(tmp_path.iterdir()) == []
    assert read_mesh(write_mesh(box_mesh(), tmp_path / "ok.ply")).num_faces == 12


@pytest.mark.blender
def test_blender_import_puts_the_glb_where_the_mesh_is(blender, tmp_path):
    mesh = box_mesh(rgba=False)
    path = write_glb(mesh, tmp_path / "box.glb")
    assert blender.ops.import_scene.gltf(filepath=str(path)) == {"FINISHED"}
    objects = [o for o in blender.context.scene.objects if o.type == "MESH"]
    assert len(objects) == 1
    depsgraph = blender.context.evaluated_depsgraph_get()
    obj = objects[0].evaluated_get(depsgraph)
    data = obj.data
    co = np.empty(len(data.vertices) * 3)
    data.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world)
    world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(np.stack([world.min(0), world.max(0)]), mesh.bounds(), atol=1e-5)
    assert len(data.polygons) == mesh.num_faces
    material = objects[0].active_material
    assert material is not None and material.node_tree is not None
    images = [n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert images and images[0] is not None and tuple(images[0].size) == (16, 8)
    principled = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert principled.inputs["Metallic"].default_value == pytest.approx(0.0)
    assert principled.inputs["Roughness"].default_value == pytest.approx(0.8)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.shared_data
@pytest.mark.blender
@pytest.mark.parametrize(
    "rel", ["Duck/glTF-Binary/Duck.glb", "Avocado/glTF/Avocado.gltf", "DamagedHelmet/glTF-Binary/DamagedHelmet.glb"]
)
def test_real_gltf_reads_where_blender_imports_it(blender, rel):
    """Node transforms + Y-up conversion agree with Blender's own glTF importer on real assets."""
    path = SHARED_DATA / "meshes" / rel
    mesh = read_mesh(path)
    assert mesh.texture is not None and mesh.uvs is not None
    blender.ops.import_scene.gltf(filepath=str(path))
    depsgraph = blender.context.evaluated_depsgraph_get()
    points = []
    for obj in blender.context.scene.objects:
        if obj.type == "MESH":
            ev = obj.evaluated_get(depsgraph)
            co = np.empty(len(ev.data.vertices) * 3)
            ev.data.vertices.foreach_get("co", co)
            m = np.array(ev.matrix_world)
            points.append(co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3])
    points = np.concatenate(points)
    extent = np.ptp(points, axis=0).max()
    np.testing.assert_allclose(mesh.bounds(), np.stack([points.min(0), points.max(0)]), atol=1e-5 * extent)
