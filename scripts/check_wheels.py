#!/usr/bin/env python3
"""Check that the engine dependencies resolve to wheels for every Blender the extension supports.

    .venv/bin/python scripts/check_wheels.py                      # 2 Pythons x 3 platforms
    .venv/bin/python scripts/check_wheels.py --python 3.13 --platform macos
    .venv/bin/python scripts/check_wheels.py --numpy 3.13=2.3.5   # another Blender numpy

For each Python (Blender 4.2 to 5.0: 3.11; 5.1 and newer: 3.13) and platform (Linux x86_64,
manylinux_2_28; macOS arm64, macOS 14 as torch needs; Windows x86_64) it resolves
``bridge/engine-requirements.txt`` with ``bridge/engine-constraints.txt`` -- what the add-on's
*Install Dependencies* resolves inside Blender -- and numpy held at the version range that
Blender ships for that Python (``BLENDER_NUMPY``), wheels only (``uv pip compile --only-binary
:all: --python-version --python-platform``; uv 0.13.9 is pinned in
requirements-dev.txt). Nothing is installed or downloaded beyond package metadata.

Prints a table (a row per package that has no wheel, a column per Python and platform) and exits
0 when every cell resolves, 1 naming each package and platform with no wheel (or another
resolution failure), 2 on a usage error, 3 when the package index cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "bridge" / "engine-requirements.txt"
CONSTRAINTS = REPO / "bridge" / "engine-constraints.txt"
PYTHONS = ("3.11", "3.13")
#: name -> (uv target triple, what the table calls it, extra environment). The macOS deployment
#: target is the oldest macOS torch 2.13's arm64 wheels support.
PLATFORMS = {
    "linux": ("x86_64-manylinux_2_28", "Linux x86_64", {}),
    "macos": ("aarch64-apple-darwin", "macOS arm64", {"MACOSX_DEPLOYMENT_TARGET": "14.0"}),
    "windows": ("x86_64-pc-windows-msvc", "Windows x86_64", {}),
}
#: The numpy each Python's Blenders ship (docs/blender.md): 4.2 to 5.0 ship numpy 1.26 on
#: Python 3.11; 5.1 and newer numpy 2 on Python 3.13. Inside Blender the installer pins the exact
#: running version instead.
BLENDER_NUMPY = {"3.11": "numpy>=1.26,<2", "3.13": "numpy>=2,<3"}

_NO_WHEEL = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:==|>=|<=|~=|!=|<|>)[^\s,]* (?:has|have) no (?:[\w-]+ )*wheels"
    r"|(?:all versions|there is no version|there are no versions) of ([A-Za-z0-9][A-Za-z0-9._-]*)"
)
_NO_WHEEL_HINT = re.compile(r"Wheels are required for `([^`]+)`")
_BECAUSE = re.compile(r"Because (?:there is no version of |there are no versions of |only |all versions of )?`?([A-Za-z0-9][A-Za-z0-9._-]*)")
_OFFLINE = ("Failed to fetch", "Request failed", "Connection refused", "error sending request", "dns error", "Could not connect", "failed to lookup address")


@dataclass(frozen=True)
class Cell:
    python: str
    platform: str
    ok: bool
    packages: tuple[str, ...]  # resolved count when ok; the packages at fault when not
    message: str = ""
    offline: bool = False
    usage: bool = False  # uv refused the command line itself


def find_uv() -> str | None:
    """The uv executable: the pinned ``uv`` package's, else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except Exception:  # noqa: BLE001  (not installed in this Python)
        return shutil.which("uv")


def culprits(stderr: str) -> tuple[str, ...]:
    """The packages uv's failure message blames (a package with no wheel first)."""
    found = [m.group(1) or m.group(2) for m in _NO_WHEEL.finditer(stderr)]
    found += [m.group(1) for m in _NO_WHEEL_HINT.finditer(stderr)]
    if not found:
        found = [m.group(1) for m in _BECAUSE.finditer(stderr)]
    names = []
    for name in found:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key not in names and key not in ("you", "your"):
            names.append(key)
    return tuple(names) or ("?",)


