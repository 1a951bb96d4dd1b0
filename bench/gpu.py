"""The prepared GPU check: one call of the device tool, one table.

(a) cuda-tests: the tests marked ``cuda`` (gsplat's CUDA rasterizer against ours, outputs and
    gradients on the same scene: tests/test_splat_raster.py), run by pytest.
(b) reconstruct: ``viewforge reconstruct`` of lego (24 views, 8 held out, 200 px, 3000 steps) on
    CUDA: seconds and held-out PSNR, next to the CPU figure of docs/benchmarks.md.
(c) generate: a full-size random-weight Zero123++ (the real v1.2 shapes,
    ``zero123pp.save_full_random``, fp16 on CUDA) through ``viewforge generate --method aware
    --steps 4`` to a textured mesh, then ``--method oneshot --steps 28`` (plain sampling): seconds
    per stage, generator evaluations, peak VRAM. Random weights make the result meaningless and
    the compute that of the real model, so the timings are real.

Everything is built on the machine from the working tree: the random model is written to a
temporary folder, the input image is a render of a procedural object. lego is read from
``--lego`` (default ``../shared/data/posed/lego``; on the device machine copy it into an ignored
folder of the checkout and carry it, e.g. ``.gpu/lego``). Packages the device image lacks
(diffusers, gsplat, ...) travel as wheels (docs/zero123pp.md, "GPU check").

``--dry-run``: the same code path on the CPU at tiny size (tiny model, 2 aware and 3 plain steps,
6 lego views at 32 px, a few fit steps), for tests/test_bench_gpu.py.

    python3 bench/gpu.py [--dry-run] [--lego DIR] [--json rows.json] [--sections a,b,c]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO.parent))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny Zero123++ (the dry run)

#: docs/benchmarks.md, "Reconstruction": lego, 24 views, 8 held out, 200 px, 3000 steps, 2-core CPU.
CPU_LEGO = {"seconds": 340.8, "psnr": 31.57}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _pkg() -> str:
    """The package name the checkout is importable as (its folder's name, normally viewforge)."""
    return REPO.name if (REPO.parent / REPO.name / "__init__.py").is_file() else "viewforge"


def section_tests(dry: bool) -> list[dict]:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
           str(REPO / "tests" / "test_splat_raster.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=str(REPO))
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [{"check": "a cuda-tests", "device": "cpu" if dry else "cuda", "seconds": round(time.perf_counter() - t, 1),
             "result": "ok" if proc.returncode in (0, 5) else f"FAILED (rc {proc.returncode})", "detail": tail}]


def section_reconstruct(dry: bool, lego: Path, device: str) -> list[dict]:
    src = lego / "transforms_train.json"
    if not src.is_file():
        return [{"check": "b reconstruct lego", "device": device, "seconds": None, "result": "skipped",
                 "detail": f"{src} not found (carry lego, --lego)"}]
    views, holdout, res, iters = (6, 2, 32, 20) if dry else (24, 8, 200, 3000)
    with tempfile.TemporaryDirectory() as tmp:
        out, mpath = Path(tmp) / "lego.ply", Path(tmp) / "m.json"
        cmd = [sys.executable, "-m", _pkg(), "reconstruct", str(src), "-o", str(out), "--views", str(views),
               "--holdout", str(holdout), "--resolution", str(res), "--iterations", str(iters),
               "--device", device, "--metrics", str(mpath)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=str(REPO.parent))
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return [{"check": "b reconstruct lego", "device": device, "seconds": round(wall, 1), "result": "FAILED",
                     "detail": (proc.stderr.strip().splitlines() or [""])[-1][:200]}]
        m = json.loads(mpath.read_text())
    return [{"check": "b reconstruct lego", "device": device, "seconds": round(wall, 1), "result": "ok",
             "detail": f"{views} views {res} px {m['iterations']} steps: PSNR {m['psnr']:.2f} dB held out, "
                       f"{m['num_gaussians']} Gaussians (CPU: {CPU_LEGO['psnr']} dB in {CPU_LEGO['seconds']} s"
                       f"{', not comparable at dry-run size' if dry else ''})"}]


def input_image(path: Path, size: int) -> Path:
    """A procedural object on white (an RGBA disc with a stripe), written as PNG."""
    import numpy as np

    from viewforge.engine.images import save_png

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    inside = ((xx - 0.5) ** 2 + (yy - 0.55) ** 2) < 0.3 ** 2
    rgba = np.zeros((size, size, 3), np.float32)
    rgba[..., 0] = 0.8
    rgba[..., 1] = 0.3 + 0.4 * (np.abs(yy - 0.5) < 0.05)
    rgba[..., 2] = 0.2
    save_png(path, rgba[..., :3], inside.astype(np.float32))
    return path


def section_generate(dry: bool, device: str) -> list[dict]:
    import torch

    from viewforge.engine.mvgen import zero123pp

    from viewforge import cli

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model = Path(tmp) / "model"
        if dry:
            from tiny_models import save_tiny

            save_tiny(model, view_size=16)
        else:
            zero123pp.save_full_random(model, dtype="float16")
        rows.append({"check": "c write random model", "device": "cpu", "seconds": round(time.perf_counter() - t, 1),
                     "result": "ok", "detail": "tiny (16 px views)" if dry else "full v1.2 shapes, fp16"})
        img = input_image(Path(tmp) / "object.png", 128 if dry else 512)
        small = ["--iterations", "20", "--grid", "32", "--faces", "500", "--texture-size", "64"] if dry else []
        plan = (("aware", 2), ("oneshot", 3)) if dry else (("aware", 4), ("oneshot", 28))
        for method, steps in plan:
            mpath = Path(tmp) / f"{method}.json"
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            argv = ["generate", str(img), "-o", str(Path(tmp) / f"{method}.glb"), "--model", str(model),
                    "--method", method, "--steps", str(steps), "--device", device, "--metrics", str(mpath), *small]
            t = time.perf_counter()
            rc = cli.main(argv)
            wall = time.perf_counter() - t
            if rc != 0 or not mpath.is_file():
                rows.append({"check": f"c generate {method} {steps}", "device": device, "seconds": round(wall, 1),
                             "result": f"FAILED (rc {rc})", "detail": ""})
                continue
            m = json.loads(mpath.read_text())
            vram = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "n/a (cpu)"
            stages = ", ".join(f"{k} {v:.1f}" for k, v in m["seconds"].items() if not k.startswith("mesh_"))
            rows.append({"check": f"c generate {method} {steps}", "device": device, "seconds": round(wall, 1),
                         "result": "ok", "detail": f"{m['generator_evals']} evals, peak VRAM {vram}, "
                                                   f"{m['num_faces']} faces; s: {stages}"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the same code path on the CPU at tiny size")
    ap.add_argument("--lego", type=Path, default=REPO.parent / "shared" / "data" / "posed" / "lego")
    ap.add_argument("--sections", default="a,b,c", help="which of a (cuda tests), b (reconstruct), c (generate)")
    ap.add_argument("--json", metavar="PATH", default=None)
    args = ap.parse_args(argv)
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device (use --dry-run for the CPU path)")
    todo = set(args.sections.split(","))
    rows: list[dict] = []
    if "a" in todo:
        rows += section_tests(args.dry_run)
    if "b" in todo:
        rows += section_reconstruct(args.dry_run, args.lego, device)
    if "c" in todo:
        rows += section_generate(args.dry_run, device)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run)"
    print(f"bench/gpu.py: torch {torch.__version__}, GPU {gpu}")
    print("| check | device | seconds | result | detail |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['check']} | {r['device']} | {r['seconds']} | {r['result']} | {r['detail']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(not str(r["result"]).startswith("FAILED") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
