"""Jobs (engine/jobs.py): quality presets, job specs, and the spawned worker process with progress,
cancel, a hard kill and crash reporting. No bpy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from viewforge.engine import jobs
from viewforge.engine.errors import Cancelled, DependencyError, InputError, ResourceError
from viewforge.engine.recon import ReconConfig

from helpers import TINY, sphere_posed_set


@pytest.fixture(scope="module")
def sphere_set(tmp_path_factory) -> Path:
    return sphere_posed_set(tmp_path_factory.mktemp("jobs") / "sphere")


# --- job functions used by the worker tests (imported by name in the child) -------------------


def sleepy_job(spec, progress, cancel):
    """Reports progress forever, checking the cancel token (a well-behaved long job)."""
    i = 0
    while True:
        progress(jobs.ProgressEvent("sleep", (i % 100) / 100, f"tick {i}"))
        cancel.check()
        time.sleep(0.02)
        i += 1


def stubborn_job(spec, progress, cancel):
    """Never checks the cancel token (a job stuck in native code): must be killed."""
    progress(jobs.ProgressEvent("stuck", 0.0, "stuck"))
    time.sleep(60)


def nice_job(spec, progress, cancel):
    """Reports the worker's niceness and an environment variable."""
    return jobs.JobResult("", {"nice": os.nice(0), "env": os.environ.get("VF_TEST_VALUE")})


def crashing_job(spec, progress, cancel):
    progress(jobs.ProgressEvent("crash", 0.5, "about to die"))
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------


def test_presets_map_to_recon_config():
    draft, std, high = (jobs.recon_config(q) for q in ("draft", "standard", "high"))
    assert isinstance(draft, ReconConfig)
    for cfg, preset in zip((draft, std, high), (jobs.QUALITY_PRESETS[q] for q in ("draft", "standard", "high"))):
        assert (cfg.resolution, cfg.iterations, cfg.faces, cfg.texture_size) == (
            preset.resolution, preset.iterations, preset.faces, preset.texture_size)
    # every number grows with quality
    for key in ("resolution", "iterations", "faces", "texture_size"):
        assert getattr(draft, key) < getattr(std, key) < getattr(high, key), key
    cfg = jobs.recon_config("draft", iterations=7, seed=3, resolution=None)
    assert (cfg.iterations, cfg.seed, cfg.resolution) == (7, 3, draft.resolution)
    from dataclasses import fields

    if "mesh" in {f.name for f in fields(ReconConfig)}:  # the mesh stage's extra settings
        assert draft.mesh == jobs.QUALITY_PRESETS["draft"].mesh and draft.mesh["grid"] < 192
        merged = jobs.recon_config("draft", mesh={"grid": 64, "smooth_iterations": 2}).mesh
        assert merged == {**jobs.QUALITY_PRESETS["draft"].mesh, "grid": 64, "smooth_iterations": 2}
    with pytest.raises(InputError, match="unknown quality 'ultra'"):
        jobs.recon_config("ultra")
    with pytest.raises(InputError, match="unknown reconstruction option"):
        jobs.recon_config("draft", bogus=1)


def test_spec_round_trip_and_unknown_kind():
    spec = jobs.JobSpec("reconstruct", "/a/transforms.json", "/b/out.glb", {"quality": "draft", "seed": 2}, "a")
    assert jobs.JobSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InputError, match="unknown job kind 'nope'"):
        jobs.job_function("nope")
    assert jobs.job_function("test_jobs:sleepy_job") is sleepy_job


#: Generate options small enough for a ~10 s run with the tiny model on CPU.
GENERATE_TINY = {"device": "cpu", "fit_iterations": 60, "warm_iterations": 18, "faces": 1500, "texture_size": 128,
                 "mesh": {"grid": 48, "fuse_views": 12, "fuse_size": 64, "bake_render_views": 4}}


def disc_png(path: Path) -> Path:
    from viewforge.engine.images import save_png

    img = np.ones((120, 120, 3), np.float32)
    yy, xx = np.mgrid[:120, :120]
    img[(xx - 60) ** 2 + (yy - 60) ** 2 < 38**2] = [0.2, 0.5, 0.8]
    return save_png(path, img)


