"""Engine dependencies (bridge/deps.py): detection, the per-platform requirement list, the two
pip steps (resolve against Blender's own packages, then install without them), and the install
operator against a local wheel folder (``--no-index --find-links``, no network) with tiny wheels
built here. A Blender with another numpy is faked with a fake list of Blender's packages and fake
pip reports (Python 3.13 cannot be run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from viewforge.bridge import deps
from viewforge.engine.errors import Cancelled, DependencyError, InputError


def _wheel(out: Path, name: str, version: str, deps: list[str] | None = None) -> None:
    """Write ``name-version-py3-none-any.whl``: one module ``name`` and the wheel metadata."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = 42\nVERSION = '{version}'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {d}\n" for d in deps or []),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: viewforge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


@pytest.fixture(scope="module")
def wheel_folder(tmp_path_factory) -> Path:
    """A folder of one-line pure-Python wheels: vftinypkg 0.1 and 0.2; vfdep 1.0 (needs vftinypkg);
    vfneedsnp 1.0 (needs numpy>=99, another numpy than any Blender's)."""
    out = tmp_path_factory.mktemp("wheels") / "wheels"
    _wheel(out, "vftinypkg", "0.1")
    _wheel(out, "vftinypkg", "0.2")
    _wheel(out, "vfdep", "1.0", ["vftinypkg>=0.1"])
    _wheel(out, "vfneedsnp", "1.0", ["numpy>=99"])
    assert sorted(p.name for p in out.iterdir()) == [
        "vfdep-1.0-py3-none-any.whl", "vfneedsnp-1.0-py3-none-any.whl", "vftinypkg-0.1-py3-none-any.whl",
        "vftinypkg-0.2-py3-none-any.whl",
    ]  # fmt: skip
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


