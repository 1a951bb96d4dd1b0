"""Benchmark: seconds to build an engine Mesh as a Blender object (bridge.mesh.mesh_to_blender).

Prints one row per size: the geometry alone, and the full import (UVs, custom normals, vertex
colours and a packed 1024x1024 texture + material). Needs bpy (Blender as a Python module).

    .venv/bin/python bench/import_mesh.py [--faces 10000 100000 1000000] [--repeat 3] [--json OUT.json]

``--json`` writes the rows as a list of objects keyed by column name:
faces, vertices, geometry_s, full_s (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def grid_mesh(faces: int, full: bool):
    """A wavy grid with about ``faces`` triangles (2 per cell)."""
    from viewforge.engine.io.types import Mesh

    n = max(2, int(round(math.sqrt(faces / 2))) + 1)
    xs, ys = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    z = 0.1 * np.sin(4 * xs) * np.cos(3 * ys)
    v = np.stack([xs.ravel(), ys.ravel(), z.ravel()], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    if not full:
        return Mesh(v, f, name="bench")
    rng = np.random.default_rng(0)
    normals = np.tile([0.0, 0.0, 1.0], (len(v), 1))
    return Mesh(
        v, f, normals=normals, uvs=(v[:, :2] + 1) / 2,
        colors=(rng.random((len(v), 4)) * 255).astype(np.uint8),
        texture=(rng.random((1024, 1024, 3)) * 255).astype(np.uint8), name="bench",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)

    import bpy

    from viewforge.bridge.mesh import mesh_to_blender

    rows = []
    for faces in args.faces:
        times = {}
        for full in (False, True):
            mesh = grid_mesh(faces, full)
            best = math.inf
            for _ in range(args.repeat):
                bpy.ops.wm.read_factory_settings(use_empty=True)
                t0 = time.perf_counter()
                mesh_to_blender(mesh)
                best = min(best, time.perf_counter() - t0)
            times[full] = best
        rows.append({"faces": mesh.num_faces, "vertices": mesh.num_vertices, "geometry_s": round(times[False], 4),
                     "full_s": round(times[True], 4)})
    print(f"Blender {bpy.app.version_string}; best of {args.repeat}; full = UVs + custom normals + vertex colours + 1024^2 packed texture")
    print(f"{'faces':>10} {'vertices':>10} {'geometry_s':>11} {'full_s':>8}")
    for r in rows:
        print(f"{r['faces']:>10} {r['vertices']:>10} {r['geometry_s']:>11.3f} {r['full_s']:>8.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