def test_iteration_rules():
    from viewforge.engine import presets

    # generate: every warm fit is 30 % of the first fit, and the presets follow the rule
    assert [presets.warm_iterations(n) for n in (1, 3, 4, 100, 1000)] == [1, 1, 1, 30, 300]
    for p in presets.GENERATE_PRESETS.values():
        assert p.warm_iterations == presets.warm_iterations(p.fit_iterations)
    # reconstruct's completion splits the whole budget: 3000 -> the generate defaults' 1000 + 300
    assert presets.completion_iterations(3000) == (1000, 300)
    assert presets.completion_iterations(2) == (1, 1)
    assert jobs.QUALITY_PRESETS is presets.QUALITY_PRESETS and jobs.GENERATE_PRESETS is presets.GENERATE_PRESETS


def test_generate_presets_and_options():
    from viewforge.engine.generate import GenerateConfig

    draft, std, high = (jobs.generate_config(q) for q in ("draft", "standard", "high"))
    assert set(jobs.GENERATE_PRESETS) == set(jobs.QUALITY_PRESETS)
    default = GenerateConfig()
    assert (std.fit_iterations, std.warm_iterations, std.faces, std.texture_size) == (
        default.fit_iterations, default.warm_iterations, default.faces, default.texture_size)
    for key in ("fit_iterations", "warm_iterations", "faces", "texture_size"):
        assert getattr(draft, key) < getattr(std, key) < getattr(high, key), key
    assert draft.mesh == jobs.GENERATE_PRESETS["draft"].mesh
    cfg = jobs.generate_config("draft", model="/m", steps=2, method="im3d", seed=4, allow_download=True, faces=None,
                               mesh={"grid": 32}, fit={"init_points": 500})  # fmt: skip
    assert (cfg.model, cfg.steps, cfg.method, cfg.seed, cfg.allow_download, cfg.faces) == ("/m", 2, "im3d", 4, True, draft.faces)
    assert cfg.mesh == {**jobs.GENERATE_PRESETS["draft"].mesh, "grid": 32} and cfg.fit == {"init_points": 500}
    with pytest.raises(InputError, match="unknown quality 'ultra'"):
        jobs.generate_config("ultra")
    # unknown options are refused before any work (no image is read, nothing is loaded)
    with pytest.raises(InputError, match="unknown generate option.*resolution, views") as e:
        jobs.run_job(jobs.JobSpec("generate", "/x/cat.png", "/x/cat.glb", {"views": 3, "resolution": 64}))
    assert "Fix:" in str(e.value)


def test_worker_runs_a_generate_job_with_the_tiny_model(tiny_model, tmp_path):
    from viewforge.engine.io.mesh import read_mesh

    image = disc_png(tmp_path / "disc.png")
    out = tmp_path / "disc.glb"
    spec = jobs.JobSpec("generate", str(image), str(out),
                        {"quality": "draft", "model": str(tiny_model), "seed": 1, "size": 0.5, **GENERATE_TINY})
    job = jobs.JobProcess(spec)
    stages = []
    assert job.wait(timeout=180, on_progress=lambda j: stages.append(j.stage))
    res = job.raise_for_error()
    assert Path(res.output) == out and out.is_file()
    m = res.metrics
    assert m["generator_evals"] == 8 and m["generator"] == "zero123pp-v1.2" and 100 < m["num_faces"] <= 1500
    assert res.summary.startswith(f"{m['num_faces']} faces, 8 generator evaluations")
    # progress comes through (the poll sees the latest stage only, so which ones depends on timing)
    assert len(set(stages) - {"start"}) >= 3, stages
    lo, hi = read_mesh(out).bounds()
    assert abs(float((hi - lo).max()) - 0.5) < 1e-3 and abs(float(lo[2])) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.glb", "disc.png"]


def test_error_from_message_keeps_the_type():
    err = jobs.error_from_message("ResourceError", "out of memory", "lower it")
    assert isinstance(err, ResourceError) and str(err) == "out of memory. Fix: lower it."
    assert type(jobs.error_from_message("NotAnError", "m", "f")) is jobs.ViewforgeError


def test_worker_runs_a_reconstruction_with_progress(sphere_set, tmp_path):
    out = tmp_path / "sphere.ply"
    job = jobs.JobProcess(jobs.JobSpec("reconstruct", str(sphere_set), str(out), {"quality": "draft", **TINY}))
    stages = []
    assert job.wait(timeout=120, on_progress=lambda j: stages.append((j.stage, j.fraction)))
    assert job.state == "done", job.error
    res = job.raise_for_error()
    assert Path(res.output) == out and out.is_file() and out.stat().st_size > 1000
    assert res.metrics["views"] == 8 and res.metrics["iterations"] == 30
    assert {"load", "fit"} <= {s for s, _ in stages}
    assert all(0.0 <= f <= 1.0 for _, f in stages)
    assert job.join(10) == 0


