"""`viewforge reconstruct` with few photos: generative completion (engine/recon.py -> engine/complete.py)
through the command line, with the tiny Zero123++ checkpoint, and the fallbacks when the generator's
weights are missing."""

from __future__ import annotations

import json

import pytest

from viewforge.cli import main

FAST = ["--resolution", "64", "--iterations", "240", "--faces", "1500", "--texture-size", "128", "--grid", "48",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A posed set on disk: the demo object photographed from one side (azimuths -30, 0, 30) plus
    one held-out view behind it, 96 px."""
    from viewforge.engine.demo import DemoConfig, demo_mesh
    from viewforge.engine.io.posed import write_posed_set
    from viewforge.engine.io.types import Mesh, PosedSet
    from viewforge.engine.mesh.evaluate import normalisation
    from viewforge.engine.mvgen.base import orbit_camera
    from viewforge.engine.mvgen.oracle import render_rgba

    m = demo_mesh(DemoConfig(segments=32, rings=20, texture_size=256))
    s, off = normalisation(m)
    m = Mesh(m.vertices * s + off, m.faces, m.normals, m.uvs, m.colors, m.texture)
    cams = [orbit_camera(a, 15, 4.0, 35, 96, name=f"p{i}") for i, a in enumerate((-30, 0, 30, 180))]
    rend = [render_rgba(m, c) for c in cams]
    root = tmp_path_factory.mktemp("few_photos")
    posed = PosedSet(cams, [r[..., :3] for r in rend], [r[..., 3] for r in rend], [c.name for c in cams])
    return write_posed_set(posed, root)


def test_few_photos_are_completed_by_the_generator(photos, tiny_model, tmp_path, capsys):
    out, metrics = tmp_path / "few.glb", tmp_path / "m.json"
    code = main(["reconstruct", str(photos), "-o", str(out), "--views", "2", "--holdout", "1", "--complete", "on",
                 "--model", str(tiny_model), "--metrics", str(metrics), *FAST])
    assert code == 0, capsys.readouterr().err
    m = json.loads(metrics.read_text())
    c = m["completion"]
    assert c["generator"] == "zero123pp-v1.2" and c["generator_evals"] == 8 and c["rvc_enabled"] is True
    assert m["views"] == 2 and m["holdout"] == 1 and m["num_faces"] > 100
    assert m["psnr"] is not None and m["psnr_splat"] is not None
    # the photos are hard constraints of every fit: the model reproduces them
    assert c["psnr_inputs"] > 18
    assert "completed by zero123pp-v1.2 in 8 evaluations" in capsys.readouterr().out
    import trimesh

    geom = next(iter(trimesh.load(out).geometry.values()))
    assert geom.visual.material.baseColorTexture.size == (128, 128)


def test_missing_weights_auto_falls_back_to_the_photos(photos, tmp_path, monkeypatch, caplog):
    """complete=auto with the generator's weights absent (offline, empty cache): a warning that says
    how to get them, and the photos alone are reconstructed."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, metrics = tmp_path / "few.ply", tmp_path / "m.json"
    with caplog.at_level("WARNING", logger="viewforge.engine.recon"):
        code = main(["reconstruct", str(photos), "-o", str(out), "--views", "3", "--holdout", "1",
                     "--metrics", str(metrics), *FAST])
    assert code == 0
    m = json.loads(metrics.read_text())
    assert "completion" not in m and m["views"] == 3 and m["num_gaussians"] > 0
    assert "Zero123++" in m["completion_skipped"] and "--allow-download" in m["completion_skipped"]
    assert any("stay empty" in r.getMessage() and "Zero123++" in r.getMessage() for r in caplog.records)


def test_missing_weights_with_completion_on_is_an_error(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "few.glb"
    code = main(["reconstruct", str(photos), "-o", str(out), "--views", "3", "--complete", "on", *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "Zero123++" in err and "--allow-download" in err


def test_one_photo_without_completion_is_a_clear_error(photos, tmp_path, capsys):
    out = tmp_path / "one.glb"
    code = main(["reconstruct", str(photos), "-o", str(out), "--views", "1", "--complete", "off", *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert "one photo" in err and len(err.splitlines()) == 1


def test_completion_options_reach_the_job():
    from viewforge.engine.jobs import recon_config

    cfg = recon_config("draft", complete="off", model="/models/z", allow_download=True, rvc=False)
    assert (cfg.complete, cfg.model, cfg.allow_download, cfg.rvc) == ("off", "/models/z", True, False)
    from viewforge.engine.errors import InputError
    from viewforge.engine.recon import ReconConfig, reconstruct

    with pytest.raises(InputError, match="completion mode 'sometimes'"):
        reconstruct("nowhere.json", "x.ply", ReconConfig(complete="sometimes"))
