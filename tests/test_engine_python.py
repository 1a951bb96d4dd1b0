"""The engine Python (bridge/engine_python.py, engine/jobs.SubprocessJob): the check's one-line
errors for every bad interpreter (faked with small scripts and a bare venv), and jobs that run in
another Python over JSON lines: result, typed errors, cancel, a crash, a real tiny reconstruction.
No bpy."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from viewforge.bridge import engine_python
from viewforge.engine import jobs
from viewforge.engine.errors import Cancelled, DependencyError, PosedSetError, ResourceError

TESTS = str(Path(__file__).resolve().parent)


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> str:
    """A Python 3.11+ with none of the engine's packages (a venv without pip: about a second)."""
    d = tmp_path_factory.mktemp("bare") / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base if base.exists() else sys.executable), "-m", "venv", "--without-pip", str(d)], check=True)
    return str(d / "bin" / "python")


def fake_torch(root: Path, body: str) -> dict[str, str]:
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "__init__.py").write_text(body)
    return {"PYTHONPATH": str(root)}


def error(python: str, env=None, kind="reconstruct") -> str:
    engine_python.forget()
    with pytest.raises(DependencyError) as e:
        engine_python.check(python, kind, env=env)
    text = str(e.value)
    assert "\n" not in text and ". Fix: " in text
    return text


def test_missing_path_and_things_that_are_not_python(tmp_path):
    assert "/nowhere/python does not exist. Fix: set Preferences > Add-ons > Viewforge > Engine Python" in error("/nowhere/python")
    assert "/bin/true is not Python (`--version` printed 'true (GNU coreutils)" in error("/bin/true")
    assert "is not Python (`--version` printed nothing)" in error(script(tmp_path / "silent", "exit 0"))
    text = tmp_path / "notes.txt"
    text.write_text("just text\n")
    assert f"{text} is not an executable program" in error(str(text))
    text.chmod(0o755)  # executable, but no interpreter line: the system cannot run it
    assert f"engine Python {text} cannot be run (Exec format error)" in error(str(text))
    chatty = script(tmp_path / "chatty", 'echo "hello from a shell script"')
    assert "is not Python (`--version` printed 'hello from a shell script')" in error(chatty)
    assert "is a folder without bin/python" in error(str(tmp_path))


def test_old_pythons(tmp_path):
    py2 = script(tmp_path / "python2", 'echo "Python 2.7.18" >&2')  # Python 2 prints its version on stderr
    msg = error(py2)
    assert "is Python 2.7; the engine needs Python 3.11 or newer" in msg and "python3 -m venv DIR" in msg
    py39 = script(tmp_path / "python3.9", 'echo "Python 3.9.18"')
    assert "is Python 3.9; the engine needs Python 3.11 or newer" in error(py39)


def test_no_torch_torch_broken_and_missing_packages(bare_venv, tmp_path):
    msg = error(bare_venv)
    assert f"{bare_venv} has no torch. Fix: run `{bare_venv} -m pip install -r " in msg
    assert msg.rstrip(".").endswith("engine-requirements.txt`")
    broken = fake_torch(tmp_path / "broken", 'raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    assert ("torch cannot import (ImportError: libcudart.so.12: cannot open shared object file). "
            "Fix: reinstall torch in that environment") in error(bare_venv, broken)  # fmt: skip
    fine = fake_torch(tmp_path / "fine", '__version__ = "2.13.0"\nclass cuda:\n    is_available = staticmethod(lambda: False)\n')
    info = engine_python.probe(bare_venv, env=fine)
    assert info.torch == "2.13.0" and info.cuda is False and info.version[:2] >= (3, 11)
    assert {"cv2", "numba", "pycolmap", "diffusers"} <= set(info.missing) and "torch" not in info.missing
    assert "lacks PIL, cv2, fast_simplification, gsplat, numba, numpy, plyfile" in error(bare_venv, fine)
    # an environment folder stands for its bin/python
    assert engine_python.probe(str(Path(bare_venv).parents[1]), env=fine).python == str(Path(bare_venv).with_name("python3"))


def test_a_python_that_hangs_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_python, "PROBE_TIMEOUT_S", 0.5)
    slow = script(tmp_path / "slow", "sleep 5")
    t = time.monotonic()
    assert "did not finish `--version` within 0 s" in error(slow) or "did not finish `--version` within 1 s" in error(slow)
    assert time.monotonic() - t < 4