def _build_extension():
    spec = importlib.util.spec_from_file_location("build_extension", deps.ROOT / "scripts" / "build_extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_pins_are_generated_from_the_repository_pins():
    """The installer's pins are requirements.txt / constraints.txt without what Blender ships
    (after changing a pin run ``.venv/bin/python scripts/build_extension.py --sync-pins``)."""
    build = _build_extension()
    root = deps.ROOT
    assert deps.ENGINE_REQUIREMENTS.read_text() == build.engine_pins_text(root / "requirements.txt")
    assert deps.ENGINE_CONSTRAINTS.read_text() == build.engine_pins_text(root / "constraints.txt")
    shipped = build.read_constraints(deps.ENGINE_CONSTRAINTS)
    repo = build.read_constraints(root / "constraints.txt")
    assert "numpy" in repo and "bpy" in repo and "requests" in repo
    assert not set(shipped) & build.ENGINE_EXCLUDED
    assert shipped == {k: v for k, v in repo.items() if k not in build.ENGINE_EXCLUDED}
    assert shipped["torch"] == "2.13.0"
    # what the bpy wheel declares Blender ships is all left out
    import importlib.metadata

    try:
        declared = importlib.metadata.requires("bpy") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    for req in declared:
        name = deps._PIN.match(req).group(1)
        assert deps._canonical(name) in build.BLENDER_SHIPPED, req


def test_engine_pins_text_leaves_out_blender_packages_and_keeps_markers(tmp_path):
    src = tmp_path / "constraints.txt"
    src.write_text("# head\nNumPy==1.26.4\ntorch==2.13.0\nscipy==1.16.3 ; python_version >= \"3.13\"\nrequests==2.34.2\nbpy==5.0.1\n")
    text = _build_extension().engine_pins_text(src)
    lines = text.splitlines()
    assert lines[0].startswith("# Generated from constraints.txt") and "bpy, numpy, requests" in lines[1]
    assert lines[2:] == ["# head", "torch==2.13.0", 'scipy==1.16.3 ; python_version >= "3.13"']


#: Blender 5.1's packages as the installer reads them (Python 3.13, numpy 2.x): a fake.
BLENDER_51 = {"numpy": "2.3.5", "requests": "2.32.3", "certifi": "2025.1.31", "cython": "3.0.11", "pip": "25.0.1"}


def _report(*items: tuple[str, str, list[str]]) -> dict:
    return {"version": "1", "install": [{"metadata": {"name": n, "version": v, "requires_dist": r}} for n, v, r in items]}


def test_resolve_inputs_pin_blender_packages_and_drop_them_from_the_requirements(tmp_path):
    cons = tmp_path / "c.txt"
    cons.write_text("# x\nnumpy==1.26.4\ntorch==2.13.0\nscipy==1.15.0 ; python_version < \"3.13\"\nCython==3.3.1\n")
    lines = deps.resolve_constraints(BLENDER_51, cons)
    assert lines[:5] == ["certifi==2025.1.31", "cython==3.0.11", "numpy==2.3.5", "pip==25.0.1", "requests==2.32.3"]
    assert lines[5:] == ["torch==2.13.0", 'scipy==1.15.0 ; python_version < "3.13"']  # ours of numpy/Cython dropped
    reqs = deps.without_blender(["torch==2.13.0", "numpy==1.26.4", "Requests", "scipy>=1"], BLENDER_51)
    assert reqs == ["torch==2.13.0", "scipy>=1"]


def test_distributions_are_read_live_from_the_running_python():
    import numpy

    here = deps.blender_distributions()
    assert here["numpy"] == numpy.__version__ and "pip" in here
    assert deps.blender_distributions([]) == {}
    other = deps.distributions_of(sys.executable)  # the same interpreter, read from a subprocess
    assert other["numpy"] == numpy.__version__ and set(other) <= set(here) | {"viewforge"}
    with pytest.raises(DependencyError, match="cannot list the packages"):
        deps.distributions_of("/nonexistent/python3")


def test_install_list_never_holds_blender_packages():
    report = _report(
        ("torch", "2.13.0", ["numpy", "filelock"]), ("numpy", "2.3.5", []), ("filelock", "4.2.11", []),
        ("Requests", "2.32.3", []), ("opencv-python-headless", "4.11.0.86", ['numpy>=2; python_version >= "3.9"']),
    )  # fmt: skip
    assert deps.install_list(report, BLENDER_51) == ["torch==2.13.0", "filelock==4.2.11", "opencv-python-headless==4.11.0.86"]
    assert deps.install_list({"install": []}, BLENDER_51) == []


def test_install_list_refuses_to_replace_blender_numpy_naming_who_needs_it():
    # Blender 4.5 (numpy 1.26.4) and a resolved package that would pull numpy 2
    blender = {"numpy": "1.26.4"}
    report = _report(("scipy", "1.17.0", ["numpy>=2.0,<2.6"]), ("numpy", "2.3.5", []), ("tqdm", "4.70.1", []))
    with pytest.raises(DependencyError) as e:
        deps.install_list(report, blender)
    text = str(e.value)
    assert text.count("\n") == 0 and "Fix:" in text
    assert "scipy 1.17.0 needs numpy>=2.0,<2.6, but Blender's Python has numpy 1.26.4" in text


def test_resolve_error_names_the_package_and_blender_version():
    blender = {"numpy": "2.3.5"}
    log = [
        "Collecting vfneedsnp==1.0",
        "ERROR: Cannot install vfneedsnp==1.0 because these package versions have conflicting dependencies.",
        "",
        "The conflict is caused by:",
        "    The user requested (constraint) numpy==2.3.5",
        "    vfneedsnp 1.0 depends on numpy<2",
    ]
    err = deps.resolve_error(log, blender, 1)
    assert isinstance(err, DependencyError) and "\n" not in str(err)
    assert str(err).startswith("vfneedsnp 1.0 needs numpy<2, but Blender's Python has numpy 2.3.5")
    nowheel = deps.resolve_error(["ERROR: No matching distribution found for pycolmap==4.2.1"], blender, 1)
    assert "no wheel of pycolmap==4.2.1 for Blender's Python" in str(nowheel) and "Fix:" in str(nowheel)
    old = deps.resolve_error(["Usage: ...", "no such option: --report"], blender, 2)
    assert "too old" in str(old) and "--upgrade pip" in str(old)
    assert "ensurepip" in str(deps.resolve_error(["/x/python: No module named pip"], blender, 1))
    assert deps.blender_summary(blender) == f"Python {sys.version_info.major}.{sys.version_info.minor}, numpy 2.3.5"
    other = deps.resolve_error(["something", "ERROR: boom"], blender, 1)
    assert "resolving the engine dependencies failed: ERROR: boom" in str(other)


def test_install_command_and_network_gate(tmp_path, wheel_folder):
    opts = deps.InstallOptions(target=tmp_path / "t", requirements=("a==1",), find_links=wheel_folder)
    cmd = deps.install_command(opts, tmp_path / "r.txt", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == str(tmp_path / "t")
    assert cmd[cmd.index("--find-links") + 1] == str(wheel_folder) and "--no-index" in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd  # step 2 installs exactly the resolved list
    res = deps.resolve_command(opts, tmp_path / "r.txt", tmp_path / "c.txt", tmp_path / "rep.json", python="py")
    assert "--dry-run" in res and "--target" not in res and "--no-deps" not in res and "--only-binary=:all:" in res
    assert res[res.index("--report") + 1] == str(tmp_path / "rep.json") and res[res.index("-c") + 1] == str(tmp_path / "c.txt")
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
    assert (target / "vftinypkg" / "__init__.py").read_text() == "VALUE = 42\nVERSION = '0.1'\n"
    assert any(line.startswith("Processing ") for line in job.log)
    assert all(0.0 <= f <= 1.0 for _, f in seen)
    assert [s for s, _ in seen][0] == "resolve" and len(job.commands) == 2 and "--dry-run" in job.commands[0]


def test_pip_install_never_installs_a_blender_package(tmp_path, wheel_folder):
    """vfdep needs vftinypkg; with a (fake) Blender that ships vftinypkg 0.1 only vfdep is installed."""
    target = tmp_path / "site"
    blender = {**deps.blender_distributions(), "vftinypkg": "0.1"}
    job = deps.PipInstall(deps.InstallOptions(target=target, requirements=("vfdep==1.0",), find_links=wheel_folder), blender=blender)
    try:
        assert job.wait(timeout=120)
    finally:
        deps.remove_from_path(str(target))
    assert job.state == "done", job.log[-5:]
    assert job.resolved == ["vfdep==1.0"] and job.result == ["vfdep-1.0"]
    assert (target / "vfdep").is_dir() and not (target / "vftinypkg").exists()
    assert not list(target.glob("numpy*"))


def test_per_python_pins_apply_by_their_markers(tmp_path, wheel_folder):
    """A pin with an environment marker holds only for the Pythons it names (how a pin differs
    between Blender's Python 3.11 and 3.13)."""
    cons = tmp_path / "constraints.txt"
    cons.write_text('vftinypkg==0.1 ; python_version >= "3.11"\nvfdep==0.5 ; python_version < "3.11"\n')
    target = tmp_path / "site"
    opts = deps.InstallOptions(target=target, requirements=("vftinypkg", "vfdep"), find_links=wheel_folder, constraints=cons)
    job = deps.PipInstall(opts)
    try:
        assert job.wait(timeout=120)
    finally:
        deps.remove_from_path(str(target))
    assert job.state == "done", job.log[-5:]
    assert sorted(job.resolved) == ["vfdep==1.0", "vftinypkg==0.1"]  # not the newest 0.2; no vfdep 0.5 (no such wheel)
    assert "VERSION = '0.1'" in (target / "vftinypkg" / "__init__.py").read_text()


def test_pip_install_refuses_a_package_that_needs_another_numpy(tmp_path, wheel_folder):
    """Blender's numpy (here this Python's, read live) wins: a package needing numpy>=99 fails in
    the resolve step with one line naming it, and nothing is installed."""
    import numpy

    target = tmp_path / "site"
    job = deps.PipInstall(deps.InstallOptions(target=target, requirements=("vfneedsnp==1.0",), find_links=wheel_folder))
    assert job.blender["numpy"] == numpy.__version__
    assert job.wait(timeout=120)
    assert job.state == "failed" and isinstance(job.error, DependencyError) and len(job.commands) == 1
    text = str(job.error)
    assert "\n" not in text and "Fix:" in text
    assert text.startswith(f"vfneedsnp 1.0 needs numpy>=99, but Blender's Python has numpy {numpy.__version__}"), text
    assert list(target.iterdir()) == []


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
        import numpy

        assert f"(Blender's Python {sys.version_info.major}.{sys.version_info.minor}, numpy {numpy.__version__} kept)" in jobs.LAST.message
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
