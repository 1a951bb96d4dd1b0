"""The Viewforge sidebar panel (3D viewport > Sidebar > Viewforge), the status-bar progress and the
File menu entries. Drawing only: the operators do the work."""

from __future__ import annotations

import bpy

from ..operators.cameras import VIEWFORGE_OT_cameras_from_transforms, VIEWFORGE_OT_export_transforms
from ..operators.jobs import (
    VIEWFORGE_OT_cancel,
    VIEWFORGE_OT_generate,
    VIEWFORGE_OT_reconstruct,
)


def _count_cameras(scene, settings) -> tuple[int, int]:
    """(cameras, cameras with a background photo) the job would look at (drawing aid only)."""
    n = with_photo = 0
    for obj in scene.objects:
        if obj.type != "CAMERA" or (settings.selected_only and not obj.select_get()):
            continue
        n += 1
        bg = obj.data.background_images
        with_photo += bool(len(bg) and bg[0].image is not None)
    return n, with_photo


def draw_job(layout, context) -> bool:
    """Progress and Cancel of the running job, or the last job's outcome; True while one runs."""
    from ..bridge import jobs

    s = jobs.status()
    if s is not None:
        box = layout.box()
        text = "Cancelling..." if s["cancelling"] else f"{s['label'].capitalize()}: {s['stage']} {100 * s['fraction']:.0f}%"
        box.progress(factor=s["fraction"], type="BAR", text=text)
        if s["message"] and not s["cancelling"]:
            box.label(text=s["message"])
        box.operator(VIEWFORGE_OT_cancel.bl_idname, text="Cancel (Esc)", icon="CANCEL")
        return True
    last = jobs.LAST
    if last is not None:
        icon = {"done": "CHECKMARK", "cancelled": "CANCEL"}.get(last.state, "ERROR")
        col = layout.column(align=True)
        for i, line in enumerate(last.message.split(". Fix: ", 1)):
            col.label(text=line if i == 0 else f"Fix: {line}", icon=icon if i == 0 else "BLANK1")
    return False


def _draw_missing(layout, kind: str) -> None:
    from ..bridge import deps, engine_python
    from ..properties import get_preferences

    if engine_python.configured(get_preferences()):
        return  # jobs run in the engine Python (checked when they start)
    names = deps.missing(kind)
    if names:
        col = layout.column(align=True)
        col.label(text=f"Missing: {', '.join(names[:3])}{'...' if len(names) > 3 else ''}", icon="ERROR")
        col.label(text="Install them in Preferences > Add-ons > Viewforge", icon="BLANK1")


def draw_model_status(layout, settings, context) -> None:
    """The generator's weights: in the cache (and their licence), or not yet: licence, download
    size and whether a download is allowed (Blender's online access, the Offline preference).
    Looks at the file system only."""
    from ..bridge.weights import weights_status
    from ..properties import get_preferences

    prefs = get_preferences(context)
    st = weights_status(settings.model, prefs.model_cache)
    col = layout.column(align=True)
    if st.error:
        col.label(text=st.error[0].upper() + st.error[1:], icon="ERROR")
        return
    info = st.info
    if st.cached:
        col.label(text=f"{info.name}: weights ready", icon="CHECKMARK")
        col.label(text=f"Licence: {info.licence}", icon="BLANK1")
        return
    col.label(text=f"{info.name}: weights not downloaded yet", icon="IMPORT")
    col.label(text=f"Licence: {info.licence}", icon="BLANK1")
    if st.download_gb is not None:
        col.label(text=f"Download: about {st.download_gb:.1f} GB", icon="BLANK1")
    if prefs.offline:
        col.label(text="Offline is set in the Viewforge preferences: no download", icon="ERROR")
    elif not bpy.app.online_access:
        col.label(text="Online access is off (Preferences > System > Network): no download", icon="ERROR")
    else:
        col.label(text="Online access is on: downloaded on the first run", icon="INFO")


def draw_speed_note(layout) -> None:
    """What a CPU user should expect (engine/speed.py), wrapped over two lines."""
    from ..engine.speed import CPU_MINUTES

    col = layout.column(align=True)
    col.label(text=f"CPU: about {CPU_MINUTES} min per object at full size", icon="TIME")
    col.label(text="Use an NVIDIA GPU or Apple silicon (Device)", icon="BLANK1")


