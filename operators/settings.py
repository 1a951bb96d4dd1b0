"""Scene-level Viewforge settings (``scene.viewforge``), shown in the sidebar panel."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, StringProperty


class ViewforgeSettings(bpy.types.PropertyGroup):
    """Per-scene options of the Viewforge panel."""

    selected_only: BoolProperty(  # type: ignore[valid-type]
        name="Selected Cameras Only",
        description="Use only the selected cameras (export, reconstruction) instead of all cameras in the scene",
        default=False,
    )
    output_folder: StringProperty(  # type: ignore[valid-type]
        name="Output Folder",
        description="Folder for job outputs (meshes, textures); empty: next to the .blend file",
        subtype="DIR_PATH",
        default="",
    )


def register_properties() -> None:
    bpy.types.Scene.viewforge = bpy.props.PointerProperty(type=ViewforgeSettings)


def unregister_properties() -> None:
    if hasattr(bpy.types.Scene, "viewforge"):
        del bpy.types.Scene.viewforge


CLASSES = [ViewforgeSettings]
