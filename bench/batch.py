"""Benchmark: items per hour of `viewforge batch` run locally and as Ray tasks on this machine.

    .venv/bin/python bench/batch.py                       # 6 posed sets, every executor
    .venv/bin/python bench/batch.py --items 6 --iterations 150 --json rows.json

The same items (synthetic posed sets of a sphere: --views cameras, --size px, fitted at that size
for --iterations steps, written as .ply splats) run, one executor after the other in one process,
into a fresh output folder each: the local batch (one job at a time, each in its worker process
with all cores), Ray on a local cluster of 1 and of 2 CPUs (one CPU per task), and Ray on a
simulated two-node cluster (ray.cluster_utils.Cluster, one CPU per node). Seconds are the batch's
wall clock from the first job submitted to the last row (the cluster's start-up is its own column);
"nodes" counts the Ray nodes that ran at least one job. Targets: Ray with 2 workers on
2 cores within 10 % of the local batch's items per hour on 6 items; both nodes of the simulated
cluster get work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' posed-set generator
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COLUMNS = ("executor", "workers", "items", "ok", "seconds", "items_per_hour", "vs_local", "nodes", "startup_s")


def make_items(root: Path, n: int, views: int, size: int) -> Path:
    from test_jobs import sphere_posed_set

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sphere_posed_set(root / f"item{i:02d}", n=views, size=size, radius=0.5 + 0.02 * i)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=6)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--executors", default="local,ray-1,ray-2,ray-2-nodes")
    ap.add_argument("--json", metavar="PATH", default=None)
    args = ap.parse_args(argv)

    import ray

    from viewforge.engine.batch import BatchConfig, batch_lock, plan_batch, run_batch
    from viewforge.engine.batch_ray import RayConfig, run_plan_ray

    work = Path(tempfile.mkdtemp(prefix="vf-bench-batch-"))
    src = make_items(work / "in", args.items, args.views, args.size)
    cfg = BatchConfig(quality="draft", device="cpu", output_format=".ply", resolution=args.size, iterations=args.iterations)
    rows: list[dict] = []
    local_rate = None
    for name in args.executors.split(","):
        out = work / f"out-{name}"
        startup, cluster, nodes = 0.0, None, None
        if name == "local":
            t = time.perf_counter()
            result = run_batch(src, out, cfg)
            seconds = time.perf_counter() - t
            workers = 1
        else:
            t = time.perf_counter()
            if name == "ray-2-nodes":
                from ray.cluster_utils import Cluster

                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                        "object_store_memory": 100 << 20})  # fmt: skip
                cluster.add_node(num_cpus=1, object_store_memory=100 << 20)
                ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
                cluster.wait_for_nodes()
                workers = 2
            else:
                workers = int(name.split("-")[1])
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
            startup = time.perf_counter() - t
            plan = plan_batch(src, out, cfg)
            t = time.perf_counter()
            with batch_lock(plan):
                result = run_plan_ray(plan, cfg, RayConfig(cpus=1))
            seconds = time.perf_counter() - t
            nodes = len({r.metrics.get("ray_node") for r in result if r.status == "ok"})
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
        ok = sum(r.status == "ok" for r in result)
        rate = 3600.0 * ok / seconds
        if name == "local":
            local_rate = rate
        rows.append({"executor": name, "workers": workers, "items": len(result), "ok": ok, "seconds": round(seconds, 1),
                     "items_per_hour": round(rate, 1), "vs_local": None if local_rate is None else round(rate / local_rate, 3),
                     "nodes": nodes, "startup_s": round(startup, 1)})  # fmt: skip
        print(f"{name}: {ok}/{len(result)} in {seconds:.1f} s", file=sys.stderr, flush=True)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)))
    print(f"{os.cpu_count()} cores, load average {'/'.join(f'{v:.2f}' for v in load) if load else 'n/a'} at the end; "
          f"{args.items} items of {args.views} views at {args.size} px, {args.iterations} steps")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] == r["items"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
