"""Sparse-photo benchmark: reconstruction only vs generative completion with and without RVC
(issue 7 [F]) on the PerturbedOracle (issue 6 [E]).

For Duck, Avocado and DamagedHelmet (../shared/data/meshes, normalised as render-views does:
box centre at the origin, longest side 2, +Z up):

- **Photos** (``--photos 2,4``): unlit renders of the textured mesh, 480 px (used at 160 px by the
  fits, at 480 by the pose refinement), FoV 35, distance 4,
  all on the FRONT side of the object (the -Y side; Blender's front view), so the back is seen by
  no photo and completion has something to complete: 2 photos at azimuths -25 / +25 degrees,
  elevation 15; 4 photos at -50 / -15 / +15 / +50, elevations 10 / 30 / 10 / 30.
- **Cameras**: "known" (the true cameras) or "perturbed" (each rotated by 3 degrees about a random
  axis through its centre, engine/poses/evaluate.py ``perturb_cameras``, seed 0; no translation).
- **Generator**: the PerturbedOracle with a Zero123++-like rig (6 views of 128 px, azimuth 30..330
  step 60, elevations 20 / -10, FoV 30, in its own frame) whose truth is rendered at the rig
  placed from the TRUE reference camera (``PerturbedOracle.for_photos``): a real generator sees
  the photo, taken at the true camera. Completion places the rig from the cameras it is given.
- **Methods**: recon (fit the photos only, the existing fit + mesh stage, completion's fit budget:
  the first fit, 3 warm fits and the final warm fit, in one run), complete
  (engine/complete.py, RVC off; since session 7 its model ends with the warm fit RVC's ends with:
  equal fit budgets), complete_rvc (RVC on, lambda 0.1).
- **Pose refinement** (perturbed rows, unless ``--no-refine``): ``CompleteConfig(refine_cameras=
  True)``: the photos against each other before sampling (engine/poses/sparse.py
  ``refine_photo_rig``); photos that do not match keep their poses (the fallback against the
  model is off). recon: the same stage before its fit.

Columns: rot_err_before/after: median rotation error (degrees) of the input cameras used vs the
true ones, absolute; rot_err_aligned_before/after: the same after the best global rotation (the
meaningful figure: every input, photos' cameras and the generator's views relative to the
reference photo, carries only the perturbed cameras' world frame, so a global rotation of about
3 / sqrt(n) degrees is unobservable); psnr_heldout: the splats at 8 cameras around the object
(azimuths 15 + 45 k, elevations 0 / 30, distance 4.5, FoV 30, 128 px) against the truth, on
white; psnr_heldout_aligned: the same after the similarity that best maps the cameras used onto
the true ones (``features.similarity_to``: centres and optical axes), applied to the held-out
cameras (the usual pose-free novel-view protocol; equal to psnr_heldout up to the similarity's
residual with known cameras); psnr_heldout_photometric (``--photometric``, else null): the aligned
held-out rig further moved by the small rigid motion that maximises the model's held-out PSNR
(test-time pose alignment: the model's frame follows the refined reference camera's own error,
which the camera similarity does not remove; docs/completion.md), photometric_deg that motion's
rotation; psnr_inputs: the
splats at the input cameras as used (perturbed or refined) against the photos, on white;
chamfer / fscore: the mesh against the ground truth (engine/mesh/evaluate.py, DESIGN.md's
protocol: 100k samples, the truth's box normalised to [-1, 1], F at r = 0.1).

    .venv/bin/python bench/sparse.py [--objects Duck,...] [--photos 2,4] [--cameras known,perturbed]
        [--methods recon,complete,complete_rvc] [--quick] [--no-mesh] [--no-refine] [--seed S]
        [--photometric] [--json rows.json]
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

from viewforge.engine.io.types import Mesh, PosedSet  # noqa: E402
from viewforge.engine.mesh.evaluate import chamfer_fscore  # noqa: E402
from viewforge.engine.metrics import psnr  # noqa: E402
from viewforge.engine.mvgen.base import orbit_camera  # noqa: E402
from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle, render_rgba  # noqa: E402
from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors  # noqa: E402
from viewforge.engine.poses.features import similarity_to, transform_cameras  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from cvc import MESHES, _white, load_object  # noqa: E402  (the same objects, normalised the same way)
OBJECTS = ("Duck", "Avocado", "DamagedHelmet")
METHODS = ("recon", "complete", "complete_rvc")
COLUMNS = ("object", "photos", "cameras", "method", "rot_err_before", "rot_err_after", "rot_err_aligned_before",
           "rot_err_aligned_after", "psnr_heldout", "psnr_heldout_aligned", "psnr_heldout_photometric",
           "photometric_deg", "psnr_inputs", "chamfer", "fscore")
LAYOUTS = {2: [(-25, 15), (25, 15)], 4: [(-50, 10), (-15, 30), (15, 10), (50, 30)]}
PHOTO_SIZE, PHOTO_DIST, PHOTO_FOV = 160, 4.0, 35.0
#: Photos are rendered at this size; the fits use them at PHOTO_SIZE, the pose refinement at up
#: to 512 px (SIFT finds too little on 160 px thumbnails).
PHOTO_RENDER = 480
RIG_DIST, RIG_FOV = 4.5, 30.0


def photos_of(mesh: Mesh, n: int) -> PosedSet:
    cams = [orbit_camera(a, e, PHOTO_DIST, PHOTO_FOV, PHOTO_RENDER, f"photo{i}") for i, (a, e) in enumerate(LAYOUTS[n])]
    rend = [render_rgba(mesh, c) for c in cams]
    return PosedSet(cams, [np.ascontiguousarray(r[..., :3]) for r in rend],
                    [np.ascontiguousarray(r[..., 3]) for r in rend], [c.name for c in cams])


def _refine_available() -> bool:
    try:
        from viewforge.engine.poses import sparse  # noqa: F401
    except ImportError:
        return False
    return True


def _mean_psnr(renders, truths) -> float:
    return float(np.mean([psnr(_white(r), _white(t)) for r, t in zip(renders, truths)]))


def photometric_heldout(splats, cams, truths, centre: np.ndarray, evals: int = 160,
                        bound: float = 10.0) -> tuple[float, float]:
    """Held-out PSNR after the test-time pose alignment of pose-free novel-view evaluation: the
    held-out rig ``cams`` (already in the model's frame) moved by the small rigid motion (3
    rotations about ``centre``, 3 translations; scipy Powell, at most ``evals`` evaluations) that
    maximises the model's mean PSNR against ``truths``. Each rotation component is bounded by
    ``bound`` degrees and each translation by ``bound`` degrees' worth at the rig's distance
    (unbounded, the search can wander to a far optimum: once 97 degrees on DamagedHelmet 2).
    Returns (PSNR, the motion's rotation in degrees); never below the PSNR at ``cams`` (the
    start)."""
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    from viewforge.engine.sampling.aware import render_views

    unit = float(np.median([np.linalg.norm(c.center - centre) for c in cams])) * np.radians(1.0)

    def moved(x: np.ndarray):  # x: 3 rotation degrees, 3 translations in "1 degree at the rig's distance"
        m = np.eye(4)
        m[:3, :3] = Rotation.from_rotvec(np.radians(x[:3])).as_matrix()
        m[:3, 3] = centre + unit * x[3:] - m[:3, :3] @ centre
        return [c.with_pose(c.world_to_camera @ m) for c in cams]

    def cost(x: np.ndarray) -> float:
        return -_mean_psnr(render_views(splats, moved(x)), truths)

    start = cost(np.zeros(6))
    res = minimize(cost, np.zeros(6), method="Powell", bounds=[(-bound, bound)] * 6,
                   options={"maxfev": evals, "xtol": 0.02, "ftol": 1e-4})
    if res.fun >= start:
        return -start, 0.0
    return float(-res.fun), float(np.linalg.norm(res.x[:3]))


def run_recon(photos: PosedSet, settings: dict, refine: bool, seed: int):
    """Photos only: the existing fit (completion's fit budget: the first fit, the sampler's 3 warm
    fits and the final warm fit), optionally at the cameras refined against each other."""
    from viewforge.engine.complete import prepare_photos, refine_photos_first
    from viewforge.engine.sampling.aware import SAMPLER_FIT
    from viewforge.engine.splat.fit import fit_splats

    ph = prepare_photos(photos, PHOTO_SIZE)
    note = None
    if refine:  # the photos against each other, as completion does before sampling
        ph, note = refine_photos_first(photos, ph, None, None)
        note = note or "input poses kept"
    budget = settings["fit_iterations"] + 4 * settings["warm_iterations"]
    cfg = replace(SAMPLER_FIT, iterations=budget, device="cpu", seed=seed)
    splats = fit_splats(ph, cfg).splats
    cams = list(ph.cameras)
    return splats, ph, cams, note


def run(obj: str, n_photos: int, cameras: str, methods: list[str], settings: dict, seed: int,
        mesh_cfg: dict, refine_perturbed: bool = True, oracle_seed: int = 1, photometric: bool = False) -> list[dict]:
    from viewforge.engine.complete import CompleteConfig, complete
    from viewforge.engine.mesh.pipeline import MeshConfig, splats_to_mesh
    from viewforge.engine.sampling.aware import render_views

    mesh = load_object(obj)
    size = settings["size"]
    rig = [orbit_camera(30 + 60 * i, 20 if i % 2 == 0 else -10, RIG_DIST, RIG_FOV, size, f"rig{i}") for i in range(6)]
    ref = orbit_camera(0, 0, RIG_DIST, RIG_FOV, size, "reference")
    held = [orbit_camera(15 + 45 * k, 0 if k % 2 == 0 else 30, RIG_DIST, RIG_FOV, 128, f"held{k}") for k in range(8)]
    truth_held = [render_rgba(mesh, c) for c in held]
    true_photos = photos_of(mesh, n_photos)
    if cameras == "perturbed":
        cams = perturb_cameras(true_photos.cameras, 3.0, 0.0, seed=seed)
        photos = PosedSet(cams, true_photos.images, true_photos.masks, true_photos.names)
    else:
        photos = true_photos
    err_before, al_before = rotation_errors(photos.cameras, true_photos.cameras)
    refine = cameras == "perturbed" and refine_perturbed
    rows = []
    for method in methods:
        t = time.perf_counter()
        if method == "recon":
            splats, used, cams_used, note = run_recon(photos, settings, refine, seed)
            bake = used
        else:
            orc = PerturbedOracle.for_photos(mesh, true_photos, rig, ref, OracleConfig(seed=oracle_seed), photo_size=PHOTO_SIZE)
            cfg = CompleteConfig(device="cpu", seed=seed, rvc=method == "complete_rvc", photo_size=PHOTO_SIZE,
                                 fit_iterations=settings["fit_iterations"], warm_iterations=settings["warm_iterations"],
                                 rvc_steps=settings["rvc_steps"], refine_cameras=refine, make_mesh=False)
            res = complete(photos, None, cfg, generator=orc)
            splats, used, cams_used, note = res.splats, res.photos, res.cameras, res.metrics["cameras_refined"]
            bake = PosedSet(list(used.cameras) + list(res.rig.cameras),
                            list(used.images) + [np.ascontiguousarray(v[..., :3]) for v in res.views],
                            list(used.masks) + [np.ascontiguousarray(v[..., 3]) for v in res.views])
        fit_s = time.perf_counter() - t
        err_after, al_after = rotation_errors(cams_used, true_photos.cameras)
        p_held = _mean_psnr(render_views(splats, held), truth_held)
        # held-out cameras moved into the model's frame: the similarity true -> used
        to_used = similarity_to(true_photos.cameras, [c.resized(t.width, t.height)
                                                      for c, t in zip(cams_used, true_photos.cameras)])
        held_used = transform_cameras(held, to_used)
        p_held_al = _mean_psnr(render_views(splats, held_used), truth_held)
        p_held_ph = ph_deg = None
        if photometric:
            p_held_ph, ph_deg = photometric_heldout(splats, held_used, truth_held, to_used[:3, 3].copy())
        inputs = [np.concatenate([i, m[..., None]], 2) for i, m in zip(used.images, used.masks)]
        p_in = _mean_psnr(render_views(splats, used.cameras), inputs)
        chamfer = fscore = None
        if mesh_cfg is not None:
            mres = splats_to_mesh(splats, bake, MeshConfig(device="cpu", **mesh_cfg), name=f"{obj}_{method}")
            cf = chamfer_fscore(mres.mesh, mesh)
            chamfer, fscore = round(cf["chamfer"], 4), round(cf["fscore"], 4)
        row = {"object": obj, "photos": n_photos, "cameras": cameras, "method": method,
               "rot_err_before": round(err_before, 3), "rot_err_after": round(err_after, 3),
               "rot_err_aligned_before": round(al_before, 3), "rot_err_aligned_after": round(al_after, 3),
               "psnr_heldout": round(p_held, 3), "psnr_heldout_aligned": round(p_held_al, 3),
               "psnr_heldout_photometric": None if p_held_ph is None else round(p_held_ph, 3),
               "photometric_deg": None if ph_deg is None else round(ph_deg, 2),
               "psnr_inputs": round(p_in, 3), "chamfer": chamfer, "fscore": fscore,
               "seconds": round(time.perf_counter() - t, 1), "fit_seconds": round(fit_s, 1), "note": note}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", default=",".join(OBJECTS))
    ap.add_argument("--photos", default="2,4", help="photo counts (2 and/or 4)")
    ap.add_argument("--cameras", default="known,perturbed")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--quick", action="store_true",
                    help="small fits (300 + 3 x 100 steps, RVC 50 steps), 96 px views, a light mesh")
    ap.add_argument("--no-mesh", action="store_true", help="skip the mesh stage (chamfer/fscore null)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fits and the perturbation (default 0)")
    ap.add_argument("--oracle-seed", type=int, default=1, help="seed of the PerturbedOracle's distortions (default 1)")
    ap.add_argument("--no-refine", action="store_true", help="perturbed rows without pose refinement (the baseline)")
    ap.add_argument("--photometric", action="store_true",
                    help="also psnr_heldout_photometric: held-out after a test-time rigid alignment (slower)")
    ap.add_argument("--json", metavar="PATH", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if not MESHES.is_dir():
        raise SystemExit(f"bench/sparse.py: needs {MESHES} (evaluation data)")
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        raise SystemExit(f"bench/sparse.py: unknown method(s) {sorted(set(methods) - set(METHODS))}; use {METHODS}")
    photos = [int(p) for p in args.photos.split(",") if p]
    if set(photos) - set(LAYOUTS):
        raise SystemExit(f"bench/sparse.py: --photos takes {sorted(LAYOUTS)}")
    cams = [c for c in args.cameras.split(",") if c]
    if set(cams) - {"known", "perturbed"}:
        raise SystemExit("bench/sparse.py: --cameras takes known,perturbed")
    if args.quick:
        settings = {"size": 96, "fit_iterations": 300, "warm_iterations": 100, "rvc_steps": 50}
        mesh_cfg = {"faces": 5000, "texture_size": 256, "grid": 96, "fuse_views": 24, "fuse_size": 128,
                    "bake_render_views": 4, "texture_refine_iterations": 0}
    else:
        settings = {"size": 128, "fit_iterations": 1000, "warm_iterations": 300, "rvc_steps": 100}
        mesh_cfg = {"faces": 10000, "texture_size": 512, "grid": 128, "bake_render_views": 8,
                    "texture_refine_iterations": 0}
    if args.no_mesh:
        mesh_cfg = None
    if not _refine_available() and "perturbed" in cams:
        print("bench/sparse.py: engine/poses/sparse.py is absent: perturbed rows are not refined "
              "(rot_err_after = rot_err_before)", file=sys.stderr)
    rows = []
    for obj in [o for o in args.objects.split(",") if o]:
        for n in photos:
            for c in cams:
                rows += run(obj, n, c, methods, settings, args.seed, mesh_cfg, not args.no_refine, args.oracle_seed,
                            args.photometric)
    print(" | ".join(f"{c:>14}" for c in COLUMNS))
    for r in rows:
        print(" | ".join(f"{str(r[c]):>14}" for c in COLUMNS))
    for key in dict.fromkeys((r["object"], r["photos"], r["cameras"]) for r in rows):
        by = {r["method"]: r for r in rows if (r["object"], r["photos"], r["cameras"]) == key}
        if "complete" in by and "complete_rvc" in by:
            a, b = by["complete"], by["complete_rvc"]
            line = (f"{key[0]} {key[1]} photos {key[2]}: RVC - no RVC = {b['psnr_inputs'] - a['psnr_inputs']:+.2f} dB "
                    f"at the inputs, {b['psnr_heldout'] - a['psnr_heldout']:+.2f} dB held-out")
            if a["psnr_heldout_photometric"] is not None and b["psnr_heldout_photometric"] is not None:
                line += f", {b['psnr_heldout_photometric'] - a['psnr_heldout_photometric']:+.2f} dB held-out photometric"
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps([{k: r[k] for k in COLUMNS} for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
