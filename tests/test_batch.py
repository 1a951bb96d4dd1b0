"""``viewforge batch``: one job per posed set or image, a summary table, a non-zero exit when a job
failed while the others still wrote their output. No bpy."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from viewforge import cli
from viewforge.engine.batch import (STATE_DIR, BatchConfig, batch_lock, find_inputs, format_table, plan_batch,
                                    remove_partial_outputs, run_batch, sha256_file)
from viewforge.engine.errors import InputError, OutputError
from viewforge.engine.splat.model import read_splat_ply

from helpers import sphere_posed_set


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory):
    """A posed set, a broken posed set (an image missing), an image and an unrelated file."""
    root = tmp_path_factory.mktemp("batch") / "in"
    root.mkdir()
    sphere_posed_set(root / "my ball", n=6, size=24)
    broken = sphere_posed_set(root / "broken", n=4, size=24).parent
    next((broken / "images").iterdir()).unlink()
    shutil.copy(next((root / "my ball" / "images").iterdir()), root / "cat.png")
    (root / "notes.txt").write_text("not an input")
    return root


def test_find_inputs(batch_input, tmp_path):
    items = find_inputs(batch_input)
    assert [(i.name, i.kind) for i in items] == [("broken", "reconstruct"), ("cat", "generate"), ("my ball", "reconstruct")]
    assert items[2].path == batch_input / "my ball" / "transforms.json"
    # a folder that is itself a posed set is one job
    assert [(i.name, i.kind) for i in find_inputs(batch_input / "my ball")] == [("my ball", "reconstruct")]
    # a sub-folder of >= 2 photos without transforms.json: reconstruct, cameras estimated by SfM
    photos = tmp_path / "in" / "shoot"
    photos.mkdir(parents=True)
    for i, img in enumerate(sorted((batch_input / "my ball" / "images").iterdir())[:3]):
        shutil.copy(img, photos / f"IMG_{i}.png")
    (tmp_path / "in" / "lonely").mkdir()
    shutil.copy(img, tmp_path / "in" / "lonely" / "one.png")  # one photo: not a job
    assert [(i.name, i.kind, i.path) for i in find_inputs(tmp_path / "in")] == [("shoot", "reconstruct", photos)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no posed sets and no images"):
        find_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        find_inputs(tmp_path / "nope")


def test_every_image_suffix_is_read_and_batched(tmp_path):
    import cv2
    import numpy as np

    from viewforge.engine import batch, recon
    from viewforge.engine.images import load_image
    from viewforge.engine.io.formats import IMAGE_SUFFIXES

    assert batch.IMAGE_SUFFIXES is recon.PHOTO_SUFFIXES is IMAGE_SUFFIXES
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:6, 2:6] = (40, 120, 200)
    for suffix in IMAGE_SUFFIXES:
        ok, buf = cv2.imencode(suffix, img)
        assert ok, suffix
        (tmp_path / f"im{suffix.replace('.', '_')}{suffix.upper()}").write_bytes(buf.tobytes())
    for f in sorted(tmp_path.iterdir()):
        rgb, _ = load_image(f)
        assert rgb.shape == (8, 8, 3) and abs(float(rgb[3, 3, 2]) - 40 / 255) < 0.05, f.name
    items = find_inputs(tmp_path)
    assert len(items) == len(IMAGE_SUFFIXES) and {i.kind for i in items} == {"generate"}


def test_batch_runs_every_job_and_reports_failures(batch_input, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["batch", str(batch_input), "-o", str(out), "--quality", "draft", "--format", "ply",
                     "--resolution", "24", "--iterations", "20", "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "2 of 3 jobs failed" in captured.err
    # progress lines first (stdout is not a terminal), then the table
    lines = [ln for ln in captured.out.strip().splitlines() if not ln.startswith("viewforge progress: ")]
    assert any(ln.startswith("viewforge progress: [1/3] ") for ln in captured.out.splitlines())
    assert lines[0].split()[:4] == ["job", "kind", "status", "seconds"]
    rows = {ln.split("  ")[0].strip(): ln for ln in lines[1:-1]}
    assert set(rows) == {"my ball", "broken", "cat"}
    assert " ok " in rows["my ball"] and rows["my ball"].endswith(str(out / "my_ball.ply"))
    assert "failed" in rows["broken"] and "image not found" in rows["broken"] and "Fix:" in rows["broken"]
    # the image is a generate job with the default model, whose weights are not in the (empty) cache
    assert "failed" in rows["cat"] and "Zero123++ v1.2 weights" in rows["cat"] and "not in the local model cache" in rows["cat"]
    assert lines[-1] == "1 of 3 jobs succeeded, 2 failed"
    # nothing half-written for the failures; the batch's state folder holds the finished job's record
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR, "my_ball.ply"]
    assert sorted(p.name for p in (out / STATE_DIR).iterdir()) == ["my_ball.ply.json"]
    assert read_splat_ply(out / "my_ball.ply").num > 10
    digest = sha256_file(out / "my_ball.ply")
    assert json.loads((out / STATE_DIR / "my_ball.ply.json").read_text())["sha256"] == digest

    # resume: the finished job is skipped (its record matches the file), its output untouched
    args = ["batch", str(batch_input), "-o", str(out), "--format", "ply", "--resolution", "24", "--iterations", "20",
            "--device", "cpu", "--quality", "draft", "--only", "my ball"]  # fmt: skip
    assert cli.main(args) == 0
    lines = [ln for ln in capsys.readouterr().out.strip().splitlines() if not ln.startswith("viewforge progress: ")]
    assert " skipped " in lines[1] and lines[-1] == "1 of 1 jobs succeeded (1 complete from an earlier run)"
    assert sha256_file(out / "my_ball.ply") == digest
    # an output that no longer matches its record is made again; so is one with other options
    plan = plan_batch(batch_input, out, BatchConfig(quality="draft", device="cpu", output_format=".ply", resolution=24,
                                                   iterations=20), only=["my ball"])  # fmt: skip
    assert [j.skip for j in plan.jobs] == [True]
    assert plan_batch(batch_input, out, BatchConfig(quality="draft", device="cpu", output_format=".ply", resolution=24,
                                                    iterations=21), only=["my ball"]).jobs[0].skip is False  # fmt: skip
    with open(out / "my_ball.ply", "ab") as f:
        f.write(b"x")
    assert plan_batch(batch_input, out, BatchConfig(quality="draft", device="cpu", output_format=".ply", resolution=24,
                                                    iterations=20), only=["my ball"]).jobs[0].skip is False  # fmt: skip


def test_job_options_per_kind():
    from viewforge.engine.batch import job_options

    cfg = BatchConfig(quality="draft", device="cpu", seed=2, resolution=64, iterations=100, views=5, model="/m",
                      generate={"steps": 2, "faces": 900})  # fmt: skip
    assert job_options(cfg, "reconstruct") == {"quality": "draft", "device": "cpu", "seed": 2, "resolution": 64,
                                               "iterations": 100, "views": 5}  # fmt: skip
    assert job_options(cfg, "generate") == {"quality": "draft", "device": "cpu", "seed": 2, "fit_iterations": 100,
                                            "warm_iterations": 30, "model": "/m", "allow_download": False, "steps": 2,
                                            "faces": 900}  # fmt: skip
    assert job_options(BatchConfig(), "generate") == {"quality": "standard", "device": "auto", "seed": 0, "allow_download": False}


def test_batch_generates_from_images(tmp_path):
    """Images become generate jobs (each in a worker process) with the model of the batch: a tiny
    Zero123++ saved to a temp folder; the mesh stands on z = 0."""
    from viewforge.engine.images import save_png
    from viewforge.engine.io.mesh import read_mesh
    from tiny_models import save_tiny

    import numpy as np

    model = save_tiny(tmp_path / "tiny", seed=0)
    src = tmp_path / "in"
    src.mkdir()
    img = np.ones((100, 100, 3), np.float32)
    img[25:75, 30:70] = [0.9, 0.6, 0.1]
    save_png(src / "Block one.png", img)
    cfg = BatchConfig(quality="draft", device="cpu", iterations=60, model=str(model),
                      generate={"faces": 1500, "texture_size": 128, "size": 1.5,
                                "mesh": {"grid": 48, "fuse_views": 12, "fuse_size": 64, "bake_render_views": 4}})  # fmt: skip
    events = []
    rows = run_batch(src, tmp_path / "out", cfg, progress=events.append)
    assert [(r.name, r.kind, r.status) for r in rows] == [("Block one", "generate", "ok")], rows[0].detail
    out = tmp_path / "out" / "Block_one.glb"
    assert rows[0].output == str(out) and sorted(p.name for p in out.parent.iterdir()) == [STATE_DIR, "Block_one.glb"]
    assert rows[0].metrics["generator_evals"] == 8 and "8 generator evaluations" in rows[0].detail
    lo, hi = read_mesh(out).bounds()
    assert abs(float((hi - lo).max()) - 1.5) < 1e-3 and abs(float(lo[2])) < 1e-4
    seen = {e.stage for e in events if e.stage.startswith("[1/1] Block one: ")}
    assert len(seen - {"[1/1] Block one: start"}) >= 3, seen  # the worker's stages are relayed
    with pytest.raises(InputError, match="unknown generate option"):
        run_batch(src, tmp_path / "out2", BatchConfig(generate={"views": 3}))


def test_batch_bad_arguments(batch_input, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        run_batch(batch_input, blocker, BatchConfig())
    with pytest.raises(InputError, match="unknown quality"):
        run_batch(batch_input, tmp_path / "o", BatchConfig(quality="ultra"))
    assert cli.main(["batch", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist. Fix:" in capsys.readouterr().err
    assert cli.main(["batch", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "INPUT_DIR is missing" in err and len(err.strip().splitlines()) == 1
    # `--ray IN`: IN is the input folder (--ray's ADDRESS is optional), the same jobs as `IN --ray`
    assert cli.main(["batch", "--ray", str(batch_input), "-o", str(tmp_path / "o"), "--list"]) == 0
    swapped = capsys.readouterr().out
    assert cli.main(["batch", str(batch_input), "-o", str(tmp_path / "o"), "--list", "--ray"]) == 0
    assert swapped == capsys.readouterr().out and "my ball" in swapped


def test_format_table_aligns_columns():
    from viewforge.engine.batch import BatchRow

    text = format_table([BatchRow("a", "reconstruct", "ok", 1.25, "/o/a.glb"), BatchRow("long name", "generate", "failed", 0.0, None, "why")])
    lines = text.splitlines()
    assert lines[1].index("reconstruct") == lines[2].index("generate") == lines[0].index("kind")
    assert lines[1].endswith("/o/a.glb") and lines[2].endswith("why")
    assert lines[-1] == "1 of 2 jobs succeeded, 1 failed"


def test_only_and_shard_pick_the_names_of_a_full_run(batch_input, tmp_path):
    full = plan_batch(batch_input, tmp_path / "o")
    assert [(j.item.name, os.path.basename(j.spec.output)) for j in full.jobs] == [
        ("broken", "broken.glb"), ("cat", "cat.glb"), ("my ball", "my_ball.glb")]
    shards = [[j.item.name for j in plan_batch(batch_input, tmp_path / "o", shard=f"{i}/2").jobs] for i in (1, 2)]
    assert shards == [["broken", "my ball"], ["cat"]]
    # shard i of N = the number of inputs is the i-th input alone (the OpenJD template's tasks)
    assert [[j.item.name for j in plan_batch(batch_input, tmp_path / "o", shard=(i, 3)).jobs] for i in (1, 2, 3)] == [
        ["broken"], ["cat"], ["my ball"]]
    assert [j.spec.output for j in plan_batch(batch_input, tmp_path / "o", only=["my ball"]).jobs] == [full.jobs[2].spec.output]
    with pytest.raises(InputError, match="no input named 'dog'.*Fix: use one of broken, cat, my ball"):
        plan_batch(batch_input, tmp_path / "o", only=["dog"])
    for bad in ("3/2", "0/2", "x"):
        with pytest.raises(InputError, match="shard"):
            plan_batch(batch_input, tmp_path / "o", shard=bad)


def test_second_batch_on_the_same_folder_refuses(batch_input, tmp_path, capsys):
    out = tmp_path / "o"
    plan = plan_batch(batch_input, out, BatchConfig(output_format=".ply"))
    with batch_lock(plan):
        assert cli.main(["batch", str(batch_input), "-o", str(out), "--quality", "draft", "--format", "ply", "--iterations", "1",
                         "--resolution", "8", "--device", "cpu"]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"another batch (pid {os.getpid()}" in err[0] and "is writing to" in err[0]
    # shards of one batch (disjoint outputs) run side by side; a batch overlapping one refuses
    with batch_lock(plan_batch(batch_input, out, shard="1/2")):
        with batch_lock(plan_batch(batch_input, out, shard="2/2")):
            with pytest.raises(OutputError, match="another batch"):
                with batch_lock(plan_batch(batch_input, out, only=["my ball"])):
                    pass
    assert not list((out / STATE_DIR).glob("lock-*"))
    # the lock of a process that has ended is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (out / STATE_DIR / f"lock-{host}-{dead.pid}.json").write_text(json.dumps({"pid": dead.pid, "host": host, "outputs": ["cat.ply"]}))
    with batch_lock(plan) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert [p.name for p in (out / STATE_DIR).glob("lock-*")] == [lock.name]


def test_partial_outputs_of_killed_jobs_are_removed(batch_input, tmp_path):
    plan = plan_batch(batch_input, tmp_path / "o")
    left = [plan.out / ".my_ball.glb.abc123.part.glb", plan.out / STATE_DIR / ".my_ball.glb.json.x1.part.json"]
    left[1].parent.mkdir(exist_ok=True)
    for p in left:
        p.write_text("half")
    (plan.out / "mine.txt").write_text("the user's")
    assert sorted(remove_partial_outputs(plan)) == sorted(left)
    assert sorted(p.name for p in plan.out.iterdir()) == [STATE_DIR, "mine.txt"]
