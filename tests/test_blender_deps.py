"""Engine dependencies (bridge/deps.py): detection, the per-platform requirement list, the pip
command, and the install operator against a local wheel folder (``--no-index --find-links``, no
network) with a tiny wheel built here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from viewforge.bridge import deps
from viewforge.engine.errors import Cancelled, DependencyError, InputError


@pytest.fixture(scope="module")
def wheel_folder(tmp_path_factory) -> Path:
    """A folder holding vftinypkg-0.1-py3-none-any.whl (a one-line pure-Python package)."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheels")
    proj = root / "proj"
    (proj / "vftinypkg").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "vftinypkg"\nversion = "0.1"\n'
    )
    (proj / "vftinypkg" / "__init__.py").write_text("VALUE = 42\n")
    out = root / "wheels"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(proj)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert [p.name for p in out.iterdir()] == ["vftinypkg-0.1-py3-none-any.whl"]
    return out


def test_engine_requirements_per_platform(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# c\ntorch==2.13.0\nnumpy==1.26.4  # Blender has it\ntrimesh==5.2.0\ngsplat==1.5.3\nscipy==1.16.3\nfast_simplification\n")
    assert deps.engine_requirements("cuda", req) == ["torch==2.13.0", "gsplat==1.5.3", "scipy==1.16.3", "fast_simplification"]
    assert deps.engine_requirements("mps", req) == deps.engine_requirements("cpu", req) == deps.engine_requirements("cuda", req)
    with pytest.raises(InputError, match="unknown platform 'rocm'"):
        deps.engine_requirements("rocm", req)
    with pytest.raises(DependencyError, match="missing from the extension"):
        deps.engine_requirements("cpu", tmp_path / "nope.txt")
    # the real list: every import the reconstruct job needs is installed, except what is bundled
    real = {r.split("==")[0].replace("_", "-").lower() for r in deps.engine_requirements("cpu")}
    needed = {d.replace("_", "-").lower() for d in deps.REQUIRED["reconstruct"].values()} - deps.NOT_INSTALLED
    assert needed <= real, needed - real
    assert "gsplat" in real and "pillow" in real and "numpy" not in real and "trimesh" not in real


def test_shipped_pins_equal_the_repository_pins():
    """The installer's copies equal requirements.txt / constraints.txt (after changing a pin run
    ``.venv/bin/python scripts/build_extension.py --sync-pins``)."""
    root = deps.ROOT
    assert deps.ENGINE_REQUIREMENTS.read_text() == (root / "requirements.txt").read_text()
    assert deps.ENGINE_CONSTRAINTS.read_text() == (root / "constraints.txt").read_text()


def test_install_command_and_network_gate(tmp_path, wheel_folder):
    opts = deps.InstallOptions(target=tmp_path / "t", requirements=("a==1",), find_links=wheel_folder)
    cmd = deps.install_command(opts, tmp_path / "r.txt", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == str(tmp_path / "t")
    assert cmd[cmd.index("--find-links") + 1] == str(wheel_folder) and "--no-index" in cmd
    deps.check_install_allowed(opts, online=False)  # a local folder needs no network
    online = deps.InstallOptions(target=tmp_path / "t", requirements=("a==1",), extra_index_url="https://example.invalid/simple")
    cmd = deps.install_command(online, tmp_path / "r.txt", python="py")
    assert "--no-index" not in cmd and cmd[cmd.index("--extra-index-url") + 1] == "https://example.invalid/simple"
    with pytest.raises(DependencyError, match="online access is off") as e:
        deps.check_install_allowed(online, online=False)
    assert "local wheel folder" in str(e.value)
    deps.check_install_allowed(online, online=True)
    with pytest.raises(InputError, match="does not exist"):
        deps.check_install_allowed(deps.InstallOptions(tmp_path, (), find_links=tmp_path / "nope"), online=False)


def test_pip_install_from_a_local_folder_reports_progress(tmp_path, wheel_folder):
    target = tmp_path / "site"
    job = deps.PipInstall(deps.InstallOptions(target=target, requirements=("vftinypkg==0.1",), find_links=wheel_folder))
    seen = []
    try:
        assert job.wait(timeout=120, on_progress=lambda j: seen.append((j.stage, j.fraction)))
    finally:
        deps.remove_from_path(str(target))
    assert job.state == "done", job.log[-5:]
    assert job.result == ["vftinypkg-0.1"] and job.fraction == 1.0
    assert (target / "vftinypkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert any(line.startswith("Processing ") for line in job.log)
    assert all(0.0 <= f <= 1.0 for _, f in seen)


def test_pip_install_failure_and_cancel(tmp_path, wheel_folder):
    job = deps.PipInstall(deps.InstallOptions(target=tmp_path / "a", requirements=("vfnotthere==9",), find_links=wheel_folder))
    assert job.wait(timeout=120)
    assert job.state == "failed" and isinstance(job.error, DependencyError)
    assert "vfnotthere" in str(job.error) and "Fix:" in str(job.error)
    slow = deps.PipInstall(deps.InstallOptions(target=tmp_path / "b", requirements=("vftinypkg==0.1",), find_links=wheel_folder))
    slow.cancel()
    assert slow.wait(timeout=60)
    assert slow.state == "cancelled" and isinstance(slow.error, Cancelled)


@pytest.mark.blender
def test_install_operator_offline_refuses_then_installs_from_wheels(blender, tmp_path, wheel_folder, monkeypatch):
    import viewforge
    from viewforge.bridge import jobs

    bpy = blender
    monkeypatch.setattr(deps, "online_access", lambda: False)
    req = tmp_path / "req.txt"
    req.write_text("vftinypkg==0.1\n")
    target = tmp_path / "site-packages"
    viewforge.register()
    try:
        with pytest.raises(RuntimeError, match="online access is off.*Fix:"):
            bpy.ops.viewforge.install_dependencies(requirements=str(req), target=str(target))
        assert jobs.ACTIVE is None and not (target / "vftinypkg").exists()
        result = bpy.ops.viewforge.install_dependencies(requirements=str(req), target=str(target), find_links=str(wheel_folder))
        assert result == {"FINISHED"}
        assert jobs.LAST.state == "done" and "Installed 1 package(s)" in jobs.LAST.message
        assert (target / "vftinypkg" / "__init__.py").is_file()
        assert str(target) in sys.path  # usable at once
        import importlib

        assert importlib.import_module("vftinypkg").VALUE == 42
    finally:
        deps.remove_from_path(str(target))
        sys.modules.pop("vftinypkg", None)
        viewforge.unregister()


@pytest.mark.blender
def test_user_site_packages_is_added_on_register(blender, monkeypatch):
    import viewforge

    path = deps.user_site_packages(create=True)
    assert path.name == "site-packages" and path.is_dir()
    viewforge.register()
    try:
        assert str(path) in sys.path
    finally:
        viewforge.unregister()
    assert str(path) not in sys.path
