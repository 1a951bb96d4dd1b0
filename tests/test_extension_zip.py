"""scripts/build_extension.py and the extension zip: it builds with Blender's own tool, validates,
installs into bpy with ``extensions.package_install_files(enable_on_install=True)``, registers its
operators, and uninstalls cleanly.

The first build downloads the light wheels (trimesh, plyfile) into wheels/ with pip (network);
wheels/ is the cache, so later runs do not download again.
"""

from __future__ import annotations

import importlib.util
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

OPERATORS = ("cameras_from_transforms", "export_transforms")


@pytest.fixture(scope="module")
def build_extension():
    spec = importlib.util.spec_from_file_location("build_extension", REPO / "scripts" / "build_extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# the manifest and the script's checks (no network, no bpy)
# ---------------------------------------------------------------------------------------------


def test_manifest_fields(build_extension):
    m = build_extension.read_manifest()
    assert m["schema_version"] == "1.0.0"
    assert m["id"] == "viewforge" and m["name"] == "Viewforge" and m["type"] == "add-on"
    assert m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert len(m["tagline"]) < 64 and m["tagline"][-1].isalnum()
    assert set(m["permissions"]) == {"network", "files"}
    for reason in m["permissions"].values():
        assert reason and reason[-1].isalnum() and len(reason) <= 64
    # the version is the package's version
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert m["version"] == pyproject["project"]["version"]


def test_manifest_wheels_are_pure_python_and_pinned(build_extension):
    wheels = build_extension.manifest_wheels()
    names = {dist for _, dist in wheels}
    assert {"trimesh", "plyfile"} <= names
    pins = build_extension.read_constraints()
    for rel, dist in wheels:
        _, version, tag = build_extension.parse_wheel_filename(rel.rsplit("/", 1)[-1])
        assert tag.endswith("-none-any") and pins[dist] == version


@pytest.mark.parametrize(
    "wheel, words",
    [
        ("./wheels/trimesh-0.0.1-py3-none-any.whl", "constraints.txt pins 5.2.0"),
        ("./wheels/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl", "platform-specific"),
        ("./wheels/notpinned-1.0-py3-none-any.whl", "no pin"),
        ("./wheels/garbage.whl", "not a wheel file name"),
    ],
)
def test_manifest_wheel_mismatches_are_clear_errors(build_extension, wheel, words):
    manifest = dict(build_extension.read_manifest(), wheels=[wheel])
    with pytest.raises(build_extension.BuildError) as e:
        build_extension.manifest_wheels(manifest)
    assert words in str(e.value) and "Fix:" in str(e.value)


def test_validate_rejects_a_bad_manifest(build_extension, tmp_path):
    lines = (REPO / "blender_manifest.toml").read_text().splitlines()
    bad = ['tagline = "Ends with a period."' if ln.startswith("tagline") else ln for ln in lines]
    assert bad != lines
    (tmp_path / "blender_manifest.toml").write_text("\n".join(bad) + "\n")
    (tmp_path / "__init__.py").write_text("")
    with pytest.raises(build_extension.BuildError, match="tagline"):
        build_extension.validate(tmp_path)
    (tmp_path / "blender_manifest.toml").write_text("\n".join(lines) + "\n")
    build_extension.validate(tmp_path)  # the real manifest passes


# ---------------------------------------------------------------------------------------------
# build, install, register, uninstall (bpy)
# ---------------------------------------------------------------------------------------------


def _registered(bpy, op: str):
    """The Python class registered for ``viewforge.<op>``, or None."""
    return getattr(bpy.types, f"VIEWFORGE_OT_{op}", None)


@pytest.mark.blender
def test_zip_builds_validates_installs_and_registers_operators(build_extension, blender, tmp_path):
    import addon_utils

    bpy = blender
    zip_path = build_extension.build(tmp_path / "dist")
    assert zip_path == tmp_path / "dist" / "viewforge-0.1.0.zip" and zip_path.is_file()
    assert sorted(p.name for p in zip_path.parent.iterdir()) == [zip_path.name]  # no temp leftovers
    build_extension.validate(zip_path)  # raises on an invalid package

    names = zipfile.ZipFile(zip_path).namelist()
    for required in (
        "blender_manifest.toml",
        "__init__.py",
        "cli.py",
        "engine/cameras.py",
        "bridge/render.py",
        "operators/__init__.py",
        "panels/__init__.py",
        "wheels/trimesh-5.2.0-py3-none-any.whl",
        "wheels/plyfile-1.1.3-py3-none-any.whl",
    ):
        assert required in names, required
    for excluded in ("tests/", "docs/", "scripts/", "bench/", ".venv/", ".git/", ".ci/", "viewforge.egg-info/"):
        assert not any(n.startswith(excluded) for n in names), excluded
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n in ("pyproject.toml", "constraints.txt") or n.startswith("requirements") for n in names)

    repos = [r.module for r in bpy.context.preferences.extensions.repos]
    assert "user_default" in repos
    module = "bl_ext.user_default.viewforge"
    try:
        result = bpy.ops.extensions.package_install_files(
            filepath=str(zip_path), repo="user_default", enable_on_install=True
        )
        assert result == {"FINISHED"}
        assert addon_utils.check(module) == (True, True)
        for op in OPERATORS:
            cls = _registered(bpy, op)
            assert cls is not None, f"viewforge.{op} is not registered"
            assert cls.__module__.startswith(module + "."), cls.__module__  # from the installed zip
            getattr(bpy.ops.viewforge, op).get_rna_type()  # callable through bpy.ops
        # the light wheels were installed next to the extension
        local = Path(bpy.utils.user_resource("EXTENSIONS", path=".local"))
        installed = {p.name for p in local.glob("lib/python*/site-packages/*")}
        assert {"trimesh", "plyfile"} <= {n.split("-")[0].split(".")[0] for n in installed}, installed
    finally:
        result = bpy.ops.extensions.package_uninstall(repo_index=repos.index("user_default"), pkg_id="viewforge")
    assert result == {"FINISHED"}
    assert addon_utils.check(module) == (False, False)
    for op in OPERATORS:
        cls = _registered(bpy, op)
        assert cls is None or not cls.__module__.startswith(module), f"viewforge.{op} still registered from the zip"
