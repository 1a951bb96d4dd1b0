"""Job operators: reconstruct, generate, cancel, install dependencies.

Thin: they read ``scene.viewforge`` and the preferences, call :mod:`viewforge.bridge` to check the
inputs and start the job in a worker process, and report. The work never runs in ``execute``:

* interactively (``invoke``), the job runs in the background while Blender stays usable; a modal
  handler listens for Esc (cancel) and reports the outcome; the result is imported by a timer
  (:mod:`viewforge.bridge.jobs`) as one undo step;
* from a script with a UI (``execute``), the same minus the modal handler;
* in background mode (``blender -b``, the bpy module), ``execute`` waits for the job, so the
  operator returns with the mesh in the scene (or with an error report).

Errors are one-line reports with their fix (``self.report({'ERROR'}, ...)``, a ``RuntimeError``
in Python) and ``{'CANCELLED'}``; nothing in the scene changes then.
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from ..engine.errors import ViewforgeError
from ..properties import get_preferences


def _report_outcome(op, outcome) -> set[str]:
    if outcome.state == "done":
        op.report({"INFO"}, outcome.message)
        return {"FINISHED"}
    op.report({"WARNING"} if outcome.state == "cancelled" else {"ERROR"}, outcome.message)
    return {"CANCELLED"}


class _JobOperator:
    """Shared start / wait / modal logic of the operators that run a job."""

    _timer = None

    def start_job(self, context) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def execute(self, context):
        from ..bridge import jobs

        try:
            warnings = self.start_job(context) or []
        except ViewforgeError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        for w in warnings:
            self.report({"WARNING"}, w)
        if bpy.app.background:
            return _report_outcome(self, jobs.run_blocking())
        self.report({"INFO"}, f"Viewforge {jobs.ACTIVE.label} started (Esc or Cancel to stop)")
        return {"FINISHED"}

    def invoke(self, context, event):
        from ..bridge import jobs

        result = self.execute(context)
        if bpy.app.background or "FINISHED" not in result or not jobs.is_running() or context.window is None:
            return result
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        self._job = jobs.ACTIVE
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        from ..bridge import jobs

        if jobs.ACTIVE is not self._job:  # ended (imported by the timer) or replaced
            context.window_manager.event_timer_remove(self._timer)
            outcome = jobs.LAST
            if outcome is None:
                return {"CANCELLED"}
            return _report_outcome(self, outcome)
        if event.type == "ESC" and event.value == "PRESS":
            jobs.cancel()
            return {"RUNNING_MODAL"}
        return {"PASS_THROUGH"}


def _idle_poll(cls) -> bool:
    """No job is running (else the operator is disabled with the reason)."""
    from ..bridge import jobs

    try:
        jobs.check_idle()
    except ViewforgeError as e:
        cls.poll_message_set(e.one_line())
        return False
    return True


def _deps_poll(cls, kind: str) -> bool:
    from ..bridge import deps, engine_python

    if not _idle_poll(cls):
        return False
    if engine_python.configured(get_preferences()):
        return True  # the job runs in the engine Python: it is checked when the job starts
    names = deps.missing(kind)
    if names:
        cls.poll_message_set(deps.missing_message(names).one_line())
        return False
    return True


class VIEWFORGE_OT_reconstruct(_JobOperator, bpy.types.Operator):
    """Reconstruct a textured mesh from the scene's cameras and their photos (runs in the background; Esc cancels)"""

    bl_idname = "viewforge.reconstruct"
    bl_label = "Reconstruct from Cameras"
    bl_options = {"REGISTER"}  # the import pushes its own undo step when the job ends

    @classmethod
    def poll(cls, context):
        return _deps_poll(cls, "reconstruct")

    def start_job(self, context):
        from ..bridge import engine_python
        from ..bridge.prepared import worker_env
        from ..bridge.reconstruct import ReconstructRequest, start_reconstruct

        s = context.scene.viewforge
        prefs = get_preferences(context)
        device = prefs.device if s.device == "DEFAULT" else s.device
        overrides = {k: int(getattr(s, k)) for k in ("resolution", "iterations", "faces", "texture_size") if getattr(s, k) > 0}
        req = ReconstructRequest(
            selected_only=s.selected_only, photo_source=s.photo_source, photo_folder=s.photo_folder,
            quality=s.quality.lower(), device=device.lower(), seed=s.seed, output_folder=s.output_folder,
            output_name=s.output_name, keep_output=s.keep_output, overrides=overrides,
            complete=s.complete.lower(), model=s.model, model_cache=prefs.model_cache,
            allow_download=bool(bpy.app.online_access) and not prefs.offline,
            refine_cameras=s.refine_cameras, update_cameras=s.update_cameras,
            engine_python=engine_python.configured(prefs),
        )  # fmt: skip
        prepared = start_reconstruct(
            context.scene, req, view_layer=context.view_layer, env=worker_env(prefs.model_cache, prefs.offline),
            timer=not bpy.app.background,
        )  # fmt: skip
        return prepared.warnings


