"""Jobs: what one unit of Viewforge work is, its config from a quality preset, and a worker process to run it in.

A **job** is a plain description (:class:`JobSpec`: kind, input path, output path, options) that a
job function turns into files: ``reconstruct`` (a posed set -> a mesh or splats, through
:func:`viewforge.engine.recon.reconstruct`) and ``generate`` (one image -> a mesh standing on z = 0, through
:func:`viewforge.engine.generate.generate`). Adding a kind is one function registered in :data:`JOB_FUNCTIONS`. The Blender
operators, ``viewforge batch`` and scripts all build a :class:`JobSpec` and call the same function.

**Quality presets** (:data:`~viewforge.engine.presets.QUALITY_PRESETS` for reconstruct,
:data:`~viewforge.engine.presets.GENERATE_PRESETS` for generate; engine/presets.py) are applied to
the config dataclasses by :func:`recon_config` and :func:`generate_config`.

**Worker process** (:class:`JobProcess`). A job runs in a separate Python process started with
the *spawn* method (never fork: a forked Blender would duplicate its state and threads), so a
crash or an out-of-memory kill in torch cannot take the caller (Blender, a batch) with it. The
child never imports bpy. The child sends plain tuples over a one-way pipe: progress
``("progress", stage, fraction, message)`` (throttled), then exactly one of ``("done", result)``,
``("error", class name, message, fix)`` or ``("cancelled",)``. The parent polls without blocking
(:meth:`JobProcess.poll`, from a Blender timer or a loop). :meth:`JobProcess.cancel` sets a shared
event the job checks (:class:`~viewforge.engine.progress.CancelToken`); a child that has not
stopped :data:`CANCEL_GRACE_S` seconds later is killed. A child that dies without a final message
(killed, segfault, out of memory) becomes a :class:`~viewforge.engine.errors.ResourceError`
saying so. Only plain Python values cross the process boundary, so the child does not need the
parent's module names (inside Blender the extension is ``bl_ext.<repo>.viewforge``; the child
imports it as ``viewforge`` from the extension's parent folder).

**Another Python** (:class:`SubprocessJob`): the same worker run by an *engine Python* (a venv or
conda environment with the engine's dependencies) as ``<python> -m viewforge.engine.worker``,
talking JSON lines over stdin/stdout instead of a pipe of pickled tuples (docs/blender.md,
"Engine Python").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import types
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from . import errors as _errors
from .errors import Cancelled, InputError, ResourceError, ViewforgeError
from .presets import GENERATE_PRESETS, QUALITY_PRESETS, GeneratePreset, QualityPreset
from .progress import CancelToken, ProgressCallback, ProgressEvent, poll_until_done

log = logging.getLogger(__name__)

#: Seconds a cancelled worker may take to stop by itself before it is killed (so a cancel always
#: takes effect within 2 s, polling included).
CANCEL_GRACE_S = 1.5
#: Seconds a worker that has sent its final message may take to exit before it is killed.
REAP_TIMEOUT_S = 10.0
#: Minimum seconds between two progress messages of one stage from the worker (UI refresh rate).
PROGRESS_INTERVAL_S = 0.1


# ---------------------------------------------------------------------------------------------
# Quality presets
# ---------------------------------------------------------------------------------------------


#: Options a reconstruct job accepts besides the preset (ReconConfig field names).
RECON_OPTIONS = ("quality", "resolution", "iterations", "faces", "texture_size", "device", "seed", "views", "holdout",
                 "pose_refine", "mesh", "complete", "model", "allow_download", "rvc", "cameras_out")


def recon_config(quality: str = "standard", **overrides: Any):
    """The :class:`~viewforge.engine.recon.ReconConfig` of a quality preset, with ``overrides``
    (any ReconConfig field; ``None`` values are ignored; a ``mesh`` dict is merged into the
    preset's) applied on top. Preset entries the ReconConfig of this tree lacks are left out."""
    from .recon import ReconConfig

    if quality not in QUALITY_PRESETS:
        raise InputError(f"unknown quality '{quality}'", f"use one of {', '.join(QUALITY_PRESETS)}")
    preset = asdict(QUALITY_PRESETS[quality])
    names = {f.name for f in fields(ReconConfig)}
    unknown = sorted(k for k in overrides if k not in names)
    if unknown:
        raise InputError(f"unknown reconstruction option(s) {', '.join(unknown)}", f"use {', '.join(sorted(names))}")
    values = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    values["mesh"] = {**preset.get("mesh", {}), **(overrides.get("mesh") or {})}
    return replace(ReconConfig(), **{k: v for k, v in values.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Job descriptions and job functions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One job. kind: a key of :data:`JOB_FUNCTIONS`; input: its input (a transforms.json or its
    folder for ``reconstruct``, an image for ``generate``); output: the file to write (its suffix
    picks the format); options: plain values (for ``reconstruct``: ``quality`` plus ReconConfig
    fields); name: a label for progress and summaries."""

    kind: str
    input: str
    output: str
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "input": str(self.input), "output": str(self.output), "options": dict(self.options), "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobSpec":
        return cls(d["kind"], d["input"], d["output"], dict(d.get("options") or {}), d.get("name", ""))


@dataclass
class JobResult:
    """What a job wrote: the output file, its metrics (DESIGN.md metrics keys where they apply)
    and a one-line summary."""

    output: str
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "metrics": self.metrics, "summary": self.summary}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobResult":
        return cls(d["output"], dict(d.get("metrics") or {}), d.get("summary", ""))


JobFunction = Callable[[JobSpec, "ProgressCallback | None", "CancelToken | None"], JobResult]


def reconstruct_job(spec: JobSpec, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> JobResult:
    """Posed set (``spec.input``) -> ``spec.output`` (.glb mesh, or .ply splats) with
    :func:`~viewforge.engine.recon.reconstruct`, configured by the quality preset and options."""
    from .recon import reconstruct

    opts = dict(spec.options)
    unknown = sorted(set(opts) - set(RECON_OPTIONS))
    if unknown:
        raise InputError(f"unknown reconstruction option(s) {', '.join(unknown)}", f"use {', '.join(RECON_OPTIONS)}")
    cameras_out = opts.pop("cameras_out", None)
    cfg = recon_config(opts.pop("quality", "standard"), **opts)
    t = time.perf_counter()
    res = reconstruct(spec.input, spec.output, cfg, cameras_path=cameras_out, progress=progress, cancel=cancel)
    m = res.metrics
    what = f"{m['num_faces']} faces" if m.get("num_faces") else f"{m.get('num_gaussians')} Gaussians"
    seconds = time.perf_counter() - t  # wall clock: the metrics' stages nest (complete, complete_*)
    summary = f"{what} from {m.get('views')} views in {seconds:.0f} s"
    if m.get("sfm", {}).get("unregistered"):
        summary += f"; cameras not found for: {', '.join(m['sfm']['unregistered'])}"
    if m.get("completion"):
        summary += f", unseen sides generated ({m['completion'].get('generator_evals')} generator evaluations)"
        if m["completion"].get("cameras_refined"):
            summary += f"; cameras: {m['completion']['cameras_refined']}"
        summary += "".join(f"; {w}" for w in m["completion"].get("warnings") or [])
    elif m.get("completion_skipped"):
        summary += "; the sides no photo saw were not completed (the generator's weights are missing)"
    summary += "".join(f"; {w}" for w in m.get("warnings") or [])
    return JobResult(str(res.output), m, summary)


#: Options a generate job accepts (``quality`` plus GenerateConfig field names).
GENERATE_OPTIONS = ("quality", "model", "steps", "method", "seed", "device", "allow_download", "faces", "texture_size",
                    "size", "fit_iterations", "warm_iterations", "mesh", "fit")


def generate_config(quality: str = "standard", **overrides: Any):
    """The :class:`~viewforge.engine.generate.GenerateConfig` of a quality preset with
    ``overrides`` (GenerateConfig fields; ``None`` values are ignored; ``mesh`` and ``fit`` dicts
    are merged into the preset's)."""
    from .generate import GenerateConfig

    if quality not in GENERATE_PRESETS:
        raise InputError(f"unknown quality '{quality}'", f"use one of {', '.join(GENERATE_PRESETS)}")
    unknown = sorted(k for k in overrides if k not in GENERATE_OPTIONS or k == "quality")
    if unknown:
        raise InputError(f"unknown generate option(s) {', '.join(unknown)}",
                         f"use {', '.join(o for o in GENERATE_OPTIONS if o != 'quality')}")
    preset = asdict(GENERATE_PRESETS[quality])
    values = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    values["mesh"] = {**preset.get("mesh", {}), **(overrides.get("mesh") or {})}
    values["fit"] = dict(overrides.get("fit") or {})
    names = {f.name for f in fields(GenerateConfig)}
    return replace(GenerateConfig(), **{k: v for k, v in values.items() if k in names})


def generate_job(spec: JobSpec, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> JobResult:
    """One image (``spec.input``) -> ``spec.output`` (.glb textured mesh standing on z = 0, or
    .ply splats) with :func:`~viewforge.engine.generate.generate`, configured by the quality
    preset and the options (:data:`GENERATE_OPTIONS`)."""
    from .generate import generate

    opts = dict(spec.options)
    unknown = sorted(set(opts) - set(GENERATE_OPTIONS))
    if unknown:
        raise InputError(f"unknown generate option(s) {', '.join(unknown)}", f"use {', '.join(GENERATE_OPTIONS)}")
    cfg = generate_config(opts.pop("quality", "standard"), **opts)
    t = time.perf_counter()
    res = generate(spec.input, spec.output, cfg, progress=progress, cancel=cancel)
    m = dict(res.metrics)
    m["seconds_total"] = round(time.perf_counter() - t, 3)
    what = f"{m['num_faces']} faces" if m.get("num_faces") else f"{m.get('num_gaussians')} Gaussians"
    summary = f"{what}, {m.get('generator_evals')} generator evaluations, {m['seconds_total']:.0f} s"
    return JobResult(str(res.output), m, summary)


#: kind -> job function. Entries may also be ``"package.module:function"`` strings (imported in
#: the worker; used by tests and plug-ins).
JOB_FUNCTIONS: dict[str, JobFunction] = {"reconstruct": reconstruct_job, "generate": generate_job}


def job_function(kind: str) -> JobFunction:
    """The function that runs jobs of ``kind`` (a registered name or ``module:function``)."""
    if kind in JOB_FUNCTIONS:
        return JOB_FUNCTIONS[kind]
    if ":" in kind:
        import importlib

        mod, _, name = kind.partition(":")
        return getattr(importlib.import_module(mod), name)
    raise InputError(f"unknown job kind '{kind}'", f"use one of {', '.join(JOB_FUNCTIONS)}")


def run_job(spec: JobSpec, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> JobResult:
    """Run a job in this process (the worker calls this; so can scripts that want no process)."""
    return job_function(spec.kind)(spec, progress, cancel)


@dataclass
class JobOutcome:
    """How one job of a batch ended (a row of the summary table): status "ok", "failed" or
    "skipped" (its output was complete from an earlier run), seconds, the output written or the
    reason."""

    name: str
    kind: str
    status: str
    seconds: float
    output: str | None = None
    detail: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobOutcome":
        return cls(**d)


def job_outcome(spec: JobSpec, seconds: float, result: JobResult | None = None, error: BaseException | None = None) -> JobOutcome:
    """The outcome of ``spec``: ok with its result, or failed with the error's one line. The local
    batch and the Ray executor both build their rows here, so their tables are the same."""
    name, kind = spec.name or Path(spec.input).stem, spec.kind
    if error is None and result is not None:
        return JobOutcome(name, kind, "ok", float(seconds), result.output, result.summary, dict(result.metrics))
    text = str(error) if error is not None else "the job ended without a result"
    return JobOutcome(name, kind, "failed", float(seconds), None, " ".join(text.split()))


# ---------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------


def error_from_message(class_name: str, message: str, fix: str) -> ViewforgeError:
    """Rebuild a typed engine error from the worker's ``("error", class, message, fix)``."""
    cls = getattr(_errors, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ViewforgeError)) or cls is Cancelled:
        cls = ViewforgeError
    err = cls.__new__(cls)
    ViewforgeError.__init__(err, message, fix)
    return err


def _exit_with_parent(interval_s: float = 0.5) -> None:
    """End this worker when its parent dies (a killed Blender, a Ray worker cancelled with force):
    an orphan would go on using the cores. Its partial output is a temporary file that the next
    batch in that folder removes (atomic output)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="viewforge-parent-watch", daemon=True).start()


def worker_main(spec: dict[str, Any], conn: Any, cancel_event: Any, env: dict[str, str] | None = None, nice: int = 0) -> None:
    """Entry point of the worker process: set ``env`` (model cache, offline mode) and the
    scheduling priority (``nice`` > 0: lower, so the caller's UI stays responsive), run the job,
    send progress and one final message."""
    os.environ.update(env or {})
    if nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(nice)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _exit_with_parent()
    logging.basicConfig(level=logging.WARNING, format="viewforge worker: %(levelname)s: %(name)s: %(message)s")
    cancel = CancelToken(cancel_event)
    last = {"t": 0.0, "stage": None}

    def progress(ev: ProgressEvent) -> None:
        now = time.monotonic()
        if ev.stage == last["stage"] and ev.fraction < 1.0 and now - last["t"] < PROGRESS_INTERVAL_S:
            return
        last.update(t=now, stage=ev.stage)
        conn.send(("progress", ev.stage, float(ev.fraction), ev.message))
        cancel.check()

    try:
        result = run_job(JobSpec.from_dict(spec), progress, cancel)
        msg: tuple = ("done", result.to_dict())
    except Cancelled:
        msg = ("cancelled",)
    except ViewforgeError as e:
        msg = ("error", type(e).__name__, e.message, e.fix)
    except MemoryError:
        msg = ("error", "ResourceError", "the job ran out of memory", "choose a lower quality preset or fewer cameras")
    except BaseException as e:  # noqa: BLE001  (reported to the parent; the traceback goes to stderr)
        import traceback

        traceback.print_exc()
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "out of memory" in text.lower():
            msg = ("error", "ResourceError", f"the job ran out of memory ({text[:200]})", "choose a lower quality preset or fewer cameras")
        else:
            msg = ("error", "ViewforgeError", f"unexpected error in the job: {type(e).__name__}: {text[:300]}",
                   "please report it with the console output (Window > Toggle System Console)")
    conn.send(msg)
    conn.close()


@contextlib.contextmanager
def _spawn_environment(extra_path: str | None) -> Iterator[None]:
    """While a spawn child is started: no ``__main__`` for it to re-run (Blender's or a script's
    would import bpy in the child) and, inside Blender, the extension's parent folder on its path."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    if extra_path:
        sys.path.insert(0, extra_path)
    try:
        yield
    finally:
        if extra_path and sys.path and sys.path[0] == extra_path:
            sys.path.pop(0)
        if main is not None:
            sys.modules["__main__"] = main


def _worker_module() -> tuple[str, str | None]:
    """``(module the child runs, folder to add to its sys.path or None)``."""
    package = __name__.rsplit(".", 2)[0]  # "viewforge", or "bl_ext.<repo>.viewforge" in Blender
    if package == "viewforge":
        return "viewforge.engine.worker", None
    root = Path(__file__).resolve().parents[1]  # the extension folder, named after its id
    return f"{root.name}.engine.worker", str(root.parent)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not stop"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def _reap(process: Any) -> None:
    """Wait for a worker that has sent its final message to exit; kill it if it hangs (torch and
    numba tear-down takes about a second, more on a busy machine; the caller never waits)."""
    process.join(REAP_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join(5)


class JobProcess:
    """One job in a spawned worker process. Not thread-safe: call from one thread (Blender's main
    thread). ``state`` is "running", "done", "failed" or "cancelled"; ``stage``, ``fraction`` and
    ``message`` are the latest progress; ``result`` (:class:`JobResult`) or ``error``
    (:class:`ViewforgeError`) are set when it ends."""

    def __init__(self, spec: JobSpec, env: dict[str, str] | None = None, nice: int = 0) -> None:
        """Start the worker for ``spec``; ``env``: environment variables set in the worker only
        (e.g. ``HF_HOME``, ``HF_HUB_OFFLINE``); ``nice``: lower the worker's CPU priority by this
        much (POSIX; Blender passes 5 so that its UI stays responsive)."""
        import multiprocessing as mp

        self.spec = spec
        self.state = "running"
        self.stage = "start"
        self.fraction = 0.0
        self.message = "starting the worker"
        self.result: JobResult | None = None
        self.error: ViewforgeError | None = None
        self.started = time.monotonic()
        self._cancel_at: float | None = None
        #: True when the worker process died without a final message (killed, crashed).
        self.crashed = False
        self._reaper: Any = None  # the thread that waits for the worker to exit after its final message
        ctx = mp.get_context("spawn")
        self._event = ctx.Event()
        recv, send = ctx.Pipe(duplex=False)
        self._conn = recv
        module, extra_path = _worker_module()
        import runpy

        self._process = ctx.Process(
            target=runpy.run_module,
            args=(module,),
            kwargs={"init_globals": {"WORKER_ARGS": (spec.to_dict(), send, self._event, dict(env or {}), int(nice))}, "run_name": "__viewforge_worker__"},
            name=f"viewforge-{spec.kind}",
            daemon=True,
        )
        with _spawn_environment(extra_path):
            self._process.start()
        send.close()  # the child holds the only write end: EOF when it dies
        log.info("started %s job in worker pid %s", spec.kind, self._process.pid)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def cancelling(self) -> bool:
        return self._cancel_at is not None and self.state == "running"

    def cancel(self) -> None:
        """Ask the job to stop; it is killed if it has not stopped :data:`CANCEL_GRACE_S` later."""
        if self.state == "running" and self._cancel_at is None:
            self._cancel_at = time.monotonic()
            self._event.set()
            self.message = "cancelling"

    def kill(self) -> None:
        """Stop the worker now (no clean-up in the child; outputs are atomic, so nothing is left)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)

    def _finish(self, state: str, result: JobResult | None = None, error: ViewforgeError | None = None) -> None:
        self.state, self.result, self.error = state, result, error
        self.fraction = 1.0 if state == "done" else self.fraction
        with contextlib.suppress(Exception):
            self._conn.close()
        self._process.join(0.05)
        if self._process.is_alive():  # its final message is in: let it exit in the background
            import threading

            self._reaper = threading.Thread(target=_reap, args=(self._process,), name="viewforge-reaper", daemon=True)
            self._reaper.start()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for the worker process to exit (it may still be exiting after the job ended);
        returns its exit code (None while it runs)."""
        if self._reaper is not None:
            # the reaper thread already waits for the process: waiting here too races with it (one
            # waitpid gets the status, the other ECHILD and an exit code of None)
            self._reaper.join(timeout)
        else:
            self._process.join(timeout)
        return self._process.exitcode

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "progress":
            _, self.stage, self.fraction, self.message = msg
        elif kind == "done":
            self._finish("done", result=JobResult.from_dict(msg[1]))
        elif kind == "cancelled":
            self._finish("cancelled", error=Cancelled())
        elif kind == "error":
            self._finish("failed", error=error_from_message(*msg[1:4]))

    def poll(self) -> bool:
        """Read what the worker sent, enforce the cancel deadline, notice a dead worker.
        Never blocks. Returns True while the job is running."""
        if self.state != "running":
            return False
        try:
            while self.state == "running" and self._conn.poll():
                self._handle(self._conn.recv())
        except (EOFError, OSError):  # the child is gone (or died mid-message)
            pass
        if self.state != "running":
            return False
        if self._cancel_at is not None and time.monotonic() - self._cancel_at > CANCEL_GRACE_S:
            self.kill()
            self._finish("cancelled", error=Cancelled("cancelled by the user (the worker was stopped)"))
            return False
        if not self._process.is_alive():
            self._process.join(1)
            if self._cancel_at is not None:
                self._finish("cancelled", error=Cancelled())
            else:
                self.crashed = True
                self._finish(
                    "failed",
                    error=ResourceError(
                        f"the worker process {_describe_exit(self._process.exitcode)} before the job finished; nothing was changed",
                        "choose a lower quality preset or fewer cameras, or see the console for the crash",
                    ),
                )
            return False
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.05, on_progress: Callable[["JobProcess"], None] | None = None) -> bool:
        """Poll until the job ends (or ``timeout`` seconds); returns True when it ended.
        Ctrl-C cancels the job and waits for it to stop."""
        tick = None if on_progress is None else (lambda: on_progress(self))
        try:
            return poll_until_done(self.poll, timeout, interval, tick)
        except KeyboardInterrupt:
            self.cancel()
            while self.poll():
                time.sleep(interval)
        return True

    def raise_for_error(self) -> JobResult:
        """The result, or raise the job's error (:class:`Cancelled` when cancelled)."""
        if self.state == "running":
            raise RuntimeError("the job is still running")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# ---------------------------------------------------------------------------------------------
# The worker in another Python (the engine Python)
# ---------------------------------------------------------------------------------------------


class _JsonLineSender:
    """The child's end of :class:`SubprocessJob`'s channel: ``send(tuple)`` writes one JSON line."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def send(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "progress":
            obj: dict[str, Any] = {"kind": "progress", "stage": msg[1], "fraction": msg[2], "message": msg[3]}
        elif kind == "done":
            obj = {"kind": "done", "result": msg[1]}
        elif kind == "error":
            obj = {"kind": "error", "type": msg[1], "message": msg[2], "fix": msg[3]}
        else:
            obj = {"kind": kind}
        self._stream.write(json.dumps(obj, default=_json_default) + "\n")
        self._stream.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()


def _json_default(value: Any) -> Any:
    """Plain values for JSON: numpy scalars and arrays, paths, sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def stdio_worker_main() -> None:
    """Entry point of ``python -m viewforge.engine.worker`` (:class:`SubprocessJob`): read one
    JSON line ``{"spec", "env", "nice"}`` from stdin, run the job, write JSON lines (progress,
    then one of done / error / cancelled) to the original stdout. Anything the job's libraries
    print goes to stderr. A ``cancel`` line on stdin, or stdin closing (the parent is gone),
    cancels the job."""
    import threading

    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # fd 1 (C libraries) and sys.stdout now write to stderr
    sys.stdout = sys.stderr
    request = json.loads(sys.stdin.readline() or "{}")
    event = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        event.set()  # a cancel line, or EOF: the parent closed the pipe or died

    threading.Thread(target=watch_stdin, name="viewforge-cancel", daemon=True).start()
    worker_main(request["spec"], _JsonLineSender(channel), event, request.get("env") or {}, int(request.get("nice") or 0))


class _LineChannel:
    """The parent's end: the child's JSON lines, read by a thread, as the tuples of the spawn
    worker's pipe (``poll()``, ``recv()``, ``close()``; EOFError after the child's last line)."""

    _EOF = object()

    def __init__(self, stream: Any) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="viewforge-job-reader", daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        try:
            for line in stream:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    log.warning("engine worker: %s", line[:300])
                    continue
                self._queue.put(self._tuple(obj))
        finally:
            self._queue.put(self._EOF)

    @staticmethod
    def _tuple(obj: dict[str, Any]) -> tuple:
        kind = obj.get("kind")
        if kind == "progress":
            return ("progress", str(obj.get("stage", "")), float(obj.get("fraction", 0.0)), str(obj.get("message", "")))
        if kind == "done":
            return ("done", obj["result"])
        if kind == "error":
            return ("error", str(obj.get("type", "ViewforgeError")), str(obj.get("message", "")), str(obj.get("fix", "")))
        return (str(kind),)

    def poll(self) -> bool:
        return not self._queue.empty()

    def recv(self) -> tuple:
        item = self._queue.get_nowait()
        if item is self._EOF:
            self._queue.put(item)
            raise EOFError
        return item

    def close(self) -> None:
        pass


class _PopenProcess:
    """A :class:`subprocess.Popen` with the interface of :class:`multiprocessing.Process` that
    :class:`JobProcess` uses (``is_alive``, ``kill``, ``join``, ``exitcode``, ``pid``)."""

    def __init__(self, popen: Any, on_exit: Callable[[], None] | None = None) -> None:
        self._popen = popen
        self._on_exit = on_exit

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._popen.kill()

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)
        if self._popen.poll() is not None and self._on_exit is not None:
            on_exit, self._on_exit = self._on_exit, None
            with contextlib.suppress(OSError):
                self._popen.stdin.close()
            on_exit()


class _CancelLine:
    """``set()`` sends the child a ``cancel`` line (the spawn worker's shared event)."""

    def __init__(self, stdin: Any) -> None:
        self._stdin = stdin

    def set(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stdin.write("cancel\n")
            self._stdin.flush()


def engine_pythonpath() -> tuple[str, str | None]:
    """``(folder to put on the engine Python's PYTHONPATH so that ``import viewforge`` is this
    tree, temporary folder to delete afterwards or None)``. The extension folder is named after
    its id (``viewforge``) when installed: its parent is used. A development checkout may have
    any name: a temporary folder with a ``viewforge`` link to it."""
    import tempfile

    root = Path(__file__).resolve().parents[1]
    if root.name == "viewforge":
        return str(root.parent), None
    shim = tempfile.mkdtemp(prefix="viewforge-path-")
    os.symlink(root, os.path.join(shim, "viewforge"), target_is_directory=True)
    return shim, shim


def engine_python_env(pythonpath: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process in the engine Python: this one's, without the variables
    that point a Python at another installation (Blender's), with ``pythonpath`` and ``env``."""
    out = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")}
    out["PYTHONPATH"] = pythonpath
    out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out.update(env or {})
    return out


class SubprocessJob(JobProcess):
    """One job in another Python (the *engine Python*: a venv or conda environment with the
    engine's dependencies), run as ``<python> -m viewforge.engine.worker`` with this tree on its
    path. The same interface and states as :class:`JobProcess`; the channel is JSON lines: the
    job in on stdin (``{"spec", "env", "nice"}``), then ``cancel`` lines; progress, result and
    errors (``{"kind": "error", "type", "message", "fix"}``) out on stdout. The child's stderr
    is this process's (its log and tracebacks show in Blender's console)."""

    def __init__(self, spec: JobSpec, python: str, env: dict[str, str] | None = None, nice: int = 0,
                 extra_path: list[str] | None = None) -> None:  # fmt: skip
        """Start ``<python> -m viewforge.engine.worker`` for ``spec``; ``env`` and ``nice`` as for
        :class:`JobProcess`; ``extra_path``: more folders for the child's PYTHONPATH (where
        ``module:function`` job kinds live)."""
        import subprocess

        self.spec = spec
        self.python = str(python)
        self.state = "running"
        self.stage = "start"
        self.fraction = 0.0
        self.message = "starting the engine Python"
        self.result = None
        self.error = None
        self.started = time.monotonic()
        self._cancel_at = None
        self._reaper = None
        pythonpath, self._shim = engine_pythonpath()
        try:
            popen = subprocess.Popen(
                [self.python, "-m", "viewforge.engine.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=engine_python_env(os.pathsep.join([pythonpath, *(extra_path or [])])), text=True, encoding="utf-8", bufsize=1,
                cwd=_worker_cwd(),
            )  # fmt: skip
        except OSError as e:
            self._remove_shim()
            raise _errors.DependencyError(
                f"the engine Python {self.python} cannot be started ({e.strerror or e})",
                "set Preferences > Add-ons > Viewforge > Engine Python to a python executable (venv/bin/python)",
            ) from None
        request = {"spec": spec.to_dict(), "env": dict(env or {}), "nice": int(nice)}
        try:
            popen.stdin.write(json.dumps(request) + "\n")
            popen.stdin.flush()
        except OSError:
            pass  # it died at once: poll() reports how
        self._process = _PopenProcess(popen, on_exit=self._remove_shim)
        self._conn = _LineChannel(popen.stdout)
        self._event = _CancelLine(popen.stdin)
        log.info("started %s job in engine Python %s, pid %s", spec.kind, self.python, popen.pid)

    def _remove_shim(self) -> None:
        if self._shim:
            import shutil

            shutil.rmtree(self._shim, ignore_errors=True)
            self._shim = None


def _worker_cwd() -> str:
    """A folder to run the engine Python in (not the caller's: its ``viewforge`` folder, if any,
    must not shadow the one on the path)."""
    import tempfile

    return tempfile.gettempdir()


__all__ = [
    "CANCEL_GRACE_S",
    "GENERATE_OPTIONS",
    "GENERATE_PRESETS",
    "JOB_FUNCTIONS",
    "JobProcess",
    "JobOutcome",
    "JobResult",
    "SubprocessJob",
    "JobSpec",
    "QUALITY_PRESETS",
    "QualityPreset",
    "error_from_message",
    "generate_config",
    "generate_job",
    "job_function",
    "job_outcome",
    "recon_config",
    "reconstruct_job",
    "run_job",
    "worker_main",
]
