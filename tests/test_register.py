"""Registration leaves nothing behind, and the engine imports without Blender."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from blender_helpers import RecordingLayout

REPO = Path(__file__).resolve().parents[1]


def _menu_funcs(menu):
    return list(getattr(menu.draw, "_draw_funcs", []) or [])


def _viewforge_types(bpy):
    return sorted(n for n in dir(bpy.types) if n.upper().startswith("VIEWFORGE"))


@pytest.mark.blender
def test_register_unregister_twice_leaves_nothing(blender):
    import viewforge
    from viewforge import operators, panels, properties

    bpy = blender
    classes = [*properties.CLASSES, *operators.CLASSES, *panels.CLASSES]
    names = [cls.__name__ for cls in classes if cls.__name__.startswith("VIEWFORGE_")]
    assert "VIEWFORGE_OT_cameras_from_transforms" in names and "VIEWFORGE_PT_main" in names
    assert not any(cls.is_registered for cls in classes)
    n_import = len(_menu_funcs(bpy.types.TOPBAR_MT_file_import))
    n_export = len(_menu_funcs(bpy.types.TOPBAR_MT_file_export))
    def n_status():
        return sum(f.__module__.startswith("viewforge") for f in _menu_funcs(bpy.types.STATUSBAR_HT_header))

    n_load = len(bpy.app.handlers.load_pre)
    for _ in range(2):
        viewforge.register()
        try:
            assert all(cls.is_registered for cls in classes)
            for name in names:
                assert hasattr(bpy.types, name), name
            assert hasattr(bpy.ops.viewforge, "cameras_from_transforms")
            assert hasattr(bpy.ops.viewforge, "export_transforms")
            for op in ("reconstruct", "generate", "cancel", "install_dependencies"):
                assert hasattr(bpy.ops.viewforge, op), op
            assert n_status() == 1
            assert len(bpy.app.handlers.load_pre) == n_load + 1
            assert bpy.context.scene.viewforge.quality == "STANDARD"
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
        assert n_status() == 0
        assert len(bpy.app.handlers.load_pre) == n_load


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


def _draw(panel_cls, context):
    import types

    log = []
    panel_cls.draw(types.SimpleNamespace(layout=RecordingLayout(log)), context)
    return log


@pytest.mark.blender
def test_panels_draw_the_operators_and_settings(blender):
    """Draw the sidebar panels into a recording layout: the operators, the scene settings passed on."""
    import viewforge
    from viewforge.panels.main import VIEWFORGE_PT_advanced, VIEWFORGE_PT_cameras_io, VIEWFORGE_PT_main

    viewforge.register()
    try:
        settings = blender.context.scene.viewforge
        settings.selected_only = True
        io_log = _draw(VIEWFORGE_PT_cameras_io, blender.context)
        main_log = _draw(VIEWFORGE_PT_main, blender.context)
        adv_log = _draw(VIEWFORGE_PT_advanced, blender.context)
        settings.mode = "GENERATE"
        gen_log = _draw(VIEWFORGE_PT_main, blender.context)
    finally:
        viewforge.unregister()
    ops = {entry[1]: entry[2] for entry in io_log if entry[0] == "operator"}
    assert set(ops) == {"viewforge.cameras_from_transforms", "viewforge.export_transforms"}
    assert ops["viewforge.export_transforms"].selected_only is True
    props = {e[1] for e in main_log if e[0] == "prop"}
    assert {"mode", "selected_only", "photo_source", "quality", "device", "seed", "output_folder"} <= props
    assert [e[1] for e in main_log if e[0] == "operator"] == ["viewforge.reconstruct"]
    assert ("label", "0 of 0 cameras have a photo") in main_log
    assert {e[1] for e in adv_log if e[0] == "prop"} == {"resolution", "iterations", "faces", "texture_size"}
    assert [e[1] for e in gen_log if e[0] == "operator"] == ["viewforge.generate"]
    assert {"image_source", "image_path"} <= {e[1] for e in gen_log if e[0] == "prop"}
    assert {"model", "steps", "size"} <= {e[1] for e in gen_log if e[0] == "prop"}
    # the default model's weights are not in the (empty) test cache: licence, size, no online access
    labels = [e[1] for e in gen_log if e[0] == "label"]
    assert "Zero123++ v1.2: weights not downloaded yet" in labels
    assert "Licence: CC-BY-NC-4.0 (non-commercial)" in labels and "Download: about 3.9 GB" in labels
    assert "Online access is off (Preferences > System > Network): no download" in labels
    assert not any("not available" in (t or "").lower() for t in labels)
    from viewforge.engine.speed import CPU_MINUTES  # what a CPU user should expect, and what to use

    assert f"CPU: about {CPU_MINUTES} min per object at full size" in labels
    assert "Use an NVIDIA GPU or Apple silicon (Device)" in labels
    assert not any("CPU: about" in (e[1] or "") for e in main_log if e[0] == "label")


@pytest.mark.blender
def test_preferences_draw_device_cache_and_dependency_status(blender, monkeypatch):
    import viewforge
    from viewforge.bridge import deps
    from viewforge.panels.preferences import draw_preferences
    from viewforge.properties import get_preferences

    real = deps.find_spec
    monkeypatch.setattr(deps, "find_spec", lambda name: None if name == "diffusers" else real(name))
    viewforge.register()
    try:
        prefs = get_preferences(blender.context)  # defaults: the add-on is registered, not enabled
        assert (prefs.device, prefs.offline, prefs.wheel_folder) == ("AUTO", False, "")
        log = []
        draw_preferences(prefs, RecordingLayout(log), blender.context)
    finally:
        viewforge.unregister()
    props = [e[1] for e in log if e[0] == "prop"]
    assert {"device", "model_cache", "offline", "install_platform", "wheel_folder"} <= set(props)
    labels = [e[1] for e in log if e[0] == "label"]
    assert "Reconstruct: all installed" in labels
    assert "Generate: missing diffusers" in labels
    assert any("Online access is off" in (t or "") for t in labels)
    assert [e[1] for e in log if e[0] == "operator"] == ["viewforge.check_engine_python", "viewforge.install_dependencies"]
    assert "engine_python" in props
