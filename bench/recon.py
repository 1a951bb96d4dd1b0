"""Benchmark: (a) rasterizer forward+backward timings per backend, (b) reconstruction of real
posed sets (held-out PSNR/SSIM, time per stage, Gaussians, peak RSS).

    .venv/bin/python bench/recon.py                      # both tables
    .venv/bin/python bench/recon.py --only raster        # (a) only
    .venv/bin/python bench/recon.py --only recon --iterations 3000 --json out.json

(b) needs ../shared/data (lego, fox_photos); each reconstruction runs `viewforge reconstruct` in
its own process so its peak RSS is its own. Timings are wall-clock on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DENSE_MAX_ELEMENTS = 100_000_000  # pixels x Gaussians; the dense reference is O(HWN) memory


def _scene(n: int, size: int, seed: int = 0):
    """A scene-like cloud: N Gaussians in a ball, log-uniform sizes (a few px at this view)."""
    import torch

    from viewforge.engine.cameras import look_at

    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * torch.rand(n, 1, generator=g) ** (1 / 3)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.04), generator=g))
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g) * 0.5 + 0.5
    colors = torch.rand(n, 3, generator=g)
    f = 0.5 * size / math.tan(math.radians(20))
    vm = torch.tensor(look_at((0.0, -3.0, 0.8), (0, 0, 0)), dtype=torch.float32)[None]
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float32)[None]
    return [means, quats, scales, opac, colors], vm, K


def bench_raster(repeats: int = 5) -> list[dict]:
    import torch

    from viewforge.engine.splat.rasterize import rasterize

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for size in (128, 256):
        for n in (5000, 20000):
            params, vm, K = _scene(n, size)
            for backend in ("ours", "torch_tiled", "dense"):
                name = "cpu" if backend == "ours" else backend
                if backend == "dense" and size * size * n > DENSE_MAX_ELEMENTS:
                    rows.append(dict(kind="raster", backend=backend, resolution=size, gaussians=n, ms_fwd_bwd=None))
                    continue
                ps = [p.clone().requires_grad_(True) for p in params]

                def once():
                    r, a, _ = rasterize(*ps, vm, K, size, size, backend=name)
                    (r.sum() + a.sum()).backward()

                once()  # warm-up (numba compiles or loads its cache)
                times = []
                reps = repeats if backend == "ours" else max(2, repeats // 2)
                for _ in range(reps):
                    t = time.perf_counter()
                    once()
                    times.append(time.perf_counter() - t)
                rows.append(dict(kind="raster", backend=backend, resolution=size, gaussians=n,
                                 ms_fwd_bwd=round(1000 * float(np.median(times)), 1)))
    return rows


RECON_SCENES = {
    # name: (transforms, views, holdout, resolution)
    "lego": ("posed/lego/transforms_train.json", 24, 8, 200),
    "fox_photos": ("posed/fox_photos/transforms_subset40.json", 32, 8, 200),
}


def bench_recon(iterations: int, scenes: list[str]) -> list[dict]:
    rows = []
    for scene in scenes:
        rel, views, holdout, res = RECON_SCENES[scene]
        src = DATA / rel
        if not src.exists():
            print(f"skipping {scene}: {src} not found", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out, mpath = Path(tmp) / f"{scene}.ply", Path(tmp) / "m.json"
            cmd = [sys.executable, "-m", "viewforge", "reconstruct", str(src), "-o", str(out), "--views", str(views),
                   "--holdout", str(holdout), "--resolution", str(res), "--iterations", str(iterations),
                   "--metrics", str(mpath)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"{scene}: failed: {proc.stderr.strip()}", file=sys.stderr)
                continue
            m = json.loads(mpath.read_text())
        rows.append(dict(
            kind="recon", scene=scene, views=views, resolution=res, iterations=m["iterations"],
            seconds=round(wall, 1), psnr=round(m["psnr"], 2), ssim=round(m["ssim"], 4),
            gaussians=m["num_gaussians"], peak_rss_mb=m["peak_rss_mb"],
            stages={k: round(v, 1) for k, v in m["seconds"].items()},
            s_per_iteration=round(m["seconds"]["fit"] / max(m["iterations"], 1), 4),
        ))
    return rows


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, dict):
            return " ".join(f"{k}={x}" for k, x in v.items())
        return str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main() -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (cli._quiet_openmp)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("raster", "recon"), default=None)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--scenes", nargs="+", default=list(RECON_SCENES), choices=list(RECON_SCENES))
    ap.add_argument("--json", metavar="PATH", default=None, help="also write the rows as a JSON list")
    args = ap.parse_args()
    rows: list[dict] = []
    if args.only in (None, "raster"):
        r = bench_raster()
        rows += r
        print("(a) rasterizer, ms per forward+backward (median; '-' = dense reference skipped, O(HWN) memory)")
        print(_table(r, ["backend", "resolution", "gaussians", "ms_fwd_bwd"]))
        ours = {(x["resolution"], x["gaussians"]): x["ms_fwd_bwd"] for x in r if x["backend"] == "ours"}
        for x in r:
            if x["backend"] == "torch_tiled" and x["ms_fwd_bwd"]:
                key = (x["resolution"], x["gaussians"])
                print(f"  speed-up over torch_tiled at {key[0]} px, {key[1]} Gaussians: {x['ms_fwd_bwd'] / ours[key]:.1f}x")
        print()
    if args.only in (None, "recon"):
        r = bench_recon(args.iterations, args.scenes)
        rows += r
        print("(b) reconstruction (held-out views composited on white)")
        print(_table(r, ["scene", "views", "resolution", "iterations", "seconds", "s_per_iteration", "psnr", "ssim",
                         "gaussians", "peak_rss_mb", "stages"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
