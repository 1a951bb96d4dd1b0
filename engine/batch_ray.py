"""``viewforge batch --ray``: the batch's jobs as Ray tasks on a Ray cluster.

The plan is the local batch's (:func:`~viewforge.engine.batch.plan_batch`: the same items, output
names, resume records and lock), and so is each row of the summary table
(:func:`~viewforge.engine.jobs.job_outcome`). What changes is where jobs run: one Ray task per job
with its resources (``num_cpus`` per task, ``num_gpus=1`` for CUDA jobs), each running the job in
its own worker process (:class:`~viewforge.engine.jobs.JobProcess`, as the local batch) inside a
Ray worker.

- **Where outputs go.** Each task writes ``OUT_DIR/<name>.<format>`` atomically (a temporary file
  renamed into place) and its resume record next to it, so ``OUT_DIR`` must be a shared
  filesystem path that every node sees at the same path (NFS, SMB, a cluster filesystem). Object
  stores (``s3://``) are not supported. A task first writes a probe file there and fails with one
  line if it cannot (:func:`probe_output`).
- **Failures.** A job's own error (bad input) is its row, not retried. A job process that dies
  (killed, out of memory) raises :class:`JobProcessDied`, which Ray retries (``max_retries``); so
  does the death of the Ray worker or its node. After the retries the job is a failed row naming
  it, and the other jobs finish.
- **Progress.** Tasks send their stage to a small progress actor; the driver shows per-job stages
  and the overall count through the usual progress callback (a bar on a terminal, lines in logs).
- **Cancel.** Ctrl-C (or the cancel token) cancels every task with ``force=True`` (their job
  processes exit with their parent) and raises :class:`~viewforge.engine.errors.Cancelled`.

Ray is optional (``pip install viewforge[ray]``); without it :func:`import_ray` raises a
:class:`~viewforge.engine.errors.DependencyError` saying how to install it.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .batch import (STATE_DIR, BatchConfig, BatchPlan, BatchRow, PlannedJob, batch_lock, plan_batch, remove_partial_outputs,
                    skipped_row, write_record)
from .errors import Cancelled, DependencyError, InputError, OutputError
from .jobs import JobOutcome, JobProcess, JobResult, JobSpec, job_outcome
from .progress import CancelToken, ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

#: The Ray release this code is tested with (pinned in constraints.txt).
RAY_VERSION = "2.60.0"
INSTALL_HINT = f"install it with: pip install 'viewforge[ray]' (or pip install ray=={RAY_VERSION})"


@dataclass(frozen=True)
class RayConfig:
    """address: None starts a local Ray cluster (or uses the one this process already joined);
    "auto" joins the cluster running on this machine; "host:port" or "ray://host:port" joins that
    one. cpus: CPUs per task (each job's process uses that many threads); gpus: GPUs per task
    (None: 1 when the batch's device is cuda, or is auto and the cluster has GPUs; else 0);
    retries: times a task whose process or node died is run again; local_cpus: size of a local
    cluster (None: all cores); connect_timeout_s: how long to wait for an address to answer;
    object_store_mb: object store of a local cluster (jobs pass only small values)."""

    address: str | None = None
    cpus: float = 1.0
    gpus: float | None = None
    retries: int = 2
    local_cpus: int | None = None
    connect_timeout_s: float = 15.0
    object_store_mb: int = 100


class JobProcessDied(RuntimeError):
    """A job's worker process died without a result (Ray retries the task on this)."""


def import_ray():
    """The ``ray`` module, or a one-line :class:`DependencyError` saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise DependencyError("viewforge batch --ray needs Ray, which is not installed", INSTALL_HINT) from None
    return ray


def _check_address(address: str, timeout_s: float) -> None:
    """Raise one line when ``host:port`` (or ``ray://host:port``) does not accept a connection."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray address '{address}' is not host:port", "give --ray HOST:PORT, --ray auto, or --ray alone for a local cluster")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise DependencyError(f"the Ray cluster at {address} does not answer ({e.strerror or e})",
                              "start it (ray start --head) or check the address and firewall; --ray alone starts a local one") from None


def connect(config: RayConfig) -> bool:
    """Join or start the Ray cluster of ``config``; returns True when this call started it (the
    caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if config.address is None:
        temp = tempfile.mkdtemp(prefix="vf-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        ray.init(num_cpus=config.local_cpus, object_store_memory=int(config.object_store_mb) << 20, _temp_dir=temp, **kwargs)
        return True
    if config.address != "auto":
        _check_address(config.address, config.connect_timeout_s)
    try:
        ray.init(address=config.address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        text = " ".join(str(e).split())[:200]
        raise DependencyError(f"cannot join the Ray cluster at {config.address} ({text})",
                              "start one (ray start --head) or give its address; --ray alone starts a local cluster") from None
    return True


def probe_output(out: str | os.PathLike) -> None:
    """Raise :class:`OutputError` when this process (a worker node) cannot write to ``out``."""
    state = Path(out) / STATE_DIR
    probe = state / f"probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        state.mkdir(exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output folder {out} is not reachable from worker node {socket.gethostname()} ({e.strerror or e})",
                          "give a shared folder every node sees at the same path (object stores are not supported)") from None


def _task_body(job: PlannedJob, cpus: float, progress_actor: Any) -> dict[str, Any]:
    """One Ray task: probe the output folder, run the job in a worker process, write its resume
    record; returns the job's outcome as a dict. Raises :class:`JobProcessDied` when the process
    died, so Ray runs the task again."""
    t0 = time.perf_counter()
    try:
        probe_output(Path(job.spec.output).parent)
    except OutputError as e:
        return job_outcome(job.spec, time.perf_counter() - t0, None, e).to_dict()
    threads = str(max(1, int(cpus)))
    process = JobProcess(job.spec, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    last = [0.0, ""]

    def relay(p: JobProcess) -> None:
        now = time.monotonic()
        if progress_actor is not None and (p.stage != last[1] or now - last[0] > 1.0):
            last[:] = [now, p.stage]
            progress_actor.report.remote(job.item.name, p.stage, float(p.fraction), p.message)

    process.wait(on_progress=relay)
    if process.crashed:
        raise JobProcessDied(f"{job.item.name}: {process.error}")
    result, error = process.result, process.error
    if error is None and result is not None:
        write_record(job, result)
    outcome = job_outcome(job.spec, time.perf_counter() - t0, result, error)
    outcome.metrics["ray_node"] = import_ray().get_runtime_context().get_node_id()
    return outcome.to_dict()


class _Progress:
    """Ray actor: the latest (stage, fraction, message) of each running job."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, float, str]] = {}

    def report(self, name: str, stage: str, fraction: float, message: str) -> None:
        self.state[name] = (stage, fraction, message)

    def snapshot(self) -> dict[str, tuple[str, float, str]]:
        return dict(self.state)


def _failure_detail(e: BaseException, retries: int) -> str:
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, JobProcessDied):
        return f"its worker process died {retries + 1} times ({str(cause).split(': ', 1)[-1]})"
    text = " ".join(str(cause).split())
    name = type(cause).__name__
    if "OutOfMemory" in name:
        return f"ran out of memory on its node, {retries + 1} tries ({text[:200]})"
    if "NodeDied" in name or "WorkerCrashed" in name or "ActorDied" in name:
        return f"its Ray worker or node died, {retries + 1} tries ({name})"
    return f"the Ray task failed: {name}: {text[:300]}"


def resources(config: BatchConfig, ray_config: RayConfig) -> dict[str, float]:
    """``num_cpus``/``num_gpus`` of each task (see :class:`RayConfig`)."""
    gpus = ray_config.gpus
    if gpus is None:
        if config.device == "cuda":
            gpus = 1.0
        elif config.device == "auto":
            gpus = 1.0 if float(import_ray().cluster_resources().get("GPU", 0)) >= 1 else 0.0
        else:
            gpus = 0.0
    return {"num_cpus": float(ray_config.cpus), "num_gpus": float(gpus)}


def run_plan_ray(plan: BatchPlan, config: BatchConfig, ray_config: RayConfig = RayConfig(), *,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[BatchRow]:
    """Run a plan's jobs as Ray tasks on the connected cluster (:func:`connect`); rows in plan order."""
    ray = import_ray()
    res = resources(config, ray_config)
    if res["num_gpus"] > float(ray.cluster_resources().get("GPU", 0)):
        raise DependencyError(f"each job asks for {res['num_gpus']:g} GPU but the Ray cluster has {ray.cluster_resources().get('GPU', 0):g}",
                              "add GPU nodes, or run with --ray-gpus 0 --device cpu")
    task = ray.remote(max_retries=int(ray_config.retries), retry_exceptions=[JobProcessDied], **res)(_task_body)
    actor = ray.remote(num_cpus=0)(_Progress).remote() if progress is not None else None
    rows: dict[int, BatchRow] = {i: skipped_row(j) for i, j in enumerate(plan.jobs) if j.skip}
    refs = {task.remote(j, res["num_cpus"], actor): i for i, j in enumerate(plan.jobs) if not j.skip}
    n, started = len(plan.jobs), time.perf_counter()
    shown: dict[str, tuple[str, int]] = {}

    def overall(message: str) -> None:
        if progress is not None:
            progress(ProgressEvent("batch", len(rows) / max(n, 1), message, len(rows), n))

    overall(f"{len(refs)} jobs on the Ray cluster, {len(rows)} complete from an earlier run")
    pending = list(refs)
    try:
        while pending:
            if cancel is not None and cancel.cancelled:
                raise KeyboardInterrupt
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                i = refs[ref]
                job = plan.jobs[i]
                try:
                    rows[i] = JobOutcome.from_dict(ray.get(ref))
                except (ray.exceptions.RayError, JobProcessDied) as e:
                    detail = _failure_detail(e, int(ray_config.retries))
                    rows[i] = job_outcome(job.spec, time.perf_counter() - started, None, RuntimeError(detail))
                if rows[i].status != "ok":
                    log.warning("%s failed: %s", job.item.name, rows[i].detail)
                overall(f"{job.item.name}: {rows[i].status}")
            if actor is not None and pending:
                for name, (stage, fraction, message) in ray.get(actor.snapshot.remote()).items():
                    key = (stage, round(100 * fraction))
                    if shown.get(name) != key and not any(plan.jobs[refs[r]].item.name == name for r in done):
                        shown[name] = key
                        progress(ProgressEvent(f"{name}: {stage}", fraction, message))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise Cancelled("the batch was interrupted; its Ray tasks were cancelled") from None
    finally:
        if actor is not None:
            ray.kill(actor)
    return [rows[i] for i in range(n)]


def run_batch_ray(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BatchConfig = BatchConfig(),
    ray_config: RayConfig = RayConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    only: list[str] | tuple[str, ...] | None = None,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
) -> list[BatchRow]:
    """:func:`~viewforge.engine.batch.run_batch` with the jobs as Ray tasks (see the module docstring)."""
    import_ray()
    plan = plan_batch(input_dir, out_dir, config, only=only, shard=shard, overwrite=overwrite)
    with batch_lock(plan):
        remove_partial_outputs(plan)
        if not plan.todo:
            return [skipped_row(j) for j in plan.jobs]
        started = connect(ray_config)
        try:
            return run_plan_ray(plan, config, ray_config, progress=progress, cancel=cancel)
        finally:
            if started:
                import_ray().shutdown()


__all__ = ["INSTALL_HINT", "JobProcessDied", "RayConfig", "connect", "import_ray", "probe_output", "resources", "run_batch_ray",
           "run_plan_ray"]
