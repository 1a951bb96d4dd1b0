"""The add-on preferences (Preferences > Add-ons > Viewforge): device, model cache, offline mode,
engine Python, dependency installation. Drawing only: the operators do the work."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..operators.jobs import VIEWFORGE_OT_check_engine_python, VIEWFORGE_OT_install_dependencies
from ..properties import ADDON_ID, DEVICES
from .main import draw_job


class ViewforgePreferences(bpy.types.AddonPreferences):
    """Add-on preferences: device, model cache, offline mode, dependency installation."""

    bl_idname = ADDON_ID

    device: EnumProperty(name="Device", items=DEVICES, default="AUTO")  # type: ignore[valid-type]
    model_cache: StringProperty(  # type: ignore[valid-type]
        name="Model Cache", description="Folder for downloaded model weights (empty: the default cache)", subtype="DIR_PATH", default=""
    )
    offline: BoolProperty(  # type: ignore[valid-type]
        name="Offline", description="Never download model weights; use only what is in the model cache", default=False
    )
    install_platform: EnumProperty(  # type: ignore[valid-type]
        name="Platform",
        items=[
            ("AUTO", "Automatic", "Detect: CUDA with an NVIDIA driver, Apple Metal on Apple silicon, else CPU"),
            ("CUDA", "CUDA", "NVIDIA GPU (adds gsplat)"),
            ("CPU", "CPU", "No GPU"),
            ("MPS", "Apple Metal", "Apple silicon"),
        ],
        default="AUTO",
    )
    wheel_folder: StringProperty(  # type: ignore[valid-type]
        name="Local Wheel Folder",
        description="Install from this folder of .whl files instead of downloading (no network needed)",
        subtype="DIR_PATH",
        default="",
    )
    extra_index_url: StringProperty(  # type: ignore[valid-type]
        name="Extra Index URL", description="Another package index to search (e.g. the PyTorch CUDA wheels on Windows)", default=""
    )
    engine_python: StringProperty(  # type: ignore[valid-type]
        name="Engine Python",
        description="Run jobs in this Python (a venv or conda environment's bin/python with the engine's packages, "
        "e.g. CUDA torch) instead of Blender's; nothing needs installing into Blender then. "
        "Empty: $VIEWFORGE_ENGINE_PYTHON, else Blender's Python",
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context):
        draw_preferences(self, self.layout, context)


def draw_preferences(prefs, layout, context) -> None:
    """The add-on preferences: device, model cache, offline mode, dependencies."""
    from ..bridge import deps, engine_python

    layout.prop(prefs, "device")
    layout.prop(prefs, "model_cache")
    layout.prop(prefs, "offline")

    box = layout.box()
    box.label(text="Engine Python", icon="CONSOLE")
    box.prop(prefs, "engine_python", text="")
    python = engine_python.configured(prefs)
    info = engine_python.last_check(python)
    if not python:
        box.label(text="Empty: jobs run in Blender's Python with the dependencies below", icon="INFO")
    elif info is not None:
        box.label(text=info.summary(), icon="CHECKMARK")
    elif not prefs.engine_python:
        box.label(text=f"From ${engine_python.ENV_VAR}: {python}", icon="INFO")
    box.operator(VIEWFORGE_OT_check_engine_python.bl_idname, icon="CHECKMARK")

    box = layout.box()
    box.label(text="Engine Dependencies", icon="PACKAGE")
    for kind, title in (("reconstruct", "Reconstruct"), ("generate", "Generate")):
        names = deps.missing(kind)
        box.label(
            text=f"{title}: " + ("all installed" if not names else f"missing {', '.join(names)}"),
            icon="CHECKMARK" if not names else "ERROR",
        )
    box.prop(prefs, "install_platform")
    box.prop(prefs, "wheel_folder")
    box.prop(prefs, "extra_index_url")
    if not prefs.wheel_folder and not deps.online_access():
        box.label(text="Online access is off (Preferences > System > Network): set a local wheel folder", icon="INFO")
    if not draw_job(box, context):
        box.operator(VIEWFORGE_OT_install_dependencies.bl_idname, icon="IMPORT")


CLASSES = [ViewforgePreferences]