class VIEWFORGE_PT_main(bpy.types.Panel):
    bl_label = "Viewforge"
    bl_idname = "VIEWFORGE_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Viewforge"

    def draw(self, context):
        layout = self.layout
        settings = getattr(context.scene, "viewforge", None)
        if settings is None:
            return
        layout.prop(settings, "mode", expand=True)

        if settings.mode == "GENERATE":
            box = layout.box()
            box.label(text="Image", icon="IMAGE_DATA")
            box.prop(settings, "image_source", expand=True)
            box.prop(settings, "image_path" if settings.image_source == "FILE" else "image")
            box = layout.box()
            box.label(text="Model", icon="OUTLINER_OB_LIGHTPROBE")
            box.prop(settings, "model")
            draw_model_status(box, settings, context)
            box.prop(settings, "steps")
            box.prop(settings, "size")
            draw_speed_note(box)
        else:
            box = layout.box()
            box.label(text="Cameras", icon="CAMERA_DATA")
            box.prop(settings, "selected_only")
            box.prop(settings, "photo_source")
            if settings.photo_source in ("FOLDER", "PHOTOS"):
                box.prop(settings, "photo_folder")
            else:
                n, with_photo = _count_cameras(context.scene, settings)
                least = 1 if settings.complete != "OFF" else 2
                box.label(text=f"{with_photo} of {n} cameras have a photo", icon="INFO" if with_photo >= least else "ERROR")
            if settings.photo_source != "PHOTOS":
                box.prop(settings, "refine_cameras")
                row = box.row()
                row.enabled = settings.refine_cameras
                row.prop(settings, "update_cameras")
            box = layout.box()
            box.label(text="Completion", icon="OUTLINER_OB_LIGHTPROBE")
            box.prop(settings, "complete")
            if settings.complete != "OFF":
                box.prop(settings, "model")
                draw_model_status(box, settings, context)

        box = layout.box()
        box.label(text="Options", icon="PREFERENCES")
        box.prop(settings, "quality", expand=True)
        box.prop(settings, "device")
        box.prop(settings, "seed")
        box.prop(settings, "output_folder")
        box.prop(settings, "output_name")
        box.prop(settings, "keep_output")

        running = draw_job(layout, context)
        if not running:
            op_cls = VIEWFORGE_OT_generate if settings.mode == "GENERATE" else VIEWFORGE_OT_reconstruct
            row = layout.row()
            row.scale_y = 1.5
            row.operator(op_cls.bl_idname, icon="PLAY")
            _draw_missing(layout, "generate" if settings.mode == "GENERATE" else "reconstruct")


class VIEWFORGE_PT_advanced(bpy.types.Panel):
    bl_label = "Advanced"
    bl_idname = "VIEWFORGE_PT_advanced"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Viewforge"
    bl_parent_id = "VIEWFORGE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        settings = getattr(context.scene, "viewforge", None)
        if settings is None:
            return
        names = ("resolution", "iterations", "faces", "texture_size")
        if settings.mode == "GENERATE":  # the views are the generator's: no fit resolution
            names = names[1:]
        for name in names:
            self.layout.prop(settings, name)


class VIEWFORGE_PT_cameras_io(bpy.types.Panel):
    bl_label = "Cameras and Photos"
    bl_idname = "VIEWFORGE_PT_cameras_io"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Viewforge"
    bl_parent_id = "VIEWFORGE_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = getattr(context.scene, "viewforge", None)
        layout.operator(VIEWFORGE_OT_cameras_from_transforms.bl_idname, text="Import transforms.json", icon="IMPORT")
        op = layout.operator(VIEWFORGE_OT_export_transforms.bl_idname, text="Export transforms.json", icon="EXPORT")
        if settings is not None:
            op.selected_only = settings.selected_only


def _draw_status(self, context) -> None:
    """Status bar: the running job's progress and a Cancel button."""
    from ..bridge import jobs

    s = jobs.status()
    if s is None:
        return
    row = self.layout.row(align=True)
    row.progress(factor=s["fraction"], type="RING", text=jobs.status_line())
    row.operator(VIEWFORGE_OT_cancel.bl_idname, text="", icon="CANCEL")


def _menu_import(self, context):
    self.layout.operator(VIEWFORGE_OT_cameras_from_transforms.bl_idname, text="Cameras from transforms.json (Viewforge)")


def _menu_export(self, context):
    self.layout.operator(VIEWFORGE_OT_export_transforms.bl_idname, text="Cameras to transforms.json (Viewforge)")


def register_menus() -> None:
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.types.TOPBAR_MT_file_export.append(_menu_export)
    bpy.types.STATUSBAR_HT_header.append(_draw_status)


def unregister_menus() -> None:
    bpy.types.STATUSBAR_HT_header.remove(_draw_status)
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    bpy.types.TOPBAR_MT_file_export.remove(_menu_export)


CLASSES = [VIEWFORGE_PT_main, VIEWFORGE_PT_advanced, VIEWFORGE_PT_cameras_io]
