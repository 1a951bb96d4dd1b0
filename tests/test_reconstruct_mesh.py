"""`viewforge reconstruct -o OUT.glb|.blend` (the whole chain to a textured mesh) and `viewforge
eval`, end to end on a small synthetic posed set whose ground truth is known (a unit sphere)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from viewforge import cli
from viewforge.engine.errors import Cancelled
from viewforge.engine.io.mesh import read_mesh, write_mesh
from viewforge.engine.io.posed import write_posed_set
from viewforge.engine.progress import CancelToken
from viewforge.engine.recon import ReconConfig, reconstruct

from helpers import sphere_mesh, sphere_splats, splat_posed, splat_rig

SMALL = ["--resolution", "40", "--iterations", "300", "--faces", "3000", "--texture-size", "256", "--grid", "64",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def sphere_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sphere")
    posed = write_posed_set(splat_posed(sphere_splats(), splat_rig(16)), root / "posed")
    gt = write_mesh(sphere_mesh(4), root / "sphere.ply")
    return posed / "transforms.json", gt


def test_cli_reconstruct_glb_is_a_textured_mesh_close_to_the_truth(sphere_set, tmp_path, capsys):
    transforms, gt = sphere_set
    out, mpath, spath = tmp_path / "sphere.glb", tmp_path / "m.json", tmp_path / "s.ply"
    code = cli.main(["reconstruct", str(transforms), "-o", str(out), "--views", "12", "--holdout", "4",
                     "--gt-mesh", str(gt), "--splats", str(spath), "--metrics", str(mpath), *SMALL])
    assert code == 0
    printed = capsys.readouterr().out
    assert "faces" in printed and "chamfer" in printed and "splats" in printed
    m = json.loads(mpath.read_text())
    assert m["num_faces"] <= 3000 and m["num_gaussians"] > 100
    # 40 px photos of splat discs whose silhouette is ~4 % wider than the unit sphere
    assert m["fscore"] > 0.9 and m["chamfer"] < 0.1, m
    # the mesh may beat the small splat fit (its outline follows the photos' masks), not trail it by much
    assert m["psnr"] > 20 and m["psnr_splat"] > 20 and m["psnr"] > m["psnr_splat"] - 5, m
    assert {"fit", "mesh_fuse", "mesh_unwrap", "mesh_bake", "write"} <= set(m["seconds"])
    mesh = read_mesh(out)
    assert mesh.texture is not None and mesh.texture.shape[:2] == (256, 256) and mesh.uvs is not None
    assert np.abs(mesh.vertices).max() < 1.3  # in the cameras' frame: around the unit sphere
    assert spath.is_file()
    # other readers load it with its texture
    import pygltflib
    import trimesh

    gl = pygltflib.GLTF2().load(str(out))
    assert len(gl.images) == 1 and gl.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    tm = trimesh.load(out, force="mesh")
    assert len(tm.faces) == mesh.num_faces and tm.visual.material.baseColorTexture is not None
    # viewforge eval measures the written file the same way
    code = cli.main(["eval", str(out), "--gt", str(gt), "--metrics", str(tmp_path / "e.json")])
    assert code == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["chamfer"] == pytest.approx(m["chamfer"], rel=0.15) and e["fscore"] == pytest.approx(m["fscore"], abs=0.02)


def test_cancel_in_the_mesh_stage_leaves_nothing(sphere_set, tmp_path):
    transforms, _ = sphere_set
    token = CancelToken()

    def progress(event):
        if event.stage == "unwrap":
            token.cancel()

    cfg = ReconConfig(iterations=30, resolution=40, device="cpu", faces=3000, texture_size=256, mesh={"grid": 48})
    with pytest.raises(Cancelled):
        reconstruct(transforms, tmp_path / "c.glb", cfg, metrics_path=tmp_path / "c.json",
                    splats_path=tmp_path / "c.ply", progress=progress, cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_eval_bad_input_is_one_line(tmp_path, capsys):
    pred = write_mesh(sphere_mesh(2), tmp_path / "p.ply")
    assert cli.main(["eval", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "Fix:" in err and err.count("\n") == 1
    assert cli.main(["eval", str(tmp_path / "missing.glb"), "--gt", str(pred)]) == 2
    assert "Fix:" in capsys.readouterr().err
    assert cli.main(["eval", str(pred), "--gt", str(pred), "--metrics", str(tmp_path / "no" / "m.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_shifted_sphere(tmp_path, capsys):
    gt = sphere_mesh(4)
    from viewforge.engine.io.types import Mesh

    pred = write_mesh(Mesh(gt.vertices + [0.05, 0, 0], gt.faces), tmp_path / "p.glb")
    gpath = write_mesh(gt, tmp_path / "g.ply")
    assert cli.main(["eval", str(pred), "--gt", str(gpath)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.02 < out["chamfer"] < 0.05 and out["fscore"] > 0.99 and out["psnr"] is None


@pytest.mark.blender
def test_reconstruct_blend_and_gltf_import_in_blender(blender, sphere_set, tmp_path, capsys):
    transforms, _ = sphere_set
    out = tmp_path / "sphere.blend"
    code = cli.main(["reconstruct", str(transforms), "-o", str(out), "--views", "8", *SMALL, "--iterations", "100"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sphere.blend"]
    blender.ops.wm.open_mainfile(filepath=str(out))
    meshes = [o for o in blender.data.objects if o.type == "MESH"]
    assert len(meshes) == 1
    obj = meshes[0]
    mat = obj.data.materials[0]
    images = [n.image for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert images and images[0].size[0] == 256 and images[0].packed_file is not None
    corners = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    assert np.abs(corners).max() < 1.3
    # Blender's own glTF importer puts the .glb in the same place
    glb = tmp_path / "sphere.glb"
    assert cli.main(["reconstruct", str(transforms), "-o", str(glb), "--views", "8", *SMALL, "--iterations", "100"]) == 0
    blender.ops.wm.read_factory_settings(use_empty=True)
    blender.ops.import_scene.gltf(filepath=str(glb))
    imported = [o for o in blender.data.objects if o.type == "MESH"]
    assert len(imported) == 1
    pts = np.array([imported[0].matrix_world @ v.co for v in imported[0].data.vertices])
    ref = read_mesh(glb).vertices
    assert np.allclose(pts.min(0), ref.min(0), atol=1e-4) and np.allclose(pts.max(0), ref.max(0), atol=1e-4)
    assert any(n.type == "TEX_IMAGE" for n in imported[0].data.materials[0].node_tree.nodes)
