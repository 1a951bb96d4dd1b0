"""Registration leaves nothing behind, and the engine imports without Blender."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _menu_funcs(menu):
    return list(getattr(menu.draw, "_draw_funcs", []) or [])


def _viewforge_types(bpy):
    return sorted(n for n in dir(bpy.types) if n.upper().startswith("VIEWFORGE"))


@pytest.mark.blender
def test_register_unregister_twice_leaves_nothing(blender):
    import viewforge
    from viewforge import operators, panels

    bpy = blender
    classes = [*operators.CLASSES, *panels.CLASSES]
    names = [cls.__name__ for cls in classes if cls.__name__.startswith("VIEWFORGE_")]
    assert "VIEWFORGE_OT_cameras_from_transforms" in names and "VIEWFORGE_PT_main" in names
    assert not any(cls.is_registered for cls in classes)
    n_import = len(_menu_funcs(bpy.types.TOPBAR_MT_file_import))
    n_export = len(_menu_funcs(bpy.types.TOPBAR_MT_file_export))
    for _ in range(2):
        viewforge.register()
        try:
            assert all(cls.is_registered for cls in classes)
            for name in names:
                assert hasattr(bpy.types, name), name
            assert hasattr(bpy.ops.viewforge, "cameras_from_transforms")
            assert hasattr(bpy.ops.viewforge, "export_transforms")
            assert bpy.context.scene.viewforge.selected_only is False
            assert len(_menu_funcs(bpy.types.TOPBAR_MT_file_import)) == n_import + 1
            assert len(_menu_funcs(bpy.types.TOPBAR_MT_file_export)) == n_export + 1
            assert bpy.types.VIEWFORGE_PT_main.bl_category == "Viewforge"
        finally:
            viewforge.unregister()
        assert not any(cls.is_registered for cls in classes)
        for name in names:
            assert not hasattr(bpy.types, name), name
        assert _viewforge_types(bpy) == []
        assert "viewforge" not in bpy.types.Scene.bl_rna.properties
        assert not hasattr(bpy.types.Scene, "viewforge")
        assert len(_menu_funcs(bpy.types.TOPBAR_MT_file_import)) == n_import
        assert len(_menu_funcs(bpy.types.TOPBAR_MT_file_export)) == n_export


def _engine_modules() -> list[str]:
    mods = []
    for path in sorted((REPO / "engine").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append(".".join(["viewforge", *parts]))
    return mods


def test_engine_imports_without_bpy():
    """``import viewforge`` and every engine module work when bpy, mathutils, bpy_extras are absent."""
    mods = _engine_modules()
    assert "viewforge.engine" in mods and "viewforge.engine.cameras" in mods
    code = "\n".join(
        [
            "import sys, importlib",
            "for name in ('bpy', 'mathutils', 'bpy_extras', 'bmesh'):",
            "    sys.modules[name] = None",
            "import viewforge, viewforge.engine",
            f"for m in {mods!r}:",
            "    importlib.import_module(m)",
            "print('ok', len(sys.modules))",
        ]
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")


def test_bpy_none_really_blocks_bpy():
    """The check above can fail: with bpy blocked, importing the UI modules raises ImportError."""
    code = "import sys; sys.modules['bpy'] = None\nimport viewforge.operators"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "import of bpy halted" in res.stderr


@pytest.mark.blender
def test_panel_draws_the_camera_operators(blender):
    """Draw the sidebar panel into a recording layout: both operators, the scene setting passed on."""
    import types

    import viewforge
    from viewforge.panels.main import VIEWFORGE_PT_main

    class Layout:
        def __init__(self, log):
            self.log = log

        def box(self):
            return self

        def label(self, **kw):
            self.log.append(("label", kw.get("text")))

        def prop(self, data, name, **kw):
            self.log.append(("prop", name))

        def operator(self, idname, **kw):
            op = types.SimpleNamespace()
            self.log.append(("operator", idname, op))
            return op

    viewforge.register()
    try:
        blender.context.scene.viewforge.selected_only = True
        log = []
        VIEWFORGE_PT_main.draw(types.SimpleNamespace(layout=Layout(log)), blender.context)
    finally:
        viewforge.unregister()
    ops = {entry[1]: entry[2] for entry in log if entry[0] == "operator"}
    assert set(ops) == {"viewforge.cameras_from_transforms", "viewforge.export_transforms"}
    assert ops["viewforge.export_transforms"].selected_only is True
    assert ("prop", "selected_only") in log
