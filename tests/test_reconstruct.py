"""`viewforge reconstruct` end to end on a small synthetic posed set, the view split, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from viewforge import cli
from viewforge.engine.errors import Cancelled, InputError
from viewforge.engine.io.posed import write_posed_set
from viewforge.engine.progress import CancelToken
from viewforge.engine.recon import ReconConfig, reconstruct, split_views
from viewforge.engine.splat.model import read_splat_ply

from helpers import ground_truth_splats, render_spheres, splat_posed, splat_rig, textured_ring


@pytest.fixture(scope="module")
def posed_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    posed = splat_posed(ground_truth_splats(), splat_rig(16))
    return write_posed_set(posed, root / "blob")


def test_split_is_deterministic_and_disjoint():
    train, held = split_views(100, 24, 8)
    assert len(train) == 24 and len(held) == 8
    assert not set(train) & set(held)
    assert (train, held) == split_views(100, 24, 8)
    assert held == [6, 18, 31, 43, 56, 68, 81, 93]
    assert split_views(10, None, 0) == (list(range(10)), [])
    with pytest.raises(InputError, match="needs 12 frames"):
        split_views(10, 10, 2)
    with pytest.raises(InputError, match="no training view"):
        split_views(4, None, 4)


def test_cli_reconstruct_writes_ply_and_metrics(posed_dir, tmp_path, capsys):
    out, mpath = tmp_path / "blob.ply", tmp_path / "m.json"
    code = cli.main([
        "reconstruct", str(posed_dir / "transforms.json"), "-o", str(out), "--views", "12", "--holdout", "4",
        "--resolution", "40", "--iterations", "300", "--metrics", str(mpath), "--device", "cpu",
    ])
    assert code == 0
    assert "held-out PSNR" in capsys.readouterr().out
    m = json.loads(mpath.read_text())
    for key in ("psnr", "ssim", "lpips", "chamfer", "fscore", "seconds", "peak_rss_mb", "num_gaussians", "num_faces"):
        assert key in m
    assert m["lpips"] is None and m["chamfer"] is None and m["num_faces"] is None
    assert m["psnr"] > 20.0 and 0.5 < m["ssim"] <= 1.0
    assert m["views"] == 12 and m["holdout"] == 4
    assert {"load", "fit", "eval", "write"} <= set(m["seconds"])
    splats = read_splat_ply(out)
    assert splats.num == m["num_gaussians"] > 100


def test_bad_output_and_cancel_leave_nothing(posed_dir, tmp_path, capsys):
    code = cli.main(["reconstruct", str(posed_dir), "-o", str(tmp_path / "x.obj"), "--iterations", "5"])
    assert code == 2 and "Fix:" in capsys.readouterr().err
    code = cli.main(["reconstruct", str(posed_dir), "-o", str(tmp_path / "missing" / "x.ply"), "--iterations", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err
    token = CancelToken()

    def progress(event):
        if event.stage == "fit" and event.step >= 3:
            token.cancel()

    with pytest.raises(Cancelled):
        reconstruct(posed_dir, tmp_path / "c.ply", ReconConfig(iterations=50, resolution=40, device="cpu"),
                    metrics_path=tmp_path / "c.json", progress=progress, cancel=token)
    assert not (tmp_path / "c.ply").exists() and not (tmp_path / "c.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_refine_poses_uses_full_size_photos_and_reports_reliability(tmp_path):
    """reconstruct --refine-poses: the feature stage works on the stored 256 px photos although
    the fit runs at 64 px, the cameras come back, and each view's reliability is in the metrics."""
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors

    cams = textured_ring(24)
    renders = [render_spheres(c) for c in cams]
    noisy = perturb_cameras(cams, 3.0, 0.03, seed=2)
    root = write_posed_set(PosedSet(noisy, [r[0] for r in renders], [r[1] for r in renders]), tmp_path / "ring")
    res = reconstruct(root, tmp_path / "ring.ply",
                      ReconConfig(resolution=64, iterations=3, device="cpu", pose_refine=True),
                      fit_overrides={"pose_method": "features", "init_points": 500, "densify": False, "sh_degree": 0},
                      metrics_path=tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    views = metrics["pose_views"]
    assert len(views) == 24 and sum(v["reliable"] for v in views) >= 20
    assert res.cameras[0].width == 64  # the fit's cameras, refined
    assert rotation_errors(res.cameras, cams)[1] < 0.5
    # each camera's change, and its refined pose for the add-on (Blender camera axes)
    changes = metrics["cameras"]
    assert [c["name"] for c in changes] == res.train_names
    assert np.median([c["rotation_deg"] for c in changes]) > 1.0  # the 3 degree errors were corrected
    for c, cam in zip(changes, res.cameras):
        np.testing.assert_allclose(np.array(c["camera_to_world_gl"]), cam.camera_to_world_gl, atol=1e-6)


def test_two_photos_with_pose_refinement_warn_in_the_metrics_and_summary(tmp_path):
    """Two photos, completion off, --refine-poses: the job succeeds and warns that two photos
    cannot pin their vergence (as completion does); a plain fit without refinement does not."""
    from viewforge.engine.complete import TWO_PHOTOS_WARNING
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.jobs import JobSpec, run_job

    cams = textured_ring(12)[:2]
    renders = [render_spheres(c) for c in cams]
    root = write_posed_set(PosedSet(cams, [r[0] for r in renders], [r[1] for r in renders]), tmp_path / "two")
    fast = {"resolution": 48, "iterations": 3, "device": "cpu", "complete": "off"}
    res = run_job(JobSpec("reconstruct", str(root), str(tmp_path / "two.ply"), {**fast, "pose_refine": True}))
    assert res.metrics["warnings"] == [TWO_PHOTOS_WARNING]
    assert res.summary.endswith(f"; {TWO_PHOTOS_WARNING}")
    res = run_job(JobSpec("reconstruct", str(root), str(tmp_path / "plain.ply"), fast))
    assert res.metrics["warnings"] == [] and "; " not in res.summary