def test_this_venv_passes_and_is_remembered(monkeypatch):
    engine_python.forget()
    info = engine_python.check(sys.executable, "reconstruct")
    assert info.version == tuple(sys.version_info[:3]) and info.torch.startswith("2.")
    assert engine_python.last_check(sys.executable) is info
    assert engine_python.check(sys.executable) is info  # no second probe
    monkeypatch.setenv(engine_python.ENV_VAR, sys.executable)
    assert engine_python.configured() == sys.executable
    assert engine_python.configured(type("P", (), {"engine_python": "/x/bin/python"})()) == "/x/bin/python"


def test_newer_blender_warns_once(caplog):
    assert engine_python.blender_version_warning((5, 3, 0)) is None
    assert engine_python.blender_version_warning((4, 2, 1)) is None
    assert "tested up to Blender 5.3; this is Blender 5.4.0" in engine_python.blender_version_warning((5, 4, 0))
    with caplog.at_level(logging.WARNING, logger=engine_python.__name__):
        engine_python.warn_blender_version((6, 1, 0))
        engine_python.warn_blender_version((6, 1, 0))
    assert sum("Blender 6.1.0" in r.getMessage() for r in caplog.records) == 1


# --- jobs in another Python ------------------------------------------------------------------


def echo_job(spec, progress, cancel):
    """Prints to stdout (as libraries do) and returns plain values, numpy ones included."""
    import numpy as np

    print("noise on stdout that must not break the channel")
    progress(jobs.ProgressEvent("echo", 0.5, "half"))
    return jobs.JobResult(spec.output, {"n": np.int64(3), "xs": np.arange(3.0), "env": os.environ.get("VF_TEST_VALUE"),
                                        "exe": sys.executable, "nice": os.nice(0)}, "echoed")  # fmt: skip


def sleepy_job(spec, progress, cancel):
    while True:
        progress(jobs.ProgressEvent("sleep", 0.1, "zzz"))
        cancel.check()
        time.sleep(0.02)


def crashing_job(spec, progress, cancel):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def run(kind: str, python: str = sys.executable, **kw) -> jobs.SubprocessJob:
    job = jobs.SubprocessJob(jobs.JobSpec(kind, "", "out.glb"), python, extra_path=[TESTS], **kw)
    return job


def test_subprocess_job_result_progress_and_environment():
    job = run("test_engine_python:echo_job", env={"VF_TEST_VALUE": "x"}, nice=3)
    stages = []
    assert job.wait(timeout=60, on_progress=lambda j: stages.append(j.stage))
    assert job.state == "done", job.error
    m = job.result.metrics
    assert m == {"n": 3, "xs": [0.0, 1.0, 2.0], "env": "x", "exe": sys.executable, "nice": m["nice"]} and m["nice"] >= 3
    assert job.result.summary == "echoed" and job.result.output == "out.glb"
    assert job.join(10) == 0
    assert job._shim is None  # the temporary path folder is gone


def test_subprocess_job_typed_error_cancel_and_crash(tmp_path):
    job = jobs.SubprocessJob(jobs.JobSpec("reconstruct", str(tmp_path / "missing.json"), str(tmp_path / "o.ply")), sys.executable)
    assert job.wait(timeout=60) and job.state == "failed"
    assert isinstance(job.error, PosedSetError) and "missing.json" in str(job.error)

    job = run("test_engine_python:sleepy_job")
    deadline = time.monotonic() + 30
    while job.stage != "sleep" and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    t = time.monotonic()
    job.cancel()
    assert job.cancelling
    assert job.wait(timeout=10) and job.state == "cancelled" and isinstance(job.error, Cancelled)
    assert time.monotonic() - t < 2.5

    job = run("test_engine_python:crashing_job")
    assert job.wait(timeout=30) and job.state == "failed"
    assert isinstance(job.error, ResourceError) and "was killed by SIGKILL" in str(job.error)


def test_subprocess_job_in_a_python_that_cannot_start(tmp_path):
    with pytest.raises(DependencyError, match="cannot be started"):
        jobs.SubprocessJob(jobs.JobSpec("reconstruct", "", ""), str(tmp_path / "nope"))


def test_a_real_reconstruction_in_the_engine_python(tmp_path):
    from helpers import TINY, sphere_posed_set

    posed = sphere_posed_set(tmp_path / "sphere")
    out = tmp_path / "sphere.ply"
    job = engine_python.start_job(jobs.JobSpec("reconstruct", str(posed), str(out), {"quality": "draft", **TINY}),
                                  sys.executable, "reconstruct")  # fmt: skip
    assert isinstance(job, jobs.SubprocessJob)
    stages = set()
    assert job.wait(timeout=180, on_progress=lambda j: stages.add(j.stage))
    assert job.state == "done", job.error
    assert out.is_file() and job.result.metrics["views"] == 8 and job.result.metrics["iterations"] == 30
    assert {"load", "fit"} <= stages