def check_cell(uv: str, python: str, platform: str, numpy: str, requirements: Path, constraints: Path) -> Cell:
    """Resolve the requirements for one Python and platform with wheels only."""
    triple, _, extra_env = PLATFORMS[platform]
    with tempfile.TemporaryDirectory(prefix="viewforge-wheels-") as tmp:
        cons = Path(tmp) / "constraints.txt"
        cons.write_text(constraints.read_text(encoding="utf-8") + f"\n{numpy}\n", encoding="utf-8")
        out = Path(tmp) / "resolved.txt"
        cmd = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--no-python-downloads",
               "--python-version", python, "--python-platform", triple, "--only-binary", ":all:",
               "-c", str(cons), str(requirements), "-o", str(out)]  # fmt: skip
        env = {**os.environ, **extra_env}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        err = "\n".join(ln for ln in proc.stderr.splitlines() if "is not available" not in ln)  # the host's Python
        if proc.returncode == 0:
            pins = [ln.split("==")[0] for ln in out.read_text(encoding="utf-8").splitlines() if "==" in ln]
            return Cell(python, platform, True, tuple(pins))
    offline = any(s in err for s in _OFFLINE)
    if proc.returncode == 2 and not offline:
        return Cell(python, platform, False, (), " ".join(err.split())[:600], usage=True)
    first = next((ln.strip() for ln in err.splitlines() if ln.strip().startswith(("Because", "error:"))), err.strip()[:300])
    return Cell(python, platform, False, () if offline else culprits(err), " ".join(err.split())[:600] or first, offline)


def table(cells: list[Cell]) -> str:
    cols = [f"py{c.python} {PLATFORMS[c.platform][1]}" for c in cells]
    bad = sorted({p for c in cells if not c.ok for p in c.packages})
    rows = [["resolved packages", *[str(len(c.packages)) if c.ok else "-" for c in cells]]]
    for pkg in bad:
        rows.append([pkg, *["ok" if c.ok or pkg not in c.packages else "NO WHEEL" for c in cells]])
    head = ["package", *cols]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths]), *[fmt.format(*r) for r in rows]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that the engine dependencies have wheels (module docstring).")
    parser.add_argument("--python", nargs="+", default=list(PYTHONS), choices=PYTHONS, help="Python versions")
    parser.add_argument("--platform", nargs="+", default=list(PLATFORMS), choices=list(PLATFORMS), help="platforms")
    parser.add_argument("--numpy", action="append", default=[], metavar="PY=SPEC",
                        help="the numpy Blender ships for Python PY (e.g. 3.13=2.3.5, or 3.11='>=1.26,<2')")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    parser.add_argument("--constraints", type=Path, default=CONSTRAINTS)
    args = parser.parse_args(argv)
    numpy = dict(BLENDER_NUMPY)
    for item in args.numpy:
        py, _, spec = item.partition("=")
        if py not in PYTHONS or not spec:
            print(f"check_wheels: error: --numpy {item!r} is not PY=SPEC. Fix: write e.g. --numpy 3.13=2.3.5.", file=sys.stderr)
            return 2
        numpy[py] = "numpy" + (spec if spec[0] in "<>=!~" else f"=={spec}")
    for path in (args.requirements, args.constraints):
        if not path.is_file():
            print(f"check_wheels: error: {path} does not exist. Fix: run scripts/build_extension.py --sync-pins.", file=sys.stderr)
            return 2
    uv = find_uv()
    if uv is None:
        print("check_wheels: error: uv is not installed. Fix: run scripts/setup.sh (requirements-dev.txt pins uv).", file=sys.stderr)
        return 2
    grid = [(py, plat) for py in args.python for plat in args.platform]
    with ThreadPoolExecutor(max_workers=len(grid)) as pool:
        cells = list(pool.map(lambda g: check_cell(uv, g[0], g[1], numpy[g[0]], args.requirements, args.constraints), grid))
    print(f"Wheels only (--only-binary :all:) for {args.requirements.relative_to(REPO) if args.requirements.is_relative_to(REPO) else args.requirements}"
          f" with numpy {', '.join(f'py{p}: {numpy[p][5:]}' for p in args.python)}")  # fmt: skip
    print(table(cells))
    if any(c.usage for c in cells) and not any(c.offline for c in cells):
        msg = next(c.message for c in cells if c.usage)
        print(f"check_wheels: error: uv refused the command ({msg[:300]}). Fix: install the pinned uv (scripts/setup.sh).", file=sys.stderr)
        return 2
    if any(c.offline for c in cells):
        msg = next(c.message for c in cells if c.offline)
        print(f"check_wheels: error: the package index cannot be reached ({msg[:200]}). Fix: check the network.", file=sys.stderr)
        return 3
    failed = [c for c in cells if not c.ok]
    for c in failed:
        where = f"Python {c.python} on {PLATFORMS[c.platform][1]}"
        print(f"check_wheels: no wheel: {', '.join(c.packages)} for {where} ({c.message[:400]})", file=sys.stderr)
    print(f"{len(cells) - len(failed)}/{len(cells)} resolved")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
