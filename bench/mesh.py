"""Benchmark: splats -> textured mesh on Duck, Avocado and DamagedHelmet (../shared/data/meshes).

    .venv/bin/python bench/mesh.py                        # 24 and 4 views, every object
    .venv/bin/python bench/mesh.py --objects Duck --views 24 --json out.json

Each object is rendered once with `viewforge render-views` (Cycles, 256 px, 32 cameras on the
sphere, elevation -20..60 degrees); 8 of the 32 frames are held out (evenly spaced) and N of the
others train (`viewforge reconstruct ... -o OUT.glb --views N --holdout 8 --gt-mesh MESH`, each in
its own process so its timings and peak RSS are its own). Prints chamfer / F-score@0.1 (DESIGN.md
protocol: ground-truth box longest side spanning [-1, 1], 100k samples), the textured mesh's and
the splats' held-out PSNR, faces, and seconds per stage. Targets at 24 views: F-score
>= 0.95, chamfer <= 0.03, mesh PSNR within 2 dB of the splats'.

Mesh PSNR renders the textured mesh the way the reference images were made
(engine/mesh/evaluate.py ``image_formation``): at render-views' 256 px with Cycles' pixel filter
(Blackman-Harris, 1.5 px), then area-resized to the fit size as the loader resized the images.
Diagnostic column "PSNR box": the same mesh rendered directly at the fit size with 3 x 3 samples
and a box filter (a cheaper protocol; docs/mesh.md "What the held-out protocol's pixel
filter costs").
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
MESHES = REPO.parent / "shared" / "data" / "meshes"
OBJECTS = {
    "Duck": "Duck/glTF-Binary/Duck.glb",
    "Avocado": "Avocado/glTF/Avocado.gltf",
    "DamagedHelmet": "DamagedHelmet/glTF-Binary/DamagedHelmet.glb",
}
VIEWFORGE = [sys.executable, "-m", "viewforge"]


def _run(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def box_psnr(glb: Path, transforms: Path, views: int, resolution: int) -> float:
    """Held-out PSNR of the textured mesh rendered at the fit size with 3 x 3 samples per pixel
    and a box filter (diagnostic; see the module doc)."""
    import numpy as np

    from viewforge.engine.io.mesh import read_mesh
    from viewforge.engine.io.posed import load_posed_set
    from viewforge.engine.mesh.raster import render_textured
    from viewforge.engine.metrics import composite_on_white, psnr
    from viewforge.engine.recon import split_views

    mesh = read_mesh(glb)
    posed = load_posed_set(transforms, resolution=resolution)
    _, held = split_views(len(posed), views, 8)
    scores = []
    for i in held:
        gt = composite_on_white(posed.images[i], None if posed.masks is None else posed.masks[i])
        scores.append(psnr(composite_on_white(*render_textured(mesh, posed.cameras[i])), gt))
    return float(np.mean(scores))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", nargs="+", default=list(OBJECTS), choices=list(OBJECTS))
    ap.add_argument("--views", nargs="+", type=int, default=[24, 4])
    ap.add_argument("--render-resolution", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=200, help="fit resolution (default 200)")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--faces", type=int, default=50000)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--work", default=None, help="keep renders and outputs here (default: a temp folder)")
    ap.add_argument("--json", metavar="PATH", default=None)
    args = ap.parse_args()
    missing = [o for o in args.objects if not (MESHES / OBJECTS[o]).is_file()]
    if missing:
        print(f"needs {MESHES} ({', '.join(missing)} missing)", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="viewforge-bench-mesh-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, details = [], []
    for name in args.objects:
        mesh = MESHES / OBJECTS[name]
        posed = work / f"{name}_posed"
        if not (posed / "transforms.json").is_file():
            _run(VIEWFORGE + ["render-views", str(mesh), "-o", str(posed), "--views", "32",
                              "--resolution", str(args.render_resolution)])
        for views in args.views:
            out = work / f"{name}_{views}v.glb"
            metrics = work / f"{name}_{views}v.json"
            wall = _run(VIEWFORGE + [
                "reconstruct", str(posed / "transforms.json"), "-o", str(out), "--views", str(views),
                "--holdout", "8", "--resolution", str(args.resolution), "--iterations", str(args.iterations),
                "--faces", str(args.faces), "--texture-size", str(args.texture_size), "--gt-mesh", str(mesh),
                "--metrics", str(metrics),
            ])
            m = json.loads(metrics.read_text())
            row = {"object": name, "views": views, "chamfer": m["chamfer"], "fscore": m["fscore"],
                   "psnr_mesh": m["psnr"], "psnr_splat": m["psnr_splat"], "faces": m["num_faces"],
                   "seconds": round(wall, 1),
                   "psnr_mesh_box": round(box_psnr(out, posed / "transforms.json", views, args.resolution), 3)}
            rows.append(row)
            details.append((row, m["seconds"], m.get("peak_rss_mb")))
            print(json.dumps(row), file=sys.stderr)
    head = f"{'object':<14}{'views':>6}{'chamfer':>9}{'F@0.1':>8}{'PSNR mesh':>11}{'PSNR splat':>12}{'PSNR box':>11}{'faces':>8}{'seconds':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['object']:<14}{r['views']:>6}{r['chamfer']:>9.4f}{r['fscore']:>8.4f}{r['psnr_mesh']:>11.2f}"
              f"{r['psnr_splat']:>12.2f}{r['psnr_mesh_box']:>11.2f}{r['faces']:>8}{r['seconds']:>9.1f}")
    print("\nseconds per stage (fit = splat optimisation; mesh_* = the mesh stage):")
    for r, sec, rss in details:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in sec.items() if v >= 0.5)
        print(f"  {r['object']} {r['views']} views: {stages}; peak RSS {rss} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
