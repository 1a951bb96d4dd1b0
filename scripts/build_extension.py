#!/usr/bin/env python3
"""Build the installable Blender extension zip: dist/viewforge-<version>.zip.

    .venv/bin/python scripts/build_extension.py [--output-dir DIR] [--no-download]
    .venv/bin/python scripts/build_extension.py --sync-pins   # only step 2 (after changing a pin)

1. The light wheels listed in ``blender_manifest.toml`` (``wheels = [...]``) are downloaded into
   ``wheels/`` with ``pip download --no-deps --only-binary=:all: -c constraints.txt``, unless the
   exact files are already there (``wheels/`` is the cache; ``*.whl`` is gitignored). Their
   versions must equal the pins in ``constraints.txt`` and they must be platform-independent
   (``py3-none-any``); otherwise the script stops and says which line to change. Nobody
   downloads or edits wheels by hand.
2. ``bridge/engine-requirements.txt`` and ``bridge/engine-constraints.txt`` are generated from
   ``requirements.txt`` and ``constraints.txt`` without the distributions Blender ships
   (``BLENDER_SHIPPED``: numpy and the requests stack, pinned at install time to the versions the
   running Blender has) and bpy: the dependency installer in the add-on preferences resolves
   these pins (the root files themselves stay out of the zip). A pin that must differ between
   Python versions is written in constraints.txt with an environment marker
   (``name==1.2 ; python_version >= "3.13"``) and is copied as it is.
3. Blender's own extension tool, ``blender_ext.py`` shipped inside the ``bpy`` wheel
   (``site-packages/bpy/<ver>/scripts/addons_core/bl_pkg/cli/``), builds the zip from the
   repository root (the root *is* the extension; ``[build] paths_exclude_pattern`` in the
   manifest keeps tests, docs, scripts and the venv out) and validates it. No Blender binary is
   needed.
4. Prints the zip's path (the last line of stdout).

Exit codes: 0 built and valid, 2 a clear one-line error on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "blender_manifest.toml"
CONSTRAINTS = REPO / "constraints.txt"
#: Distributions every supported Blender ships in its own Python (its site-packages; the bpy
#: wheel declares the same list): never pinned by the extension and never installed by it.
BLENDER_SHIPPED = frozenset({"numpy", "requests", "certifi", "charset-normalizer", "idna", "urllib3", "cython", "zstandard"})
#: Left out of the engine pins as well: Blender itself as a module (tests only).
ENGINE_EXCLUDED = BLENDER_SHIPPED | {"bpy"}
#: (source, file generated in the extension) of the engine dependency pins.
ENGINE_PINS = (
    (REPO / "requirements.txt", REPO / "bridge" / "engine-requirements.txt"),
    (REPO / "constraints.txt", REPO / "bridge" / "engine-constraints.txt"),
)


class BuildError(Exception):
    """A one-line reason and how to fix it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message.rstrip('.')}. Fix: {fix.rstrip('.')}.")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_manifest(manifest: Path = MANIFEST) -> dict:
    with open(manifest, "rb") as f:
        return tomllib.load(f)


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` pins in a constraints file."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
        if m:
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def parse_wheel_filename(filename: str) -> tuple[str, str, str]:
    """``(distribution, version, tag)`` of a wheel file name (tag = python-abi-platform)."""
    stem = filename[: -len(".whl")] if filename.endswith(".whl") else filename
    parts = stem.split("-")
    if len(parts) not in (5, 6):
        raise BuildError(f"'{filename}' is not a wheel file name", "list wheels as name-version-python-abi-platform.whl")
    return parts[0], parts[1], "-".join(parts[-3:])


def manifest_wheels(manifest: dict | None = None, constraints: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """``[(relative path, distribution name), ...]`` of the manifest's wheels, checked against the pins."""
    manifest = read_manifest() if manifest is None else manifest
    constraints = read_constraints() if constraints is None else constraints
    out = []
    for rel in manifest.get("wheels", []):
        filename = Path(rel).name
        dist, version, tag = parse_wheel_filename(filename)
        if not tag.endswith("-none-any") or not tag.startswith("py"):
            raise BuildError(
                f"bundled wheel {filename} is platform-specific ({tag})",
                "bundle only pure-Python (py3-none-any) wheels; heavy dependencies are installed from the preferences",
            )
        pinned = constraints.get(_canonical(dist))
        if pinned is None:
            raise BuildError(f"wheel {filename} has no pin in constraints.txt", f"add '{dist}==<version>' to constraints.txt")
        if pinned != version:
            raise BuildError(
                f"blender_manifest.toml bundles {dist} {version} but constraints.txt pins {pinned}",
                f"change the manifest's wheel to {dist}-{pinned}-{tag}.whl (or the pin)",
            )
        out.append((rel, dist))
    return out


def ensure_wheels(wheels_dir: Path | None = None, download: bool = True, python: str = sys.executable) -> list[Path]:
    """Make sure every wheel the manifest lists is in ``wheels/``; downloads only missing ones."""
    wheels = manifest_wheels()
    paths = [(REPO / rel).resolve() for rel, _ in wheels]
    target = wheels_dir or (REPO / "wheels")
    missing = [(p, dist) for p, (rel, dist) in zip(paths, wheels) if not p.is_file()]
    if not missing:
        return paths
    if not download:
        raise BuildError(
            f"missing wheel(s): {', '.join(p.name for p, _ in missing)}", "run without --no-download (needs the network once)"
        )
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
        "-c", str(CONSTRAINTS), "-d", str(target), *[dist for _, dist in missing],
    ]  # fmt: skip
    print("build_extension: downloading " + ", ".join(p.name for p, _ in missing), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:]) or "pip failed"
        raise BuildError(f"pip download of the light wheels failed ({tail})", "check the network connection and retry")
    still = [p.name for p, _ in missing if not p.is_file()]
    if still:
        got = sorted(x.name for x in target.glob("*.whl"))
        raise BuildError(
            f"pip downloaded {got} but the manifest needs {still}",
            "make the manifest's wheel file names match what pip downloads for the pinned versions",
        )
    return paths


_GENERATED = (
    "# Generated from {src} by scripts/build_extension.py --sync-pins; do not edit.\n"
    "# Left out (Blender itself and what it ships; the installer pins those to the running Blender's versions): {left}.\n"
)


def engine_pins_text(src: Path) -> str:
    """The extension's copy of ``src`` (requirements.txt or constraints.txt): every line except
    the pins of ``ENGINE_EXCLUDED`` distributions, under a header naming the source."""
    kept, left = [], []
    for line in src.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if m and _canonical(m.group(1)) in ENGINE_EXCLUDED:
            left.append(_canonical(m.group(1)))
            continue
        kept.append(line)
    return _GENERATED.format(src=src.name, left=", ".join(sorted(set(left))) or "none") + "\n".join(kept) + "\n"


def sync_engine_pins() -> list[Path]:
    """Regenerate the extension's engine pins where they differ; returns the files rewritten."""
    changed = []
    for src, dst in ENGINE_PINS:
        text = engine_pins_text(src)
        if not dst.is_file() or dst.read_text(encoding="utf-8") != text:
            dst.write_text(text, encoding="utf-8")
            changed.append(dst)
    return changed


def blender_ext_tool() -> Path:
    """Path of ``blender_ext.py`` inside the installed bpy wheel (without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the bpy module is not installed", "run scripts/setup.sh (it installs bpy from requirements-dev.txt)")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise BuildError("blender_ext.py was not found inside the bpy package", "reinstall bpy (scripts/setup.sh)")


def _run_tool(args: list[str], python: str = sys.executable) -> str:
    proc = subprocess.run([python, str(blender_ext_tool()), *args], capture_output=True, text=True, cwd=REPO)
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        last = " ".join(text.splitlines()[-3:]) or f"exit code {proc.returncode}"
        raise BuildError(f"blender_ext.py {args[0]} failed: {last}", "fix blender_manifest.toml as the message says")
    return text


def validate(path: Path) -> None:
    """Validate a source folder or a built zip with ``blender_ext.py validate``."""
    _run_tool(["validate", str(path)])


def build(output_dir: Path | None = None, download: bool = True) -> Path:
    """Build and validate the extension zip; returns its path (``output_dir`` default: dist/)."""
    ensure_wheels(download=download)
    for path in sync_engine_pins():
        print(f"build_extension: refreshed {path.relative_to(REPO)}", file=sys.stderr)
    manifest = read_manifest()
    out_dir = Path(output_dir or REPO / "dist").absolute()
    if not out_dir.parent.is_dir():
        raise BuildError(f"output folder {out_dir.parent} does not exist", f"create it first (mkdir -p {out_dir.parent})")
    out_dir.mkdir(exist_ok=True)
    name = f"{manifest['id']}-{manifest['version']}.zip"
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        _run_tool(["build", "--source-dir", str(REPO), "--output-filepath", str(tmp / name)])
        validate(tmp / name)
        os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Viewforge Blender extension zip (see the module docstring).")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the zip goes (default: dist/)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing wheels")
    parser.add_argument("--sync-pins", action="store_true",
                        help="only regenerate bridge/engine-requirements.txt and bridge/engine-constraints.txt, then exit")
    args = parser.parse_args(argv)
    if args.sync_pins:
        for path in sync_engine_pins():
            print(f"build_extension: refreshed {path.relative_to(REPO)}")
        return 0
    try:
        path = build(args.output_dir, download=not args.no_download)
    except BuildError as e:
        print(f"build_extension: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