class VIEWFORGE_OT_generate(_JobOperator, bpy.types.Operator):
    """Generate a textured mesh from one image at the 3D cursor (runs in the background; Esc cancels)"""

    bl_idname = "viewforge.generate"
    bl_label = "Generate from Image"
    bl_options = {"REGISTER"}  # the import pushes its own undo step when the job ends

    @classmethod
    def poll(cls, context):
        return _deps_poll(cls, "generate")

    def start_job(self, context):
        from ..bridge import engine_python
        from ..bridge.generate import start_generate

        s = context.scene.viewforge
        prefs = get_preferences(context)
        device = prefs.device if s.device == "DEFAULT" else s.device
        names = {"iterations": "fit_iterations", "faces": "faces", "texture_size": "texture_size"}
        overrides = {key: int(getattr(s, name)) for name, key in names.items() if getattr(s, name) > 0}
        if "fit_iterations" in overrides:
            from ..engine.presets import warm_iterations

            overrides["warm_iterations"] = warm_iterations(overrides["fit_iterations"])
        return start_generate(
            context, s, device.lower(), model_cache=prefs.model_cache, offline=prefs.offline,
            allow_download=bool(bpy.app.online_access), overrides=overrides, timer=not bpy.app.background,
            engine_python=engine_python.configured(prefs),
        )  # fmt: skip


class VIEWFORGE_OT_cancel(bpy.types.Operator):
    """Cancel the running Viewforge job (it stops within 2 seconds; the scene is left as it was)"""

    bl_idname = "viewforge.cancel"
    bl_label = "Cancel Viewforge Job"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        from ..bridge import jobs

        if not jobs.is_running():
            cls.poll_message_set("No Viewforge job is running")
            return False
        return True

    def execute(self, context):
        from ..bridge import jobs

        jobs.cancel()
        self.report({"INFO"}, "Cancelling the Viewforge job")
        return {"FINISHED"}


class VIEWFORGE_OT_install_dependencies(_JobOperator, bpy.types.Operator):
    """Install the engine dependencies (torch and friends) for this platform into the extension's user folder"""

    bl_idname = "viewforge.install_dependencies"
    bl_label = "Install Dependencies"
    bl_options = {"REGISTER", "INTERNAL"}

    platform: EnumProperty(  # type: ignore[valid-type]
        name="Platform",
        items=[("PREFS", "Preferences", "As set in the preferences"), ("AUTO", "Automatic", ""), ("CUDA", "CUDA", ""),
               ("CPU", "CPU", ""), ("MPS", "Apple Metal", "")],  # fmt: skip
        default="PREFS",
    )
    find_links: StringProperty(  # type: ignore[valid-type]
        name="Local Wheel Folder", description="Install from this folder of wheels (empty: the preferences')", default="", subtype="DIR_PATH"
    )
    requirements: StringProperty(  # type: ignore[valid-type]
        name="Requirements", description="A requirements file to install instead of the engine's (advanced)", default="",
        subtype="FILE_PATH", options={"HIDDEN", "SKIP_SAVE"},
    )  # fmt: skip
    target: StringProperty(  # type: ignore[valid-type]
        name="Target", description="Install here instead of the extension's user folder (advanced)", default="",
        subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"},
    )  # fmt: skip

    @classmethod
    def poll(cls, context):
        return _idle_poll(cls)

    def start_job(self, context):
        from pathlib import Path

        from ..bridge import deps, jobs

        prefs = get_preferences(context)
        platform = prefs.install_platform if self.platform == "PREFS" else self.platform
        platform = deps.detect_platform() if platform == "AUTO" else platform.lower()
        if self.requirements:
            lines = Path(bpy.path.abspath(self.requirements)).read_text(encoding="utf-8").splitlines()
            reqs = tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
        else:
            reqs = tuple(deps.engine_requirements(platform))
        wheels = bpy.path.abspath(self.find_links or prefs.wheel_folder)
        target = Path(bpy.path.abspath(self.target)) if self.target else deps.user_site_packages(create=True)
        constraints = deps.ENGINE_CONSTRAINTS
        opts = deps.InstallOptions(
            target=target, requirements=reqs, find_links=Path(wheels) if wheels else None,
            extra_index_url=prefs.extra_index_url, constraints=constraints if constraints.is_file() else None,
        )  # fmt: skip
        handle = deps.PipInstall(opts)

        def on_success(installed) -> str:
            kept = deps.blender_summary(handle.blender)
            return f"Installed {len(installed)} package(s) for {platform} into {target} (Blender's {kept} kept)"

        jobs.start(handle, "install dependencies", on_success, timer=not bpy.app.background)
        return []


class VIEWFORGE_OT_check_engine_python(bpy.types.Operator):
    """Check the Engine Python of the preferences: it runs, its Python version, torch and CUDA, missing packages"""

    bl_idname = "viewforge.check_engine_python"
    bl_label = "Check Engine Python"
    bl_options = {"REGISTER", "INTERNAL"}

    python: StringProperty(  # type: ignore[valid-type]
        name="Python", description="Check this one instead of the preferences' (empty: the preferences')", default="",
        subtype="FILE_PATH", options={"SKIP_SAVE"},
    )  # fmt: skip

    def execute(self, context):
        from ..bridge import engine_python

        python = bpy.path.abspath(self.python) if self.python else engine_python.configured(get_preferences(context))
        if not python:
            self.report({"ERROR"}, "No engine Python is set. Fix: set Preferences > Add-ons > Viewforge > Engine Python "
                        "to a python executable (venv/bin/python), or leave it empty to use Blender's Python.")  # fmt: skip
            return {"CANCELLED"}
        try:
            info = engine_python.check(python, "reconstruct", fresh=True)
        except ViewforgeError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Engine Python {info.python}: {info.summary()}")
        return {"FINISHED"}


CLASSES = [VIEWFORGE_OT_check_engine_python, VIEWFORGE_OT_reconstruct, VIEWFORGE_OT_generate, VIEWFORGE_OT_cancel, VIEWFORGE_OT_install_dependencies]
