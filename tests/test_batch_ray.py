"""``viewforge batch --ray``: the batch's jobs as Ray tasks (engine/batch_ray.py) on one machine:
a local cluster the CLI starts, and a simulated two-node cluster (ray.cluster_utils.Cluster) for
a batch of 4 posed sets and 2 images (tiny generator) with one job whose process is killed once
(retried), one whose process always dies (named after its retries) and one bad image (named);
the rest finish, nothing half-written is left, a resumed batch completes the lost job and leaves
the finished outputs byte for byte. No bpy."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from viewforge import cli  # noqa: E402
from viewforge.engine.batch import STATE_DIR, BatchConfig, batch_lock, plan_batch, record_matches, sha256_file  # noqa: E402
from viewforge.engine.batch_ray import RayConfig, probe_output, run_plan_ray  # noqa: E402
from viewforge.engine.errors import Cancelled, DependencyError, OutputError  # noqa: E402

from helpers import sphere_posed_set  # noqa: E402

HERE = Path(__file__).resolve().parent
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Ray's workers (and the job processes they start) import this module's job functions by name.
if str(HERE) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
# where the crashing jobs count their runs (one folder for the test and every process it starts)
MARKERS = Path(os.environ.setdefault("VF_TEST_MARKERS", tempfile.mkdtemp(prefix="vf-ray-markers-")))

TINY = ["--quality", "draft", "--format", "ply", "--resolution", "16", "--iterations", "15", "--device", "cpu"]


def tiny_config(model=None) -> BatchConfig:
    return BatchConfig(quality="draft", device="cpu", output_format=".ply", resolution=16, iterations=15,
                       model=None if model is None else str(model), generate={"steps": 2})


def crash_once_job(spec, progress, cancel):
    """Killed (SIGKILL, as the out-of-memory killer does) on its first run, a reconstruct job after."""
    from viewforge.engine.jobs import reconstruct_job

    marker = Path(os.environ["VF_TEST_MARKERS"]) / f"{spec.name}.crashed"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return reconstruct_job(replace(spec, kind="reconstruct"), progress, cancel)


def always_crash_job(spec, progress, cancel):
    with open(Path(os.environ["VF_TEST_MARKERS"]) / f"{spec.name}.runs", "a") as f:
        f.write("x")
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_job(spec, progress, cancel):
    from viewforge.engine.progress import ProgressEvent

    for i in range(600):
        progress(ProgressEvent("sleep", i / 600, f"tick {i}"))
        cancel.check()
        time.sleep(0.1)


def _posed(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        sphere_posed_set(root / name, n=5, size=16)  # 5 photos: no generative completion
    return root


def _table(out: str) -> list[str]:
    return [ln for ln in out.strip().splitlines() if not ln.startswith("viewforge progress:")]


def _rows(lines: list[str]) -> dict[str, str]:
    return {ln.split("  ")[0].strip(): ln for ln in lines[1:-1]}


def test_without_ray_one_line(monkeypatch, tmp_path, capsys):
    _posed(tmp_path / "in", "a")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert cli.main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs Ray, which is not installed" in err[0] and "pip install 'viewforge[ray]'" in err[0]
    assert not (tmp_path / "out").exists()


def test_address_that_does_not_answer(tmp_path, capsys):
    _posed(tmp_path / "in", "a")
    t = time.monotonic()
    assert cli.main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ray", "127.0.0.1:9"]) == 2
    assert time.monotonic() - t < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the Ray cluster at 127.0.0.1:9 does not answer" in err[0] and "Fix:" in err[0]
    assert not ray.is_initialized()
    assert not list((tmp_path / "out" / STATE_DIR).glob("lock-*"))  # the lock is released


def test_nothing_usable_refuses_before_ray_starts(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    assert cli.main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no posed sets and no images" in err[0]
    assert not ray.is_initialized()


def test_cli_local_cluster_and_resume(tmp_path, capsys):
    """--ray alone starts a local cluster (2 CPUs), runs the jobs, prints the local batch's table
    and shuts the cluster down; the same command again skips both jobs without starting Ray."""
    src = _posed(tmp_path / "in", "one", "two")
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), *TINY, "--ray", "--ray-local-cpus", "2"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    lines = _table(captured.out)
    assert lines[0].split()[:4] == ["job", "kind", "status", "seconds"]
    rows = _rows(lines)
    assert set(rows) == {"one", "two"} and all(" ok " in r for r in rows.values())
    assert rows["one"].endswith(str(out / "one.ply"))
    assert lines[-1] == "2 of 2 jobs succeeded"
    assert any(ln.startswith("viewforge progress: batch ") for ln in captured.out.splitlines())
    assert not ray.is_initialized()
    hashes = {p.name: sha256_file(p) for p in out.glob("*.ply")}
    assert sorted(hashes) == ["one.ply", "two.ply"]
    for name, h in hashes.items():
        assert json.loads((out / STATE_DIR / f"{name}.json").read_text())["sha256"] == h

    t = time.monotonic()
    assert cli.main(args) == 0
    assert time.monotonic() - t < 5  # nothing to run: Ray is not even started
    lines = _table(capsys.readouterr().out)
    assert all(" skipped " in r for r in _rows(lines).values())
    assert lines[-1] == "2 of 2 jobs succeeded (2 complete from an earlier run)"
    assert {p.name: sha256_file(p) for p in out.glob("*.ply")} == hashes


@pytest.fixture(scope="module")
def two_nodes():
    """A simulated two-node Ray cluster of one CPU each (one head, one worker node)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 100 << 20})  # fmt: skip
    cluster.add_node(num_cpus=1, object_store_memory=100 << 20)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def six_items(tmp_path_factory, tiny_model):
    """4 posed sets (a, b, crash: killed once, dies: always killed), 2 images (good, bad)."""
    from viewforge.engine.images import save_png

    import numpy as np

    src = _posed(tmp_path_factory.mktemp("ray") / "in", "a", "b", "crash", "dies")
    img = np.ones((64, 64, 3), np.float32)
    img[16:48, 20:44] = [0.9, 0.6, 0.1]
    save_png(src / "good.png", img)
    (src / "bad.png").write_bytes(b"not a png at all")
    return src, tiny_model


