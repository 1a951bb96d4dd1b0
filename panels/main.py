"""The Viewforge sidebar panel (3D viewport > Sidebar > Viewforge) and File menu entries."""

from __future__ import annotations

import bpy

from ..operators.cameras import VIEWFORGE_OT_cameras_from_transforms, VIEWFORGE_OT_export_transforms


class VIEWFORGE_PT_main(bpy.types.Panel):
    bl_label = "Viewforge"
    bl_idname = "VIEWFORGE_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Viewforge"

    def draw(self, context):
        layout = self.layout
        settings = getattr(context.scene, "viewforge", None)
        box = layout.box()
        box.label(text="Cameras", icon="CAMERA_DATA")
        box.operator(VIEWFORGE_OT_cameras_from_transforms.bl_idname, text="Import transforms.json", icon="IMPORT")
        if settings is not None:
            box.prop(settings, "selected_only")
        op = box.operator(VIEWFORGE_OT_export_transforms.bl_idname, text="Export transforms.json", icon="EXPORT")
        if settings is not None:
            op.selected_only = settings.selected_only


def _menu_import(self, context):
    self.layout.operator(VIEWFORGE_OT_cameras_from_transforms.bl_idname, text="Cameras from transforms.json (Viewforge)")


def _menu_export(self, context):
    self.layout.operator(VIEWFORGE_OT_export_transforms.bl_idname, text="Cameras to transforms.json (Viewforge)")


def register_menus() -> None:
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.types.TOPBAR_MT_file_export.append(_menu_export)


def unregister_menus() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    bpy.types.TOPBAR_MT_file_export.remove(_menu_export)


CLASSES = [VIEWFORGE_PT_main]