def test_worker_reports_bad_input_as_typed_error(tmp_path):
    job = jobs.JobProcess(jobs.JobSpec("reconstruct", str(tmp_path / "missing.json"), str(tmp_path / "o.ply"), TINY))
    assert job.wait(timeout=60)
    assert job.state == "failed" and isinstance(job.error, InputError)
    assert "Fix:" in str(job.error)
    assert not (tmp_path / "o.ply").exists()


def test_cancel_stops_a_cooperative_job_quickly():
    job = jobs.JobProcess(jobs.JobSpec("test_jobs:sleepy_job", "", ""))
    deadline = time.monotonic() + 30
    while job.stage != "sleep" and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    assert job.stage == "sleep" and job.message.startswith("tick")
    t = time.monotonic()
    job.cancel()
    assert job.cancelling
    assert job.wait(timeout=10)
    assert time.monotonic() - t < 1.0  # cooperative: well within the 2 s grace
    assert job.state == "cancelled" and isinstance(job.error, Cancelled)
    assert job.join(10) == 0  # it stopped by itself
    with pytest.raises(Cancelled):
        job.raise_for_error()


def test_cancel_kills_a_job_that_does_not_stop():
    job = jobs.JobProcess(jobs.JobSpec("test_jobs:stubborn_job", "", ""))
    deadline = time.monotonic() + 30
    while job.stage != "stuck" and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    assert job.stage == "stuck"
    t = time.monotonic()
    job.cancel()
    assert job.wait(timeout=10)
    elapsed = time.monotonic() - t
    assert jobs.CANCEL_GRACE_S <= elapsed < 2.0  # a cancel takes effect within 2 s
    assert job.state == "cancelled"
    assert job.join(5) == -signal.SIGKILL


def test_worker_environment_and_priority():
    base = os.nice(0)
    job = jobs.JobProcess(jobs.JobSpec("test_jobs:nice_job", "", ""), env={"VF_TEST_VALUE": "x"}, nice=5)
    assert job.wait(timeout=30) and job.state == "done", job.error
    assert job.result.metrics == {"nice": min(base + 5, 19), "env": "x"}
    assert "VF_TEST_VALUE" not in os.environ


def test_a_worker_crash_is_an_error_not_a_hang():
    job = jobs.JobProcess(jobs.JobSpec("test_jobs:crashing_job", "", ""))
    assert job.wait(timeout=30)
    assert job.state == "failed" and isinstance(job.error, ResourceError)
    assert "killed by SIGKILL" in str(job.error) and "Fix:" in str(job.error)
    assert job.crashed  # (the Ray executor retries these)
    ok = jobs.JobProcess(jobs.JobSpec("test_jobs:nice_job", "", ""))
    assert ok.wait(timeout=30) and ok.state == "done" and not ok.crashed


def test_a_worker_ends_with_its_parent(tmp_path):
    """A parent killed outright (a Blender crash, a Ray worker cancelled with force) does not leave
    its job running."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from viewforge.engine.jobs import JobProcess, JobSpec\n"
        "j = JobProcess(JobSpec('test_jobs:sleepy_job', '', ''))\n"
        "while j.stage != 'sleep':\n"
        "    j.poll(); time.sleep(0.05)\n"
        "print(j.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            stat = Path(f"/proc/{child}/stat")
            if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                break  # exited; not reaped yet by an init that does not reap
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the job process outlived its parent")


def test_worker_runs_without_the_parents_main_module(tmp_path):
    """A script run as __main__ (like a Blender --python script) is not re-run in the worker."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(
        "import pathlib, sys\n"
        f"pathlib.Path({str(marker)!r}).write_text(__name__ + '\\n') if __name__ != '__main__' else None\n"
        "from viewforge.engine.jobs import JobProcess, JobSpec\n"
        "if __name__ == '__main__':\n"
        "    j = JobProcess(JobSpec('generate', 'a.png', 'a.glb'))\n"
        "    j.wait(timeout=30)\n"
        "    print(j.state)\n"
    )
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "failed"
    assert not marker.exists()  # the child never imported the script
