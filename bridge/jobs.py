"""Running jobs from Blender: one at a time, polled on the main thread, results imported there.

A *handle* is anything with the worker interface of :class:`viewforge.engine.jobs.JobProcess`
(``poll()``, ``cancel()``, ``kill()``, ``state``, ``stage``, ``fraction``, ``message``,
``error``, ``result``): a job in a spawned worker process, or a dependency install
(:class:`.deps.PipInstall`). :func:`start` makes it *the* active job and registers a
``bpy.app.timers`` function (:func:`tick`) that polls it every :data:`POLL_INTERVAL_S` seconds,
redraws the panel and the status bar, and when the job ends calls its ``on_success(result)`` on
the main thread (the only place that touches ``bpy.data``) and its ``cleanup()`` in every case.
Nothing in the scene changes before ``on_success``; a cancelled, failed or killed job therefore
leaves the scene exactly as it was.

In background mode (``bpy.app.background``: ``blender -b``, the bpy module) there is no event
loop to run timers: :func:`run_blocking` polls until the job ends and returns its outcome, and the
operators call it so that ``bpy.ops.viewforge.reconstruct()`` returns with the mesh in the scene.

:data:`LAST` keeps the outcome of the last job (state and one-line message) for the panel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine.errors import InputError, ViewforgeError

log = logging.getLogger(__name__)

#: Seconds between two polls of the running job (UI refresh; cancel is noticed within this).
POLL_INTERVAL_S = 0.1


@dataclass
class ActiveJob:
    """The running job: its handle, a label for the UI, and what to do when it ends."""

    handle: Any
    label: str
    on_success: Callable[[Any], str] | None = None
    cleanup: Callable[[], None] | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """How a job ended: state ("done", "failed", "cancelled"), a one-line message, the error."""

    state: str
    message: str
    label: str = ""
    error: ViewforgeError | None = None
    value: Any = None


ACTIVE: ActiveJob | None = None
LAST: Outcome | None = None


def is_running() -> bool:
    return ACTIVE is not None


def check_idle() -> None:
    """Raise :class:`InputError` when a job is running (one job at a time)."""
    if ACTIVE is not None:
        raise InputError(
            f"another Viewforge job ({ACTIVE.label}) is running", "wait for it to finish or cancel it (Esc or the Cancel button)"
        )


def status() -> dict[str, Any] | None:
    """The running job's label, stage, fraction (0..1), message and whether it is cancelling."""
    if ACTIVE is None:
        return None
    h = ACTIVE.handle
    return {
        "label": ACTIVE.label,
        "stage": h.stage,
        "fraction": float(h.fraction),
        "message": h.message,
        "cancelling": bool(h.cancelling),
        "seconds": time.monotonic() - ACTIVE.started,
    }


def status_line() -> str:
    s = status()
    if s is None:
        return ""
    what = "cancelling" if s["cancelling"] else f"{s['stage']} {100 * s['fraction']:.0f}%"
    msg = f" ({s['message']})" if s["message"] and not s["cancelling"] else ""
    return f"Viewforge {s['label']}: {what}{msg}"


def _redraw() -> None:
    try:
        import bpy

        wm = bpy.context.window_manager
        for window in wm.windows if wm is not None else ():
            for area in window.screen.areas:
                if area.type in {"VIEW_3D", "PROPERTIES", "STATUSBAR", "PREFERENCES"}:
                    area.tag_redraw()
    except Exception:  # noqa: BLE001  (no UI: background mode)
        pass


def start(handle: Any, label: str, on_success: Callable[[Any], str] | None = None,
          cleanup: Callable[[], None] | None = None, timer: bool = True) -> ActiveJob:  # fmt: skip
    """Make ``handle`` the active job (one at a time) and, with ``timer``, poll it from a Blender
    timer. Raises :class:`InputError` (after killing ``handle``) when another job runs."""
    global ACTIVE
    try:
        check_idle()
    except InputError:
        handle.cancel()
        handle.kill()
        if cleanup is not None:
            cleanup()
        raise
    ACTIVE = ActiveJob(handle, label, on_success, cleanup)
    if timer:
        import bpy

        bpy.app.timers.register(tick, first_interval=POLL_INTERVAL_S)
    _redraw()
    return ACTIVE


def cancel() -> bool:
    """Ask the running job to stop (it is killed if it has not stopped within 2 s)."""
    if ACTIVE is None:
        return False
    ACTIVE.handle.cancel()
    _redraw()
    return True


