"""A few photos refined against each other (engine/poses/sparse.py ``refine_photo_rig``, the first
stage of completion's pose refinement): rotation error after the best global rotation, from
cameras rotated 3 degrees about their centres, for one or more outlier thresholds
(``PhotoRigConfig.outlier_px``), on

- **bench**: bench/sparse.py's photos of Avocado and DamagedHelmet (2 and 4 photos, seeds 0-2;
  Duck's photos do not match);
- **lego**, **fox**: ../shared/data/posed (lego: 24 renders with masks; fox: real phone photos,
  no masks), at 512 px: 8 groups of ``--views`` views (a drawn view and its nearest neighbours
  whose optical axes are 15-60 degrees from it), seeds 0-1.

``--vergence OBJ`` instead measures bench/sparse.py's 2-photo layout of OBJ at the true cameras:
the matches' reprojection RMS (points re-triangulated) when both cameras pan towards each other
(the two-view blind direction, docs/poses.md section 3) against one camera panning alone.

    .venv/bin/python bench/pose_rig.py [--sets bench,lego,fox] [--views 2,3] [--outlier 4,1.5]
    .venv/bin/python bench/pose_rig.py --vergence DamagedHelmet
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO.parent))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

from viewforge.engine.io.types import PosedSet  # noqa: E402
from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors  # noqa: E402

POSED = REPO.parent / "shared" / "data" / "posed"
SETS = {"lego": POSED / "lego" / "transforms_train.json", "fox": POSED / "fox_photos" / "transforms_subset40.json"}


def bench_rows():
    """(label, true PosedSet, seed) for bench/sparse.py's Avocado / DamagedHelmet layouts."""
    from cvc import load_object
    from sparse import photos_of

    from viewforge.engine.complete import prepare_photos

    for obj in ("Avocado", "DamagedHelmet"):
        mesh = load_object(obj)
        for n in (2, 4):
            true = prepare_photos(photos_of(mesh, n), 512)
            for seed in (0, 1, 2):
                yield f"{obj} {n} photos", true, seed


def group_rows(name: str, views: int):
    """(label, true PosedSet, seed) for 8 groups of ``views`` neighbouring views of a posed set."""
    from viewforge.engine.io.posed import load_posed_set

    ps = load_posed_set(SETS[name], resolution=512)
    axes = np.stack([c.R[2] for c in ps.cameras])
    ang = np.degrees(np.arccos(np.clip(axes @ axes.T, -1.0, 1.0)))
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(ps))[:8]:
        near = [int(j) for j in np.argsort(ang[i]) if 15 < ang[i, j] < 60][: views - 1]
        if len(near) < views - 1:
            continue
        g = [int(i)] + near
        sub = PosedSet([ps.cameras[j] for j in g], [ps.images[j] for j in g],
                       None if ps.masks is None else [ps.masks[j] for j in g], [ps.names[j] for j in g])
        for seed in (0, 1):
            yield f"{name} {views} views {g}", sub, seed


def compare(rows, thresholds: list[float]) -> dict[float, list[float]]:
    from viewforge.engine.poses.sparse import PhotoRigConfig, refine_photo_rig

    out: dict[float, list[float]] = {o: [] for o in thresholds}
    for label, true, seed in rows:
        cams = perturb_cameras(true.cameras, 3.0, 0.0, seed=seed)
        posed = PosedSet(cams, true.images, true.masks, true.names)
        line = f"{label} seed {seed}: input {rotation_errors(cams, true.cameras)[1]:.2f}"
        for o in thresholds:
            res = refine_photo_rig(posed, PhotoRigConfig(outlier_px=o))
            err = rotation_errors(res.cameras, true.cameras)[1]
            out[o].append(err)
            line += f" | outlier {o:g}: {err:.2f}" + ("" if all(res.refined) else f" ({sum(res.refined)} refined)")
        print(line, flush=True)
    return out


def summary(title: str, out: dict[float, list[float]]) -> None:
    print(f"\n{title}")
    print("| outlier_px | rows | median | mean | max | <= 0.5 |")
    print("|---|---|---|---|---|---|")
    for o, v in out.items():
        a = np.asarray(v)
        print(f"| {o:g} | {len(a)} | {np.median(a):.3f} | {a.mean():.3f} | {a.max():.2f} | {int((a <= 0.5).sum())} |")


def vergence(obj: str) -> None:
    from cvc import load_object
    from scipy.spatial.transform import Rotation
    from sparse import photos_of

    from viewforge.engine.complete import prepare_photos
    from viewforge.engine.poses import features as F

    true = prepare_photos(photos_of(load_object(obj), 2), 512)
    cams = list(true.cameras)
    cfg = F.FeatureConfig(max_size=512, sift_contrast=0.005, min_pair_inliers=8)
    feats = F.detect_features(true, cfg)
    matches = F.match_pairs(feats, F.select_pairs(cams, cfg), cfg, cameras=cams, band_px=0.01 * 512)
    tracks = F.build_tracks(feats, matches)

    def panned(c, deg):  # about the camera's own vertical axis, through its centre
        R = Rotation.from_rotvec([0.0, np.radians(deg), 0.0]).as_matrix() @ c.R
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, -R @ c.center
        return c.with_pose(m)

    def rms(cs):
        pts, _ = F.triangulate(cs, tracks, 0.0)
        return float(np.sqrt(np.mean(np.minimum(F._reprojection(cs, tracks, pts), 3.0) ** 2)))

    print(f"{obj}, 2 photos, true cameras, {tracks.num_points} matched points; reprojection RMS (px, clipped at 3):")
    print("| relative pan (deg) | both cameras (vergence) | one camera |")
    print("|---|---|---|")
    for d in (0, 1, 2, 3, 5):
        print(f"| {d} | {rms([panned(cams[0], d / 2), panned(cams[1], -d / 2)]):.3f} | "
              f"{rms([cams[0], panned(cams[1], -d)]):.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="bench,lego,fox")
    ap.add_argument("--views", default="2,3", help="group sizes for lego / fox")
    ap.add_argument("--outlier", default="4,1.5", help="PhotoRigConfig.outlier_px values to compare")
    ap.add_argument("--vergence", metavar="OBJ", default=None)
    args = ap.parse_args(argv)
    if args.vergence:
        vergence(args.vergence)
        return 0
    thresholds = [float(x) for x in args.outlier.split(",") if x]
    for name in [s for s in args.sets.split(",") if s]:
        if name == "bench":
            summary("bench/sparse.py photos (Avocado, DamagedHelmet; 2 and 4 photos; seeds 0-2)",
                    compare(bench_rows(), thresholds))
            continue
        if name not in SETS:
            raise SystemExit(f"bench/pose_rig.py: unknown set {name!r}; use bench, {', '.join(SETS)}")
        if not SETS[name].is_file():
            raise SystemExit(f"bench/pose_rig.py: needs {SETS[name]} (evaluation data)")
        for k in [int(v) for v in args.views.split(",") if v]:
            summary(f"{name}, groups of {k} views (seeds 0-1)", compare(group_rows(name, k), thresholds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
