"""Headless batch: one job per input in a folder (``viewforge batch INPUT_DIR -o OUT_DIR``).

Inputs (:func:`find_inputs`): a folder that holds ``transforms.json`` is one posed set (a
``reconstruct`` job); otherwise each sub-folder holding a ``transforms.json`` is a posed set, each
sub-folder holding at least two photos and no ``transforms.json`` is a ``reconstruct`` job whose
cameras are estimated first (structure from motion, :func:`~viewforge.engine.recon.reconstruct`),
and each image file (:data:`~viewforge.engine.io.formats.IMAGE_SUFFIXES`) directly in it is a ``generate`` job (one image -> a
mesh standing on z = 0, :func:`~viewforge.engine.jobs.generate_job`). Other files are
ignored. Each job writes ``OUT_DIR/<name>.<format>`` (names made unique) atomically.

Jobs run one after another (one GPU), each in its own worker process
(:class:`~viewforge.engine.jobs.JobProcess`) so that a crash or an out-of-memory kill in one job
is reported as that job's failure and the others still run. :func:`run_batch` returns one
:class:`BatchRow` per job; :func:`format_table` prints them. This is the unit a farm (Flamenco,
Ray) distributes; there is no scheduler here.

**Plan, resume, lock.** :func:`plan_batch` turns the inputs into :class:`PlannedJob` s (output
names are made unique over *all* inputs, so ``--only`` and ``--shard`` pick the same names as a
full run). Each finished job leaves a record ``OUT_DIR/.viewforge-batch/<output>.json`` holding the
output's SHA-256 and the job spec; a later batch skips a job whose record matches its spec and the
file on disk (resume), unless ``overwrite``. While a batch runs it holds a lock in
``OUT_DIR/.viewforge-batch/`` on its outputs (:func:`batch_lock`): a second batch writing the same
outputs refuses (shards of one batch do not overlap, so a farm runs them side by side); the lock
of a process that no longer runs (same host) is taken over. Temporary files a killed job left
behind are removed under the lock. The Ray executor (engine/batch_ray.py) runs the same plan.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import Cancelled, InputError, OutputError, ViewforgeError
from .io.formats import IMAGE_SUFFIXES
from .jobs import GENERATE_OPTIONS, JobOutcome, JobProcess, JobResult, JobSpec, job_outcome, run_job
from .presets import QUALITY_PRESETS, warm_iterations
from .progress import CancelToken, ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

#: The file that makes a folder a posed set.
TRANSFORMS = "transforms.json"
#: Output formats of a batch.
FORMATS = (".glb", ".ply")

#: The batch's own folder inside the output folder: resume records and the lock.
STATE_DIR = ".viewforge-batch"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchConfig:
    """quality: a key of QUALITY_PRESETS (and GENERATE_PRESETS); device, seed: passed to every
    job; output_format: .glb (textured mesh) or .ply (Gaussian splats); resolution: override the
    preset's fit resolution (reconstruct jobs); iterations: override the preset's steps (for
    generate jobs: the first fit's steps, later fits 30 % of that); views: training views per
    posed set (None = all); model: generator id or model folder of generate jobs (None: the
    default, zero123pp-v1.2); allow_download: generate jobs may download missing weights;
    generate: other options of generate jobs (engine/jobs.py GENERATE_OPTIONS: steps, method,
    size, mesh, fit...); isolate: run each job in its own worker process."""

    quality: str = "standard"
    device: str = "auto"
    seed: int = 0
    output_format: str = ".glb"
    resolution: int | None = None
    iterations: int | None = None
    views: int | None = None
    model: str | None = None
    allow_download: bool = False
    generate: dict[str, Any] = field(default_factory=dict)
    isolate: bool = True


@dataclass(frozen=True)
class BatchItem:
    """One input: its name (file or folder stem), job kind and path."""

    name: str
    kind: str
    path: Path


#: One job's outcome (a row of the summary table); the same type the Ray executor returns.
BatchRow = JobOutcome


@dataclass(frozen=True)
class PlannedJob:
    """One job of a plan: its input item, the job spec (output path included), the resume record's
    path, and whether it is skipped (its output is complete from an earlier run)."""

    item: BatchItem
    spec: JobSpec
    record: Path
    skip: bool = False


@dataclass(frozen=True)
class BatchPlan:
    """The jobs of a batch in input order, and the (created, writable) output folder."""

    out: Path
    jobs: tuple[PlannedJob, ...]

    @property
    def todo(self) -> list[PlannedJob]:
        return [j for j in self.jobs if not j.skip]


def find_inputs(input_dir: str | os.PathLike) -> list[BatchItem]:
    """The jobs for ``input_dir`` (see the module docstring), sorted by name."""
    from .recon import photo_folder_images

    root = Path(input_dir).expanduser().absolute()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise InputError(f"input folder {root} {what}", "give a folder of posed sets (folders with transforms.json) or images")
    if (root / TRANSFORMS).is_file():
        return [BatchItem(root.name, "reconstruct", root / TRANSFORMS)]
    items = []
    for p in sorted(root.iterdir(), key=lambda q: q.name.lower()):
        if p.is_dir() and (p / TRANSFORMS).is_file():
            items.append(BatchItem(p.name, "reconstruct", p / TRANSFORMS))
        elif p.is_dir() and len(photo_folder_images(p) or []) >= 2:
            items.append(BatchItem(p.name, "reconstruct", p))  # photos without cameras
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            items.append(BatchItem(p.stem, "generate", p))
    if not items:
        raise InputError(
            f"input folder {root} holds no posed sets and no images",
            f"put folders with a {TRANSFORMS} (and their photos), folders of photos, or image files "
            f"({', '.join(IMAGE_SUFFIXES)}) in it",
        )
    return items


def _output_names(items: list[BatchItem], suffix: str) -> list[str]:
    used: set[str] = set()
    names = []
    for it in items:
        stem = _SAFE.sub("_", it.name).strip("._") or "job"
        name, k = f"{stem}{suffix}", 2
        while name.lower() in used:
            name, k = f"{stem}_{k}{suffix}", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def _check(config: BatchConfig, out_dir: str | os.PathLike) -> Path:
    if config.quality not in QUALITY_PRESETS:
        raise InputError(f"unknown quality '{config.quality}'", f"use one of {', '.join(QUALITY_PRESETS)}")
    if config.output_format not in FORMATS:
        raise InputError(f"unknown output format '{config.output_format}'", f"use one of {', '.join(FORMATS)}")
    unknown = sorted(set(config.generate) - set(GENERATE_OPTIONS))
    if unknown:
        raise InputError(f"unknown generate option(s) {', '.join(unknown)}", f"use {', '.join(GENERATE_OPTIONS)}")
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file", "give a folder for the batch outputs")
    if not out.parent.is_dir():
        raise OutputError(f"output folder {out.parent} does not exist", f"create it first (mkdir -p {out.parent})")
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"output folder {out} cannot be created ({e.strerror})", "choose a folder you can write to") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"output folder {out} is not writable", "choose a folder you can write to")
    return out


def job_options(config: BatchConfig, kind: str) -> dict[str, Any]:
    """The options of a ``kind`` job ("reconstruct" or "generate") of the batch ``config``."""
    options: dict[str, Any] = {"quality": config.quality, "device": config.device, "seed": int(config.seed)}
    if kind == "generate":
        if config.iterations is not None:
            options["fit_iterations"] = int(config.iterations)
            options["warm_iterations"] = warm_iterations(int(config.iterations))
        if config.model is not None:
            options["model"] = str(config.model)
        options["allow_download"] = bool(config.allow_download)
        return {**options, **config.generate}
    if config.resolution is not None:
        options["resolution"] = int(config.resolution)
    if config.iterations is not None:
        options["iterations"] = int(config.iterations)
    if config.views is not None:
        options["views"] = int(config.views)
    return options


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_spec(spec: JobSpec) -> dict[str, Any]:
    return {"kind": spec.kind, "input": str(spec.input), "output": Path(spec.output).name, "options": spec.options}


def record_matches(spec: JobSpec, record: Path) -> bool:
    """Whether ``record`` says ``spec``'s output on disk is complete: same kind, input and options,
    and the file's SHA-256 equals the recorded one."""
    try:
        data = json.loads(record.read_text())
        out = Path(spec.output)
        return (data.get("spec") == json.loads(json.dumps(_record_spec(spec))) and out.is_file()
                and data.get("sha256") == sha256_file(out))
    except (OSError, ValueError, AttributeError):
        return False


def write_record(job: PlannedJob, result: JobResult) -> None:
    """Record that ``job``'s output is complete (written atomically after the output itself)."""
    from .io.atomic import atomic_file

    job.record.parent.mkdir(exist_ok=True)
    data = {"sha256": sha256_file(job.spec.output), "spec": _record_spec(job.spec), "result": result.to_dict(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname()}
    with atomic_file(job.record) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1 <= i <= n) -> (i, n)."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"shard '{text}' is not i/n", "give the shard as i/n, e.g. 2/4 for the second of four") from None
    if not 1 <= i <= n:
        raise InputError(f"shard {i}/{n} is out of range", f"use 1/{max(n, 1)} to {max(n, 1)}/{max(n, 1)}")
    return i, n


def plan_batch(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BatchConfig = BatchConfig(),
    *,
    only: list[str] | tuple[str, ...] | None = None,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
) -> BatchPlan:
    """The jobs of a batch: every input of ``input_dir`` (:func:`find_inputs`), or those named in
    ``only``, or every n-th from the i-th for ``shard`` (i, n); each job's output path and resume
    record; ``skip`` where the record matches the output on disk (unless ``overwrite``). Raises on
    bad arguments before any job runs; creates the output folder."""
    items = find_inputs(input_dir)
    out = _check(config, out_dir)
    options = {kind: job_options(config, kind) for kind in ("reconstruct", "generate")}
    names = _output_names(items, config.output_format)
    jobs = []
    for k, (item, name) in enumerate(zip(items, names)):
        spec = JobSpec(item.kind, str(item.path), str(out / name), dict(options[item.kind]), name=item.name)
        jobs.append((k, PlannedJob(item, spec, out / STATE_DIR / f"{name}.json")))
    if only:
        known = {j.item.name for _, j in jobs}
        missing = [n for n in only if n not in known]
        if missing:
            raise InputError(f"no input named {', '.join(repr(m) for m in missing)} in {Path(input_dir)}",
                             f"use one of {', '.join(sorted(known))}")
        jobs = [(k, j) for k, j in jobs if j.item.name in set(only)]
    if shard is not None:
        i, n = parse_shard(shard) if isinstance(shard, str) else shard
        jobs = [(k, j) for k, j in jobs if k % n == i - 1]
    planned = []
    for _, j in jobs:
        skip = not overwrite and record_matches(j.spec, j.record)
        planned.append(replace(j, skip=skip))
    return BatchPlan(out, tuple(planned))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def batch_lock(plan: BatchPlan):
    """Hold a lock on the plan's outputs while a batch writes them: the file
    ``OUT_DIR/.viewforge-batch/lock-<host>-<pid>-<random>.json`` lists them. A second batch whose outputs
    overlap (the same batch again, a full batch beside a shard) refuses with :class:`OutputError`;
    shards of one batch (``--shard i/n``, disjoint outputs) run side by side. The lock of a process
    of this host that no longer runs is taken over (deleted)."""
    state = plan.out / STATE_DIR
    state.mkdir(exist_ok=True)
    host = socket.gethostname()
    mine = {Path(j.spec.output).name for j in plan.jobs}
    lock = state / f"lock-{_SAFE.sub('_', host)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    info = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "outputs": sorted(mine)}
    lock.write_text(json.dumps(info))
    try:
        for other in sorted(state.glob("lock-*.json")):
            if other == lock:
                continue
            try:
                held = json.loads(other.read_text())
            except (OSError, ValueError):
                continue  # being written or removed: its owner will see this lock and refuse
            if held.get("host") == host and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"]):
                log.warning("taking over the stale batch lock of pid %s in %s", held["pid"], plan.out)
                other.unlink(missing_ok=True)
                continue
            overlap = mine & set(held.get("outputs") or [])
            if overlap:
                raise OutputError(
                    f"another batch (pid {held.get('pid')} on {held.get('host')}, since {held.get('started')}) is writing "
                    f"to {plan.out} ({len(overlap)} of the same outputs, e.g. {sorted(overlap)[0]})",
                    f"wait for it to finish or use another output folder; if no batch runs, delete {other}",
                )
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def remove_partial_outputs(plan: BatchPlan) -> list[Path]:
    """Delete the temporary files (``.<output>.*.part*``) a killed job left next to the plan's
    outputs; call only under :func:`batch_lock`. Returns what was removed."""
    removed = []
    for j in plan.jobs:
        for folder, name in ((plan.out, Path(j.spec.output).name), (j.record.parent, j.record.name)):
            if folder.is_dir():
                for p in folder.glob(f".{glob.escape(name)}.*.part*"):
                    with contextlib.suppress(OSError):
                        if p.is_dir():
                            shutil.rmtree(p)
                        else:
                            p.unlink()
                        removed.append(p)
    if removed:
        log.info("removed %d partial file(s) left by killed jobs", len(removed))
    return removed


def skipped_row(job: PlannedJob) -> BatchRow:
    return BatchRow(job.item.name, job.item.kind, "skipped", 0.0, job.spec.output, "complete from an earlier run")


def run_batch(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BatchConfig = BatchConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    only: list[str] | tuple[str, ...] | None = None,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
) -> list[BatchRow]:
    """Run one job per input (see :func:`plan_batch` for ``only``, ``shard``, ``overwrite`` and
    resume); a failed job is a row with status "failed" and the others go on; a job complete from
    an earlier run is a row with status "skipped".

    Bad arguments (no inputs, an unwritable output folder, another batch writing there) raise
    before any job. Ctrl-C or ``cancel`` stops the running job and raises :class:`Cancelled`
    (finished outputs stay).
    """
    plan = plan_batch(input_dir, out_dir, config, only=only, shard=shard, overwrite=overwrite)
    with batch_lock(plan):
        remove_partial_outputs(plan)
        return run_plan(plan, config, progress=progress, cancel=cancel)


def run_plan(plan: BatchPlan, config: BatchConfig = BatchConfig(), *, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> list[BatchRow]:
    """Run a plan's jobs one after another in this machine (the caller holds the lock)."""
    rows: list[BatchRow] = []
    n = len(plan.jobs)
    for i, job in enumerate(plan.jobs):
        item, spec = job.item, job.spec
        if job.skip:
            rows.append(skipped_row(job))
            continue
        label = f"[{i + 1}/{n}] {item.name}"
        t0 = time.perf_counter()
        if progress is not None:
            progress(ProgressEvent(label, 0.0, item.kind))
        result, error = _run_one(spec, label, config.isolate, progress, cancel)
        if error is None:
            write_record(job, result)
        row = job_outcome(spec, time.perf_counter() - t0, result, error)
        rows.append(row)
        if error is not None:
            log.warning("%s failed: %s", item.name, error)
    return rows


def _run_one(spec: JobSpec, label: str, isolate: bool, progress: ProgressCallback | None, cancel: CancelToken | None):
    def relay(job) -> None:
        if cancel is not None and cancel.cancelled:
            job.cancel()
        if progress is not None:
            progress(ProgressEvent(f"{label}: {job.stage}", float(job.fraction), job.message))

    if not isolate:
        try:
            return run_job(spec, progress, cancel), None
        except Cancelled:
            raise
        except ViewforgeError as e:
            return None, e
    job = JobProcess(spec)
    interrupted = False
    try:
        job.wait(on_progress=relay)
    except KeyboardInterrupt:  # a second Ctrl-C while waiting for the job to stop
        job.kill()
        interrupted = True
    if interrupted or job.state == "cancelled":
        raise Cancelled("the batch was interrupted")
    return job.result, job.error


def format_table(rows: list[BatchRow]) -> str:
    """A plain-text table: job, kind, status, seconds, output or reason; a total line."""
    header = ("job", "kind", "status", "seconds", "output / reason")
    body = [(r.name, r.kind, r.status, f"{r.seconds:.1f}", r.output if r.status in ("ok", "skipped") else r.detail) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths)) + "  " + header[-1]]
    for b in body:
        lines.append("  ".join(v.ljust(w) for v, w in zip(b[:-1], widths)) + "  " + b[-1])
    failed = sum(r.status == "failed" for r in rows)
    skipped = sum(r.status == "skipped" for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} jobs succeeded" + (f", {failed} failed" if failed else "")
                 + (f" ({skipped} complete from an earlier run)" if skipped else ""))
    return "\n".join(lines)


__all__ = ["BatchConfig", "BatchItem", "BatchPlan", "BatchRow", "FORMATS", "IMAGE_SUFFIXES", "PlannedJob", "STATE_DIR",
           "batch_lock", "find_inputs", "format_table", "job_options", "parse_shard", "plan_batch", "record_matches",
           "remove_partial_outputs", "run_batch", "run_plan", "sha256_file", "write_record"]
