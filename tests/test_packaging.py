"""The package metadata matches the tree, and the engine never needs bpy."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {"tests", "bench", "scripts", "docs", "wheels", "dist", "build", ".venv", ".git", ".ci"}


def test_pyproject_lists_every_package():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    found = {"viewforge"}
    for init in REPO.rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts and (rel.parts[0] in SKIP or rel.parts[0].startswith(".")):
            continue
        if rel.parts:
            found.add("viewforge." + ".".join(rel.parts))
    assert listed == found


def test_engine_source_has_no_bpy_import():
    bad = []
    for f in (REPO / "engine").rglob("*.py"):
        for line in f.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import bpy", "from bpy", "import mathutils", "from mathutils", "import bpy_extras", "from bpy_extras")):
                bad.append(f"{f.relative_to(REPO)}: {s}")
    assert not bad
