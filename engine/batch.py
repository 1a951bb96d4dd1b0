"""Headless batch: one job per input in a folder (``viewforge batch INPUT_DIR -o OUT_DIR``).

Inputs (:func:`find_inputs`): a folder that holds ``transforms.json`` is one posed set (a
``reconstruct`` job); otherwise each sub-folder holding a ``transforms.json`` is a posed set, each
sub-folder holding at least two photos and no ``transforms.json`` is a ``reconstruct`` job whose
cameras are estimated first (structure from motion, :func:`~viewforge.engine.recon.reconstruct`),
and each image file (:data:`IMAGE_SUFFIXES`) directly in it is a ``generate`` job (one image -> a
mesh standing on z = 0, :func:`~viewforge.engine.jobs.generate_job`). Other files are
ignored. Each job writes ``OUT_DIR/<name>.<format>`` (names made unique) atomically.

Jobs run one after another (one GPU), each in its own worker process
(:class:`~viewforge.engine.jobs.JobProcess`) so that a crash or an out-of-memory kill in one job
is reported as that job's failure and the others still run. :func:`run_batch` returns one
:class:`BatchRow` per job; :func:`format_table` prints them. This is the unit a farm (Flamenco,
Ray) distributes; there is no scheduler here.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Cancelled, InputError, OutputError, ViewforgeError
from .jobs import GENERATE_OPTIONS, JobProcess, JobSpec, QUALITY_PRESETS, run_job
from .progress import CancelToken, ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

#: Image files that become ``generate`` jobs.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: The file that makes a folder a posed set.
TRANSFORMS = "transforms.json"
#: Output formats of a batch.
FORMATS = (".glb", ".ply")

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


@dataclass
class BatchRow:
    """One job's outcome: status "ok" or "failed", seconds, the output written or the reason."""

    name: str
    kind: str
    status: str
    seconds: float
    output: str | None = None
    detail: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


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
            options["warm_iterations"] = max(1, int(config.iterations) * 3 // 10)
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


def run_batch(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BatchConfig = BatchConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[BatchRow]:
    """Run one job per input; a failed job is a row with status "failed" and the others go on.

    Bad arguments (no inputs, an unwritable output folder) raise before any job. Ctrl-C or
    ``cancel`` stops the running job and raises :class:`Cancelled` (finished outputs stay).
    """
    items = find_inputs(input_dir)
    out = _check(config, out_dir)
    options = {kind: job_options(config, kind) for kind in ("reconstruct", "generate")}
    rows: list[BatchRow] = []
    for i, (item, name) in enumerate(zip(items, _output_names(items, config.output_format))):
        spec = JobSpec(item.kind, str(item.path), str(out / name), dict(options[item.kind]), name=item.name)
        label = f"[{i + 1}/{len(items)}] {item.name}"
        t0 = time.perf_counter()
        if progress is not None:
            progress(ProgressEvent(label, 0.0, item.kind))
        result, error = _run_one(spec, label, config.isolate, progress, cancel)
        seconds = time.perf_counter() - t0
        if error is None:
            rows.append(BatchRow(item.name, item.kind, "ok", seconds, result.output, result.summary, result.metrics))
        else:
            rows.append(BatchRow(item.name, item.kind, "failed", seconds, None, str(error)))
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
    body = [(r.name, r.kind, r.status, f"{r.seconds:.1f}", r.output if r.status == "ok" else r.detail) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths)) + "  " + header[-1]]
    for b in body:
        lines.append("  ".join(v.ljust(w) for v, w in zip(b[:-1], widths)) + "  " + b[-1])
    failed = sum(r.status != "ok" for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} jobs succeeded" + (f", {failed} failed" if failed else ""))
    return "\n".join(lines)


__all__ = ["BatchConfig", "BatchItem", "BatchRow", "FORMATS", "IMAGE_SUFFIXES", "find_inputs", "format_table", "job_options",
           "run_batch"]
