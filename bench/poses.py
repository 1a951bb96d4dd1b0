"""Benchmark: pose refinement on lego (../shared/data): cameras perturbed by DEG degrees about a
random axis and moved by FRAC of their distance, then refined by --method:

  features              SIFT + guided matching + bundle adjustment on the photos loaded at
                        --feature-resolution (engine/poses/features.py); no splat fit
  features+photometric  `fit_splats(pose_method="features+photometric")`: the features (photos at
                        --feature-resolution), the fit at --resolution with those cameras, then
                        each camera aligned once to the finished model
  photometric           `fit_splats(pose_method="photometric")`: joint corrections + alignment rounds
  true-model            fit with the true poses, then align the perturbed cameras to that model

    .venv/bin/python bench/poses.py --method features                   # 24 views, 400 px
    .venv/bin/python bench/poses.py --method features --views 100
    .venv/bin/python bench/poses.py --method features+photometric       # + fit 100 px, 1500 steps
    .venv/bin/python bench/poses.py --method photometric                # the default fit below
    .venv/bin/python bench/poses.py --method photometric --resolution 64 --iterations 800 \
        --init-points 3000 --no-densify --rounds 0.15 0.3 0.45 0.6 0.75 0.9 --align-steps 60
    .venv/bin/python bench/poses.py --method true-model
    .venv/bin/python bench/poses.py --method sfm                        # 24 photos, no cameras
    .venv/bin/python bench/poses.py --method sparse --resolution 200 --iterations 1500

--method sfm: structure from motion (engine/poses/sfm.py) on every 4th lego photo (--views 24 of
the 100, at --feature-resolution) without their cameras; prints the registered count, the median
rotation error after the best global rotation, the median camera-centre error after the best
similarity (Umeyama) as % of the scene scale (mean distance of the true camera centres from their
centroid) and the seconds.

--method sparse: sparse refinement against a fixed model (engine/poses/sparse.py): splats fitted
(fit_splats, --iterations, --resolution) to every 4th lego view with true cameras (--views of
them), then 4 other photos (not in the fit) with cameras perturbed by DEG / FRAC are refined by
render + SIFT/tracking + PnP, and again with the photometric second stage. The fitted model is
cached in --cache (a .ply per setting). Prints the median rotation error before/after, absolute
and after the best global rotation, per stage.

Prints the median rotation error before/after, absolute and after the best global rotation
(rotation_errors; a refinement fixes the frame only up to a similarity, the feature method maps
its result back onto the input cameras by a similarity). Target: < 0.5 degree median
after alignment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEGO = REPO.parent / "shared" / "data" / "posed" / "lego" / "transforms_train.json"


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--resolution", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--init-points", type=int, default=20000)
    ap.add_argument("--no-densify", action="store_true")
    ap.add_argument("--sh-degree", type=int, default=1)
    ap.add_argument("--rounds", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.65])
    ap.add_argument("--align-steps", type=int, default=100)
    ap.add_argument("--degrees", type=float, default=3.0)
    ap.add_argument("--fraction", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--method", choices=["features", "features+photometric", "photometric", "true-model", "sfm", "sparse"],
                    default="features")
    ap.add_argument("--feature-resolution", type=int, default=400,
                    help="longer side of the photos the feature method works on")
    ap.add_argument("--true-model", action="store_true", help="same as --method true-model")
    ap.add_argument("--json", metavar="PATH", default=None)
    ap.add_argument("--cache", default="/tmp/viewforge_bench_poses", help="--method sparse: fitted model cache")
    ap.add_argument("--photos", type=int, default=4, help="--method sparse: photos refined")
    ap.add_argument("--posed", default=None,
                    help="--method sparse: another posed set (transforms.json or its folder, e.g. from "
                         "`viewforge render-views Duck.glb`): the photos refined are spread evenly, the "
                         "model is fitted on --views of the others")
    ap.add_argument("--sparse-iterations", type=int, default=3, help="--method sparse: render-match-PnP rounds")
    ap.add_argument("--perturb-seed", type=int, default=None, help="--method sparse: perturbation seed (default --seed)")
    ap.add_argument("--no-track", action="store_true", help="--method sparse: SIFT in every round (no tracking)")
    args = ap.parse_args()
    if not LEGO.exists():
        print(f"needs {LEGO}", file=sys.stderr)
        return 2
    import torch

    from viewforge.engine.io.posed import load_posed_set
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors
    from viewforge.engine.poses.photometric import AlignConfig, align_cameras
    from viewforge.engine.poses.refine import fit_splats
    from viewforge.engine.splat.fit import FitConfig

    from viewforge.engine.poses.features import FeatureConfig, refine_poses_features

    method = "true-model" if args.true_model else args.method
    if method == "sfm":
        return bench_sfm(args)
    if method == "sparse":
        return bench_sparse(args)
    posed = load_posed_set(LEGO, resolution=args.resolution)
    ids = [int(i) for i in np.linspace(0, len(posed) - 1, args.views).round()]
    true = [posed.cameras[i] for i in ids]
    images, masks = [posed.images[i] for i in ids], [posed.masks[i] for i in ids]
    noisy = perturb_cameras(true, args.degrees, args.fraction, args.seed)
    before = rotation_errors(noisy, true)
    feature_set = None
    if method.startswith("features"):
        hi = load_posed_set(LEGO, resolution=args.feature_resolution)
        hi_noisy = [c.resized(hi.cameras[i].width, hi.cameras[i].height) for c, i in zip(noisy, ids)]
        feature_set = PosedSet(hi_noisy, [hi.images[i] for i in ids], [hi.masks[i] for i in ids],
                               [hi.names[i] for i in ids])
    t = time.perf_counter()
    cfg = FitConfig(iterations=args.iterations, init_points=args.init_points, sh_degree=args.sh_degree,
                    densify=not args.no_densify, pose_refine=method != "true-model", pose_start=10**9,
                    pose_rounds=tuple(args.rounds), pose_align_steps=args.align_steps, device="cpu",
                    pose_method="photometric" if method == "true-model" else method,
                    pose_features=FeatureConfig(max_size=args.feature_resolution))
    reliable = None
    if method == "true-model":
        model = fit_splats(PosedSet(true, images, masks), cfg).splats
        refined = align_cameras(model, PosedSet(noisy, images, masks),
                                AlignConfig(steps=args.align_steps, max_size=args.resolution),
                                device=torch.device("cpu")).cameras
    elif method == "features":
        res = refine_poses_features(feature_set, cfg.pose_features)
        refined = res.cameras
        reliable = sum(v.reliable for v in res.views)
    else:
        fit = fit_splats(PosedSet(noisy, images, masks), cfg, feature_set=feature_set)
        refined = fit.cameras
        if fit.pose_views is not None:
            reliable = sum(v.reliable for v in fit.pose_views)
    after = rotation_errors(refined, true)
    row = dict(scene="lego", views=args.views, resolution=args.resolution,
               feature_resolution=args.feature_resolution if feature_set is not None else None,
               iterations=args.iterations if method != "features" else 0, method=method,
               rot_err_before=round(before[0], 3), rot_err_before_aligned=round(before[1], 3),
               rot_err_after=round(after[0], 3), rot_err_after_aligned=round(after[1], 3),
               reliable_views=reliable, seconds=round(time.perf_counter() - t, 1))
    width = max(len(k) for k in row)
    for k, v in row.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps([row], indent=2) + "\n")
    return 0


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) with dst ~ s R src + t."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.eye(3)
    if np.linalg.det(u @ vt) < 0:
        d[2, 2] = -1
    r = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / (a ** 2).sum(1).mean())
    return s, r, mu_d - s * r @ mu_s


def bench_sfm(args) -> int:
    from viewforge.engine.io.posed import load_posed_set
    from viewforge.engine.poses.evaluate import rotation_errors
    from viewforge.engine.poses.sfm import SfmConfig, estimate_poses

    gt = load_posed_set(LEGO)
    step = max(1, len(gt) // args.views)
    ids = list(range(0, len(gt), step))[: args.views]
    paths = [LEGO.parent / "train" / f"{gt.names[i]}.png" for i in ids]
    cfg = SfmConfig(max_image_size=args.feature_resolution, seed=args.seed)
    res = estimate_poses(paths, cfg)
    by_name = {gt.names[i]: gt.cameras[i] for i in ids}
    est = res.cameras
    ref = [by_name[n] for n in res.registered]
    rot = rotation_errors(est, ref)[1] if len(est) >= 2 else float("nan")
    s, r, t = _similarity(np.stack([c.center for c in est]), np.stack([c.center for c in ref]))
    centres = np.stack([c.center for c in ref])
    scale = float(np.linalg.norm(centres - centres.mean(0), axis=1).mean())
    moved = (s * np.stack([c.center for c in est]) @ r.T) + t
    terr = float(np.median(np.linalg.norm(moved - centres, axis=1)) / scale * 100)
    row = dict(scene="lego", method="sfm", views=len(ids), feature_resolution=args.feature_resolution,
               registered=len(est), rot_err_after_aligned=round(rot, 3), trans_err_pct=round(terr, 3),
               unregistered=", ".join(res.unregistered) or None, seconds=round(res.seconds["total"], 1))
    width = max(len(k) for k in row)
    for k, v in row.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps([row], indent=2) + "\n")
    return 0


def bench_sparse(args) -> int:
    import torch

    from viewforge.engine.io.posed import load_posed_set
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors
    from viewforge.engine.poses.sparse import SparseRefineConfig, refine_cameras_to_model
    from viewforge.engine.splat.fit import FitConfig, fit_splats
    from viewforge.engine.splat.model import read_splat_ply, write_splat_ply

    torch.set_num_threads(2)
    source = Path(args.posed) if args.posed else LEGO
    scene = source.parent.name if source.name.endswith(".json") else source.name
    posed = load_posed_set(source, resolution=args.resolution)
    if args.posed is None:
        train = list(range(0, len(posed), 4))[: args.views]
        test = [i + 2 for i in np.linspace(0, len(posed) - 4, args.photos).round().astype(int)]
    else:
        test = [int(i) for i in np.linspace(0, len(posed), args.photos, endpoint=False).round() + 1]
        rest = [i for i in range(len(posed)) if i not in test]
        train = [rest[int(k)] for k in np.linspace(0, len(rest) - 1, min(args.views, len(rest))).round()]
    cache = Path(args.cache) / f"{scene}_{args.views}v_{args.resolution}px_{args.iterations}it_seed{args.seed}.ply"
    t = time.perf_counter()
    if cache.exists():
        model = read_splat_ply(cache)
    else:
        sub = PosedSet([posed.cameras[i] for i in train], [posed.images[i] for i in train],
                       [posed.masks[i] for i in train], [posed.names[i] for i in train])
        cfg = FitConfig(iterations=args.iterations, init_points=args.init_points, sh_degree=args.sh_degree,
                        densify=not args.no_densify, device="cpu", seed=args.seed)
        model = fit_splats(sub, cfg).splats
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_splat_ply(model, cache)
    fit_s = time.perf_counter() - t
    true = [posed.cameras[i] for i in test]
    pseed = args.seed if args.perturb_seed is None else args.perturb_seed
    noisy = perturb_cameras(true, args.degrees, args.fraction, pseed)
    photos = PosedSet(noisy, [posed.images[i] for i in test], [posed.masks[i] for i in test],
                      [posed.names[i] for i in test])
    before = rotation_errors(noisy, true)
    rows = []
    for stage, photometric in (("pnp", False), ("pnp+photometric", True)):
        cfg = SparseRefineConfig(device="cpu", photometric=photometric, photometric_size=args.resolution,
                                 photometric_steps=args.align_steps,
                                 iterations=args.sparse_iterations, track_rounds=not args.no_track, seed=args.seed)
        res = refine_cameras_to_model(photos, model, cfg)
        after = rotation_errors(res.cameras, true)
        centre = float(np.median([np.linalg.norm(a.center - b.center) / np.linalg.norm(b.center)
                                  for a, b in zip(res.cameras, true)]) * 100)
        rows.append(dict(scene=scene, method=f"sparse:{stage}", rounds=args.sparse_iterations,
                         tracking=not args.no_track, fit_views=len(train), photos=len(test),
                         resolution=args.resolution, iterations=args.iterations, degrees=args.degrees,
                         fraction=args.fraction, perturb_seed=pseed, rot_err_before=round(before[0], 3),
                         rot_err_before_aligned=round(before[1], 3), rot_err_after=round(after[0], 3),
                         rot_err_after_aligned=round(after[1], 3), centre_err_pct=round(centre, 3),
                         reliable_views=sum(v.reliable for v in res.views),
                         inliers=[v.observations for v in res.views],
                         rms_px=[round(v.rms_px, 2) for v in res.views],
                         fit_seconds=round(fit_s, 1), seconds=round(res.seconds["total"], 1)))
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    for k in keys:
        print(f"{k:<{width}}  " + "  |  ".join(str(r[k]) for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
