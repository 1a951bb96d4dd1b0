"""The 3D-aware sampler's anchor against mis-framed and tilted inputs, on the PerturbedOracle.

The oracle plays Zero123++ v1.2: whatever the input's framing, it draws the object normalised to
a radius-0.5 sphere at v1.2's rig (distance 0.5 / tan 15 deg, FoV 30, absolute elevations 20 / -10,
azimuths 30..330). Its truth views are unlit renders of the Duck (../shared/data/meshes) so
normalised. The input "photo" is a 256 px render from azimuth 0 at elevation ``elev`` with the
focal length set so the object's bounding box spans ``fill`` of the frame. Anchors:

- raw: the photo as it is (resized) at the level reference camera: what the fit gets when the
  input is not normalised;
- old: the photo prepared at prep fill 0.8 without recentring, anchored level (elevation 0);
- new: prepared at v1.2's framing (prep fill ``zero123pp.CONDITION_FILL`` = 0.85, the object
  recentred and rescaled from its alpha, so every framing gives the same condition image),
  anchored at the elevation the user gives (``--input-elevation``; here the true one);
- new-level: prepared as new, anchored level (the elevation not given).

Columns: held-out PSNR of the final splats at 8 cameras not in the rig (azimuths 15 + 45 k,
elevations 0 / 30) against the truth, on white; the gap to the same anchor's well-framed input
(fill 0.8, level). ``true_fill``: the fraction the normalised Duck actually spans at the level
reference camera (the shape-dependent framing no fixed fill can match exactly).

    .venv/bin/python bench/anchor.py [--anchors raw,old,new] [--inputs "fill 0.8,fill 0.6"] [--seed S]
        [--size 96] [--fit 400 --warm 150] [--json rows.json]
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
from viewforge.engine.metrics import psnr  # noqa: E402
from viewforge.engine.mvgen import zero123pp  # noqa: E402
from viewforge.engine.mvgen.base import ConditionImage, orbit_camera  # noqa: E402
from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle, render_rgba  # noqa: E402
from viewforge.engine.mvgen.prep import PrepConfig, object_bbox, prepare  # noqa: E402
from viewforge.engine.sampling.aware import SamplerConfig, render_views, sample  # noqa: E402

MESHES = REPO.parent / "shared" / "data" / "meshes"
D, FOV = zero123pp.DISTANCE, zero123pp.FOV_DEG
#: (label, fill, elevation of the photo)
INPUTS = (("fill 0.8", 0.8, 0.0), ("fill 0.6", 0.6, 0.0), ("fill 1.0", 1.0, 0.0), ("tilted 20", 0.8, 20.0))


def load_object(name: str) -> Mesh:
    paths = sorted(p for p in (MESHES / name).rglob("*") if p.suffix.lower() in (".glb", ".gltf"))
    if not paths:
        raise SystemExit(f"bench/anchor.py: no glTF mesh for {name} under {MESHES}")
    m = read_mesh(paths[0])
    v = m.vertices.astype(np.float64)
    c = (v.min(0) + v.max(0)) / 2.0
    s = zero123pp.OBJECT_RADIUS / float(np.linalg.norm(v - c, axis=1).max())  # v1.2: radius-0.5 sphere
    return Mesh(((v - c) * s).astype(np.float32), m.faces, m.normals, m.uvs, m.colors, m.texture, name=name)


def bbox_fill(alpha: np.ndarray) -> float:
    x0, y0, x1, y1 = object_bbox(alpha)
    return max(x1 - x0, y1 - y0) / alpha.shape[0]


def photo(mesh: Mesh, fill: float, elev: float, px: int = 256) -> np.ndarray:
    cam = orbit_camera(0.0, elev, D, FOV, px)
    f0 = bbox_fill(render_rgba(mesh, cam)[..., 3])
    k = fill / f0
    cam = replace(cam, fx=cam.fx * k, fy=cam.fy * k)
    return render_rgba(mesh, cam)


def _white(v: np.ndarray) -> np.ndarray:
    return v[..., :3] * v[..., 3:4] + (1.0 - v[..., 3:4])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--object", default="Duck")
    ap.add_argument("--size", type=int, default=96, help="view size in pixels (default 96)")
    ap.add_argument("--fit", type=int, default=400, help="first fit's iterations (default 400)")
    ap.add_argument("--warm", type=int, default=150, help="later fits' iterations (default 150)")
    ap.add_argument("--anchors", default="raw,old,new")
    ap.add_argument("--inputs", default=",".join(i[0] for i in INPUTS), help="which inputs (labels, comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    mesh = load_object(args.object)
    size = args.size
    rig = [orbit_camera(a, e, D, FOV, size, f"rig{i}") for i, (a, e) in
           enumerate(zip(zero123pp.AZIMUTHS, zero123pp.ELEVATIONS))]
    level = orbit_camera(0.0, 0.0, D, FOV, size, "reference")
    held = [orbit_camera(15 + 45 * k, 0 if k % 2 == 0 else 30, D, FOV, size, f"held{k}") for k in range(8)]
    truth_held = [_white(render_rgba(mesh, c)) for c in held]
    true_fill = bbox_fill(render_rgba(mesh, level)[..., 3])
    orc = PerturbedOracle.from_mesh(mesh, rig, level, OracleConfig(seed=1))
    rows = []
    for anchor in [a for a in args.anchors.split(",") if a]:
        for label, fill, elev in [i for i in INPUTS if i[0] in args.inputs.split(",")]:
            img = photo(mesh, fill, elev)
            given = 0.0
            if anchor == "raw":
                from viewforge.engine.images import resize

                cond = ConditionImage(resize(img, size, size), fill=fill, source=label)
            elif anchor == "old":
                cond = prepare(img, PrepConfig(size=size, fill=0.8, use_rembg=False)).image
            elif anchor in ("new", "new-level"):
                cond = prepare(img, PrepConfig(size=size, fill=zero123pp.CONDITION_FILL, use_rembg=False)).image
                given = elev if anchor == "new" else 0.0
            else:
                raise SystemExit(f"bench/anchor.py: unknown anchor {anchor!r}; use raw, old, new, new-level")
            orc.evaluations = 0
            t = time.perf_counter()
            res = sample(orc, cond, SamplerConfig(method="aware", seed=args.seed, fit_iterations=args.fit,
                                                  warm_iterations=args.warm, input_elevation=given))
            renders = render_views(res.splats, held)
            row = {"anchor": anchor, "input": label, "input_elevation": given,
                   "psnr": round(float(np.mean([psnr(_white(r), g) for r, g in zip(renders, truth_held)])), 2),
                   "seconds": round(time.perf_counter() - t, 1)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    base = {r["anchor"]: r["psnr"] for r in rows if r["input"] == "fill 0.8"}
    for r in rows:
        r["gap"] = round(r["psnr"] - base[r["anchor"]], 2) if r["anchor"] in base else None
    print(f"object {args.object} (radius 0.5), views {size} px, true_fill {true_fill:.3f}, "
          f"fits {args.fit}/{args.warm}, seed {args.seed}")
    cols = ["anchor", "input", "input_elevation", "psnr", "gap", "seconds"]
    print(" | ".join(f"{c:>15}" for c in cols))
    for r in rows:
        print(" | ".join(f"{str(r[c]):>15}" for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps({"true_fill": true_fill, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
