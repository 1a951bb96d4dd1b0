"""Cross-view consistency benchmark of the samplers on the PerturbedOracle.

For Duck, Avocado and DamagedHelmet (../shared/data/meshes), normalised as render-views does
(bounding-box centre at the origin, longest side 2, +Z up): the oracle's ground truth is unlit
renders of the textured mesh at a Zero123++-like rig (6 views, azimuth 30..330 step 60,
elevations 20 / -10, FoV 30) and the condition view at azimuth 0, elevation 0. Each method
samples views from the oracle and reconstructs splats from them (plus the condition view):

- oneshot: plain 4-step sampling, then one fit (the same total fit budget as aware4);
- aware4:  3D-aware 4-step sampling (fit inside the loop, renders re-noised);
- im3d:    oneshot, then 2 IM-3D rounds (renders re-noised to half the schedule, 2 steps each).

Columns: held-out PSNR of the splats at 8 cameras not in the rig (azimuths 15 + 45 k, elevations
0 / 30) against the truth, on white; cvc: cross-view consistency of the final generated views
(PSNR of colours carried between overlapping views through the TRUE geometry,
engine/sampling/evaluate.py); generator_evals: oracle calls (one call = all views; a guided
Zero123++ step counts 2). ``--truth`` adds a row per object fitted to the undistorted truth views
(the ceiling of every method).

    .venv/bin/python bench/cvc.py [--objects Duck,...] [--size 128] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

from viewforge.engine.io.mesh import read_mesh  # noqa: E402
from viewforge.engine.io.types import Mesh  # noqa: E402
from viewforge.engine.mesh.evaluate import normalisation  # noqa: E402
from viewforge.engine.metrics import psnr  # noqa: E402
from viewforge.engine.mvgen.base import orbit_camera  # noqa: E402
from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle, render_rgba  # noqa: E402
from viewforge.engine.sampling.aware import SamplerConfig, render_views, sample  # noqa: E402
from viewforge.engine.sampling.evaluate import cross_view_consistency  # noqa: E402

MESHES = REPO.parent / "shared" / "data" / "meshes"
OBJECTS = ("Duck", "Avocado", "DamagedHelmet")
METHODS = {"oneshot": "oneshot", "aware4": "aware", "im3d": "im3d"}
DISTANCE, FOV = 4.5, 30.0


def load_object(name: str) -> Mesh:
    paths = sorted(p for p in (MESHES / name).rglob("*") if p.suffix.lower() in (".glb", ".gltf"))
    if not paths:
        raise SystemExit(f"bench/cvc.py: no glTF mesh for {name} under {MESHES}")
    m = read_mesh(paths[0])
    s, off = normalisation(m)
    return Mesh(m.vertices * s + off, m.faces, m.normals, m.uvs, m.colors, m.texture, name=name)


def cameras(size: int):
    rig = [orbit_camera(30 + 60 * i, 20 if i % 2 == 0 else -10, DISTANCE, FOV, size, f"rig{i}") for i in range(6)]
    ref = orbit_camera(0, 0, DISTANCE, FOV, size, "reference")
    held = [orbit_camera(15 + 45 * k, 0 if k % 2 == 0 else 30, DISTANCE, FOV, size, f"held{k}") for k in range(8)]
    return rig, ref, held


def _white(v: np.ndarray) -> np.ndarray:
    return v[..., :3] * v[..., 3:4] + (1.0 - v[..., 3:4])


def run(obj: str, methods: list[str], size: int, seed: int, oracle: OracleConfig, truth_row: bool) -> list[dict]:
    mesh = load_object(obj)
    rig, ref, held = cameras(size)
    truth_held = [_white(render_rgba(mesh, c)) for c in held]
    rows = []
    todo = [("truth", "oneshot")] if truth_row else []
    todo += [(m, METHODS[m]) for m in methods]
    for label, method in todo:
        cfg = oracle if label != "truth" else replace(oracle, warp_px=0.0, color_shift=0.0, blur_sigma=0.0)
        orc = PerturbedOracle.from_mesh(mesh, rig, ref, cfg)
        t = time.perf_counter()
        res = sample(orc, orc.condition_image(), SamplerConfig(method=method, seed=seed))
        secs = time.perf_counter() - t
        renders = render_views(res.splats, held)
        row = {
            "object": obj,
            "method": label,
            "psnr": round(float(np.mean([psnr(_white(r), g) for r, g in zip(renders, truth_held)])), 3),
            "cvc": round(cross_view_consistency(res.views, rig, mesh), 3),
            "generator_evals": res.evaluations,
            "psnr_views": round(float(np.mean([psnr(_white(a), _white(b)) for a, b in zip(res.views, orc.truth)])), 3),
            "seconds": round(secs, 1),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", default=",".join(OBJECTS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--size", type=int, default=128, help="view size in pixels (default 128)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle-seed", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="oracle distortions drawn afresh at every call")
    ap.add_argument("--truth", action="store_true", help="add the fit to undistorted views (the ceiling)")
    ap.add_argument("--json", metavar="PATH", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if not MESHES.is_dir():
        raise SystemExit(f"bench/cvc.py: needs {MESHES} (evaluation data)")
    methods = [m for m in args.methods.split(",") if m]
    bad = set(methods) - set(METHODS)
    if bad:
        raise SystemExit(f"bench/cvc.py: unknown method(s) {sorted(bad)}; use {', '.join(METHODS)}")
    oracle = OracleConfig(seed=args.oracle_seed, persistent=not args.fresh)
    rows = []
    for obj in [o for o in args.objects.split(",") if o]:
        rows += run(obj, methods, args.size, args.seed, oracle, args.truth)
    cols = ["object", "method", "psnr", "cvc", "generator_evals", "psnr_views", "seconds"]
    print(" | ".join(f"{c:>15}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>15}" for c in cols))
    for obj in dict.fromkeys(r["object"] for r in rows):
        by = {r["method"]: r for r in rows if r["object"] == obj}
        if "oneshot" in by and "aware4" in by:
            print(f"{obj}: aware4 - oneshot = {by['aware4']['psnr'] - by['oneshot']['psnr']:+.2f} dB held-out, "
                  f"{by['aware4']['cvc'] - by['oneshot']['cvc']:+.2f} dB cvc")
    if args.json:
        keep = ("object", "method", "psnr", "cvc", "generator_evals")
        Path(args.json).write_text(json.dumps([{k: r[k] for k in keep} for r in rows if r["method"] != "truth"],
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