def _finish(job: ActiveJob) -> Outcome:
    global ACTIVE, LAST
    h = job.handle
    try:
        if h.state == "done":
            try:
                message = job.on_success(h.result) if job.on_success is not None else "done"
                outcome = Outcome("done", message, job.label, value=h.result)
            except ViewforgeError as e:
                outcome = Outcome("failed", str(e), job.label, error=e)
            except Exception as e:  # noqa: BLE001  (importing the result failed: report, never raise in a timer)
                log.exception("importing the result of %s failed", job.label)
                err = ViewforgeError(f"importing the result failed: {type(e).__name__}: {e}", "see the console for details")
                outcome = Outcome("failed", str(err), job.label, error=err)
        else:
            err = h.error
            outcome = Outcome(h.state, str(err) if err is not None else h.state, job.label, error=err)
    finally:
        ACTIVE = None
        if job.cleanup is not None:
            try:
                job.cleanup()
            except Exception:  # noqa: BLE001
                log.exception("clean-up after %s failed", job.label)
    LAST = outcome
    (log.info if outcome.state == "done" else log.warning)("%s: %s", job.label, outcome.message)
    _redraw()
    return outcome


def tick() -> float | None:
    """Poll the active job; the timer function (returns the next interval, None to stop)."""
    job = ACTIVE
    if job is None:
        return None
    try:
        running = job.handle.poll()
    except Exception as e:  # noqa: BLE001  (a broken pipe etc.: end the job as failed)
        log.exception("polling %s failed", job.label)
        job.handle.kill()
        job.handle.state = "failed"
        job.handle.error = ViewforgeError(f"lost contact with the job ({type(e).__name__}: {e})", "run it again")
        running = False
    if running:
        _redraw()
        return POLL_INTERVAL_S
    _finish(job)
    return None


def progress_lines(stream=None, interval_s: float = 10.0) -> Callable[[dict], None]:
    """An ``on_progress`` for :func:`run_blocking` that prints the job's progress as log lines
    (``viewforge progress: <label>: <stage> <percent>% (<message>)``, one per stage and at most one
    every ``interval_s`` seconds; :class:`~viewforge.engine.progress.ProgressLines`) on ``stream``
    (None: stdout), so a ``blender -b`` log shows a long job moving."""
    from ..engine.progress import ProgressEvent, ProgressLines

    lines = ProgressLines(stream=stream, interval_s=interval_s, prefix="viewforge progress")

    def on_progress(st: dict | None) -> None:
        if st is not None and st.get("stage"):
            lines(ProgressEvent(f"{st['label']}: {st['stage']}", float(st["fraction"]), st.get("message") or ""))

    return on_progress


def run_blocking(interval: float = 0.05, on_progress: Callable[[dict], None] | None = None) -> Outcome:
    """Poll the active job until it ends (background mode); Ctrl-C cancels it. ``on_progress``
    gets :func:`status` after every poll (None: :func:`progress_lines` on stdout)."""
    job = ACTIVE
    if job is None:
        raise RuntimeError("no Viewforge job is running")
    if on_progress is None:
        on_progress = progress_lines()
    try:
        while job.handle.poll():
            on_progress(status())
            time.sleep(interval)
    except KeyboardInterrupt:
        job.handle.cancel()
        while job.handle.poll():
            time.sleep(interval)
    return _finish(job)


def stop_all() -> None:
    """Kill the running job without importing anything (file load, unregister)."""
    job = ACTIVE
    if job is None:
        return
    job.handle.cancel()
    job.handle.kill()
    job.handle.poll()
    if job.handle.state == "running":
        job.handle.state = "cancelled"
    job.on_success = None
    _finish(job)
    try:
        import bpy

        if bpy.app.timers.is_registered(tick):
            bpy.app.timers.unregister(tick)
    except Exception:  # noqa: BLE001
        pass


def _on_load_pre(*_args) -> None:
    """A file is being loaded: the job's scene is going away; stop the job."""
    if ACTIVE is not None:
        log.warning("a file is being loaded: cancelling the Viewforge job %s", ACTIVE.label)
        stop_all()


def register_handlers() -> None:
    import bpy

    bpy.app.handlers.persistent(_on_load_pre)  # stays registered across file loads
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister_handlers() -> None:
    import bpy

    stop_all()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
