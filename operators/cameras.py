"""Camera operators: transforms.json <-> scene cameras with their photos.

Thin: they read the operator's options and the scene, call :mod:`viewforge.bridge.posed` and
report. Errors are one-line reports (``self.report({'ERROR'}, ...)``) and ``{'CANCELLED'}``; the
bridge guarantees the scene is untouched and nothing is written in that case.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..engine.errors import ViewforgeError


class VIEWFORGE_OT_cameras_from_transforms(bpy.types.Operator, ImportHelper):
    """Create one camera per frame of a transforms.json, with its photo as background image"""

    bl_idname = "viewforge.cameras_from_transforms"
    bl_label = "Cameras from transforms.json"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})  # type: ignore[valid-type]
    set_render_resolution: BoolProperty(  # type: ignore[valid-type]
        name="Set Render Resolution",
        description="Set the scene's render resolution and pixel aspect to the photos' (renders then match the photos)",
        default=True,
    )

    def execute(self, context):
        from ..bridge.posed import import_transforms

        try:
            result = import_transforms(
                self.filepath, context.scene, context.collection, set_render=self.set_render_resolution
            )
        except ViewforgeError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        for warning in result.warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Imported {len(result.objects)} cameras into collection '{result.collection.name}'")
        return {"FINISHED"}


class VIEWFORGE_OT_export_transforms(bpy.types.Operator, ExportHelper):
    """Write the scene's cameras to transforms.json, with their photos in an images/ folder next to it"""

    bl_idname = "viewforge.export_transforms"
    bl_label = "Export transforms.json"
    bl_options = {"REGISTER"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})  # type: ignore[valid-type]
    selected_only: BoolProperty(  # type: ignore[valid-type]
        name="Selected Cameras Only",
        description="Export only the selected cameras",
        default=False,
    )
    allow_missing_photos: BoolProperty(  # type: ignore[valid-type]
        name="Cameras Without Photo",
        description="Also export cameras that have no background image (their frames list an image that is not written)",
        default=False,
    )

    def invoke(self, context, event):
        if not self.filepath:
            import os

            blend = context.blend_data.filepath
            self.filepath = os.path.join(os.path.dirname(blend), "transforms.json") if blend else "transforms.json"
        return super().invoke(context, event)

    def execute(self, context):
        from ..bridge.posed import export_transforms

        try:
            result = export_transforms(
                self.filepath,
                context.scene,
                selected_only=self.selected_only,
                allow_missing_photos=self.allow_missing_photos,
                view_layer=context.view_layer,
            )
        except ViewforgeError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        for warning in result.warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Wrote {result.path} with {len(result.image_paths)} photos")
        return {"FINISHED"}


CLASSES = [VIEWFORGE_OT_cameras_from_transforms, VIEWFORGE_OT_export_transforms]