def _plan(src, out, model, **kw):
    plan = plan_batch(src, out, tiny_config(model), **kw)
    kinds = {"crash": "test_batch_ray:crash_once_job", "dies": "test_batch_ray:always_crash_job"}
    return _with_kinds(plan, kinds)


def _with_kinds(plan, kinds):
    """The plan with some jobs' kinds replaced (job functions of this module); skip as plan_batch decides it."""
    jobs = []
    for j in plan.jobs:
        spec = replace(j.spec, kind=kinds.get(j.item.name, j.spec.kind))
        jobs.append(replace(j, spec=spec, skip=record_matches(spec, j.record)))
    return replace(plan, jobs=tuple(jobs))


def test_two_nodes_crashes_bad_input_and_resume(two_nodes, six_items, tmp_path):
    src, model = six_items
    out = tmp_path / "out"
    plan = _plan(src, out, model)
    events = []
    with batch_lock(plan):
        rows = run_plan_ray(plan, tiny_config(model), RayConfig(retries=1), progress=events.append)
    by = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["a", "b", "bad", "crash", "dies", "good"]
    assert {n: r.status for n, r in by.items()} == {"a": "ok", "b": "ok", "bad": "failed", "crash": "ok", "dies": "failed",
                                                   "good": "ok"}, {n: r.detail for n, r in by.items()}  # fmt: skip
    assert (MARKERS / "crash.crashed").exists()  # killed once, then retried and finished
    assert (MARKERS / "dies.runs").read_text() == "xx"  # 1 + retries=1 runs
    assert "worker process died 2 times" in by["dies"].detail and "SIGKILL" in by["dies"].detail
    assert "Fix:" in by["bad"].detail
    assert by["good"].metrics.get("generator_evals")
    # both nodes got work
    assert len({r.metrics["ray_node"] for r in rows if r.status == "ok"}) == 2
    assert {e.stage for e in events} >= {"batch"} and events[-1].fraction == 1.0
    # only complete outputs (and the batch's records); nothing half-written
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR, "a.ply", "b.ply", "crash.ply", "good.ply"]
    assert sorted(p.name for p in (out / STATE_DIR).iterdir()) == ["a.ply.json", "b.ply.json", "crash.ply.json", "good.ply.json"]
    hashes = {p.name: sha256_file(p) for p in out.glob("*.ply")}

    # resume: the lost job now runs (as a plain reconstruct), the finished ones are skipped
    plan = _with_kinds(plan_batch(src, out, tiny_config(model)), {"crash": "test_batch_ray:crash_once_job"})
    assert [j.item.name for j in plan.todo] == ["bad", "dies"]
    with batch_lock(plan):
        rows = run_plan_ray(plan, tiny_config(model), RayConfig(retries=1))
    assert {r.name: r.status for r in rows} == {"a": "skipped", "b": "skipped", "bad": "failed", "crash": "skipped",
                                                "dies": "ok", "good": "skipped"}  # fmt: skip
    after = {p.name: sha256_file(p) for p in out.glob("*.ply")}
    assert sorted(after) == ["a.ply", "b.ply", "crash.ply", "dies.ply", "good.ply"]  # each job's output once
    assert {k: after[k] for k in hashes} == hashes
    assert (MARKERS / "dies.runs").read_text() == "xx"


def test_output_not_reachable_from_workers(two_nodes, six_items, tmp_path):
    src, model = six_items
    out = tmp_path / "out"
    plan = plan_batch(src, out, tiny_config(model), only=["a"])
    import shutil

    shutil.rmtree(out)  # the driver saw it; the workers do not
    rows = run_plan_ray(plan, tiny_config(model), RayConfig())
    assert rows[0].status == "failed" and "is not reachable from worker node" in rows[0].detail
    with pytest.raises(OutputError, match="not reachable"):
        probe_output(out)


def test_cancel_stops_every_task(two_nodes, six_items, tmp_path):
    from viewforge.engine.progress import CancelToken

    src, model = six_items
    plan = plan_batch(src, tmp_path / "out", tiny_config(model), only=["a", "b"])
    plan = _with_kinds(plan, {"a": "test_batch_ray:sleep_job", "b": "test_batch_ray:sleep_job"})
    cancel = CancelToken()
    cancelled_at = []

    def progress(event):  # Ctrl-C once a job reports its stage from its worker
        if event.stage.endswith(": sleep") and not cancel.cancelled:
            cancel.cancel()
            cancelled_at.append(time.monotonic())

    with pytest.raises(Cancelled):
        run_plan_ray(plan, tiny_config(model), RayConfig(), progress=progress, cancel=cancel)
    assert len(cancelled_at) == 1 and time.monotonic() - cancelled_at[0] < 5
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name != STATE_DIR]
    # the cluster's CPUs are free again
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2


def test_gpu_jobs_need_gpus(two_nodes, six_items, tmp_path):
    src, model = six_items
    plan = plan_batch(src, tmp_path / "out", tiny_config(model), only=["a"])
    with pytest.raises(DependencyError, match="asks for 1 GPU but the Ray cluster has 0"):
        run_plan_ray(plan, replace(tiny_config(model), device="cuda"), RayConfig())
