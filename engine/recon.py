"""Reconstruction job: posed set -> fitted splats -> (for mesh outputs) a UV-textured mesh, with
held-out metrics, as ``viewforge reconstruct`` runs it."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputError
from .io.atomic import atomic_file, check_output_path
from .io.formats import IMAGE_SUFFIXES
from .io.types import PosedSet
from .mvgen import DEFAULT_MODEL
from .presets import completion_iterations
from .progress import CancelToken, ProgressCallback, check

log = logging.getLogger(__name__)

SPLAT_SUFFIXES = (".ply",)
#: Longer image side of the photos the feature pose refinement works on (when stored larger).
FEATURE_RESOLUTION = 400
#: Photo files of a folder without cameras (structure from motion).
PHOTO_SUFFIXES = IMAGE_SUFFIXES
#: Most training photos for which ``complete="auto"`` generates the unseen sides.
COMPLETE_MAX_PHOTOS = 4
#: Values of ReconConfig.complete.
COMPLETE_MODES = ("auto", "on", "off")
#: Mesh outputs the engine writes itself (.blend is written by the command line through bpy).
MESH_SUFFIXES = (".glb",)


@dataclass(frozen=True)
class ReconConfig:
    """views: training views (None = every frame not held out). holdout: held-out views for
    metrics. resolution: longer image side in pixels (None = as stored). iterations, device,
    seed: see FitConfig. pose_refine: refine the cameras jointly. faces: face budget of the mesh
    (mesh outputs only). texture_size: side of the baked base-colour texture in pixels.
    bake_resolution: longer side of the photos the texture is baked from (None: as stored;
    never below ``resolution``). gt_mesh: ground-truth mesh for chamfer/F-score in the metrics
    (in the posed set's frame, or mapped into it by a ``normalization`` entry of transforms.json).
    mesh: extra settings of the mesh stage (MeshConfig fields other than faces and texture_size).
    complete: generative completion of the sides no photo saw (engine/complete.py): "auto"
    (default) with at most COMPLETE_MAX_PHOTOS training photos when the generator's weights are
    there (otherwise a warning and the photos alone); "on" always (missing weights are an error);
    "off" never. model, allow_download: the generator and whether its weights may be fetched.
    rvc: rendering-aware velocity compensation during completion (default on)."""

    views: int | None = None
    holdout: int = 0
    resolution: int | None = 200
    iterations: int = 3000
    device: str = "auto"
    seed: int = 0
    pose_refine: bool = False
    faces: int = 50000
    texture_size: int = 2048
    bake_resolution: int | None = 1024
    gt_mesh: str | None = None
    mesh: dict[str, Any] = field(default_factory=dict)
    complete: str = "auto"
    model: str = DEFAULT_MODEL
    allow_download: bool = False
    rvc: bool = True


@dataclass
class ReconResult:
    """output: the file written. metrics: DESIGN.md's metrics JSON (plus views, holdout, ...).
    splats: the fitted Gaussians. mesh: the textured mesh (mesh outputs only). cameras: the
    training cameras as fitted (refined when pose refinement was on)."""

    output: Path
    metrics: dict[str, Any]
    train_names: list[str] = field(default_factory=list)
    heldout_names: list[str] = field(default_factory=list)
    splats: Any = None
    mesh: Any = None
    cameras: list = field(default_factory=list)


def camera_changes(before: list, after: list, names: list[str]) -> list[dict[str, Any]]:
    """What pose refinement did to each training camera, for the metrics' ``cameras`` entry (the
    add-on applies them to the scene's cameras on request): name, rotation_deg (the angle between
    the input and the refined orientation), moved (distance between the centres, scene units) and
    camera_to_world_gl (the refined pose as a 4x4 camera-to-world matrix, OpenGL/Blender camera
    axes: the camera looks down -Z with +Y up)."""
    from .cameras import rotation_angle_deg

    return [{"name": n, "rotation_deg": round(rotation_angle_deg(a.R, b.R), 4),
             "moved": round(float(np.linalg.norm(a.center - b.center)), 6),
             "camera_to_world_gl": np.round(b.camera_to_world_gl, 9).tolist()}
            for n, a, b in zip(names, before, after)]


def split_views(n_frames: int, views: int | None, holdout: int) -> tuple[list[int], list[int]]:
    """Deterministic split: ``holdout`` frames evenly spaced over all frames are held out (offset
    half a step, so frame 0 trains), then ``views`` training frames evenly spaced over the rest."""
    if holdout < 0 or (views is not None and views < 1):
        raise InputError("--views must be >= 1 and --holdout >= 0", "give a positive number of views")
    if holdout >= n_frames:
        raise InputError(
            f"--holdout {holdout} leaves no training view of {n_frames} frames", "lower --holdout"
        )
    held = sorted({int(i) for i in ((np.arange(holdout) + 0.5) * n_frames / max(holdout, 1)).astype(int)}) if holdout else []
    rest = [i for i in range(n_frames) if i not in held]
    if views is None or views >= len(rest):
        if views is not None and views > len(rest):
            raise InputError(
                f"--views {views} with --holdout {holdout} needs {views + holdout} frames, the set has {n_frames}",
                "lower --views or --holdout",
            )
        return rest, held
    pick = np.linspace(0, len(rest) - 1, views).round().astype(int)
    return [rest[i] for i in pick], held


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where the OS does not say: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _subset(posed: PosedSet, ids: list[int]) -> PosedSet:
    return PosedSet(
        [posed.cameras[i] for i in ids],
        [posed.images[i] for i in ids],
        None if posed.masks is None else [posed.masks[i] for i in ids],
        [posed.names[i] for i in ids],
        posed.meta,
    )


def evaluate_views(splats, posed: PosedSet | None, device="auto") -> dict[str, float | None]:
    """Mean PSNR/SSIM of the splats rendered on white vs the images composited on white (device:
    the job's torch.device or a name)."""
    from .metrics import view_scores
    from .splat.fit import render_splats

    if posed is None or len(posed) == 0:
        return view_scores([], [])
    outs = render_splats(splats, posed.cameras, background=(1.0, 1.0, 1.0), device=device)
    return view_scores([o["rgb"] for o in outs], posed.images, posed.masks)


def wants_completion(mode: str, photos: int) -> bool:
    """Whether completion mode ``mode`` ("auto", "on", "off") completes ``photos`` training photos."""
    return mode == "on" or (mode == "auto" and photos <= COMPLETE_MAX_PHOTOS)


def photo_folder_images(path: str | os.PathLike) -> list[Path] | None:
    """The photos (sorted by name) of a folder that holds no transforms.json; None for a
    transforms.json or a folder that has one (a posed set)."""
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "transforms.json").is_file():
        return None
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES)


def estimate_posed_set(photos: list[Path], out_dir: Path, *, progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None) -> tuple[Path, dict[str, Any]]:
    """Photos without cameras -> their cameras by structure from motion (engine/poses/sfm.py),
    written as a posed set in ``out_dir``; returns its transforms.json and a summary for the
    metrics (registered, unregistered with the reason, duplicates, per-view reliability)."""
    from .poses.sfm import SfmConfig, estimate_poses, write_sfm_result

    res = estimate_poses(photos, SfmConfig(), progress=progress, cancel=cancel)
    folder = Path(write_sfm_result(res, out_dir))
    summary = {
        "photos": len(photos),
        "registered": res.registered,
        "unregistered": dict(res.unregistered),
        "duplicates": dict(res.duplicates),
        "views": [{"name": n, "score": round(float(v.score), 3), "reliable": bool(v.reliable),
                   "rms_px": round(float(v.rms_px), 3)} for n, v in zip(res.registered, res.views)],
        "warnings": list(res.warnings),
        "seconds": {k: round(v, 3) for k, v in res.seconds.items()},
    }
    return folder / "transforms.json", summary


def reconstruct(
    transforms: str | os.PathLike,
    output: str | os.PathLike,
    config: ReconConfig = ReconConfig(),
    *,
    metrics_path: str | os.PathLike | None = None,
    splats_path: str | os.PathLike | None = None,
    cameras_path: str | os.PathLike | None = None,
    fit_overrides: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ReconResult:
    """:func:`reconstruct_posed` of a posed set (``transforms``: a transforms.json or its folder),
    or of a folder of photos without cameras: their cameras are estimated first (structure from
    motion, :func:`estimate_posed_set`); with ``cameras_path`` that posed set (transforms.json +
    the undistorted photos) is also written there, a folder that must not exist yet. The metrics
    then have an ``sfm`` entry. Nothing is written at any path on failure or cancel."""
    photos = photo_folder_images(transforms)
    if photos is None:
        if cameras_path is not None:
            raise InputError("estimated cameras can only be written for a folder of photos without cameras",
                             "give the photo folder as the input, or leave out the cameras output")
        return reconstruct_posed(transforms, output, config, metrics_path=metrics_path, splats_path=splats_path,
                                 fit_overrides=fit_overrides, progress=progress, cancel=cancel)
    import shutil
    import tempfile

    if not photos:
        raise InputError(
            f"{transforms}: the folder has neither a transforms.json nor photos",
            f"give a transforms.json, its folder, or a folder of photos ({', '.join(PHOTO_SUFFIXES)})",
        )
    check_output_path(output)
    cam_dir = None
    if cameras_path is not None:
        cam_dir = Path(cameras_path).expanduser().absolute()
        if cam_dir.exists():
            raise OutputError(f"{cam_dir} already exists", "give a new folder for the estimated cameras")
        if not cam_dir.parent.is_dir():
            raise OutputError(f"the folder {cam_dir.parent} does not exist", "create it or choose another folder")
    with tempfile.TemporaryDirectory(prefix="viewforge-sfm-") as tmp:
        posed_path, sfm = estimate_posed_set(photos, Path(tmp) / "posed", progress=progress, cancel=cancel)
        res = reconstruct_posed(posed_path, output, config, metrics_path=metrics_path, splats_path=splats_path,
                                fit_overrides=fit_overrides, extra_metrics={"sfm": sfm}, progress=progress,
                                cancel=cancel)
        if cam_dir is not None:
            staging = cam_dir.with_name(f".{cam_dir.name}.partial")
            try:
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(posed_path.parent, staging)
                staging.rename(cam_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                for p in (res.output, splats_path, metrics_path):
                    if p is not None:
                        Path(p).unlink(missing_ok=True)
                raise
    return res


def reconstruct_posed(
    transforms: str | os.PathLike,
    output: str | os.PathLike,
    config: ReconConfig = ReconConfig(),
    *,
    metrics_path: str | os.PathLike | None = None,
    splats_path: str | os.PathLike | None = None,
    fit_overrides: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ReconResult:
    """Load the posed set, fit splats to the training views and write ``output``: .ply = the
    splats (3DGS format), .glb = the whole chain to a UV-textured mesh (engine/mesh). Optionally
    the metrics JSON of DESIGN.md (PSNR/SSIM of the output at the held-out views; for meshes
    also the splats' as psnr_splat/ssim_splat) and, for mesh outputs, the splats at
    ``splats_path``. Nothing is written at any path on failure or cancel.

    With at most COMPLETE_MAX_PHOTOS training photos (``config.complete``), the generator
    completes the sides no photo saw (engine/complete.py) instead of the plain fit."""
    from .device import resolve_device
    from .io.posed import load_posed_set
    from .poses.refine import fit_splats
    from .splat.fit import FitConfig

    out = check_output_path(output)
    suffix = out.suffix.lower()
    if suffix not in SPLAT_SUFFIXES + MESH_SUFFIXES:
        raise OutputError(
            f"output {out.name}: '{out.suffix}' is not an output format of reconstruct",
            "use .glb (textured mesh), .blend (textured mesh, command line) or .ply (Gaussian splats)",
        )
    want_mesh = suffix in MESH_SUFFIXES
    if config.complete not in COMPLETE_MODES:
        raise InputError(f"unknown completion mode {config.complete!r}", f"use one of {', '.join(COMPLETE_MODES)}")
    mpath = check_output_path(metrics_path, (".json",)) if metrics_path is not None else None
    spath = check_output_path(splats_path, (".ply",)) if splats_path is not None else None
    gt = None
    if config.gt_mesh is not None:
        from .io.mesh import read_mesh

        gt = read_mesh(config.gt_mesh)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    posed = load_posed_set(transforms, resolution=config.resolution, progress=progress, cancel=cancel)
    seconds["load"] = time.perf_counter() - t
    train_ids, held_ids = split_views(len(posed), config.views, config.holdout)
    train = _subset(posed, train_ids)
    held = _subset(posed, held_ids) if held_ids else None
    skipped = None
    if wants_completion(config.complete, len(train)):
        done = _completion(transforms, posed, train_ids, train, held, gt, config, out, seconds, progress, cancel)
        if isinstance(done, str):
            skipped = done
        else:
            splats, mesh, cameras, metrics = done
            if config.pose_refine:
                metrics["cameras"] = camera_changes(list(train.cameras), list(cameras), list(train.names))
            metrics.update(extra_metrics or {})
            _write_outputs(out, want_mesh, mesh, splats, spath, mpath, metrics, cancel)
            return ReconResult(out, metrics, [posed.names[i] for i in train_ids], [posed.names[i] for i in held_ids],
                               splats=splats, mesh=mesh, cameras=cameras)
    if len(train) < 2:
        raise InputError(
            "one photo cannot be reconstructed on its own",
            "add photos from other sides, or let the generator complete it (complete 'auto'/'on' with its weights)",
        )
    fit_cfg = FitConfig(
        iterations=config.iterations, device=config.device, seed=config.seed, pose_refine=config.pose_refine
    )
    if fit_overrides:
        fit_cfg = replace(fit_cfg, **fit_overrides)
    # feature pose refinement finds far more matches on 400-800 px photos than at the fit's size
    feature_set = (_sharper_training_photos(transforms, posed, train_ids, FEATURE_RESOLUTION, cancel)
                   if config.pose_refine else None)
    device = resolve_device(config.device)  # once: the fit and the held-out renders run on it
    result = fit_splats(train, fit_cfg, feature_set=feature_set, device=device, progress=progress, cancel=cancel)
    seconds.update({f"fit_{k}" if k != "fit" else "fit": v for k, v in result.seconds.items()})
    t = time.perf_counter()
    scores = evaluate_views(result.splats, held, device)
    seconds["eval"] = time.perf_counter() - t
    mesh = None
    extra: dict[str, Any] = {}
    if want_mesh:
        mesh, mesh_seconds, extra = _mesh_stage(transforms, posed, train_ids, result, held, gt, config, out.stem,
                                                progress, cancel)
        seconds.update(mesh_seconds)
        extra["psnr_splat"], extra["ssim_splat"] = scores["psnr"], scores["ssim"]
        scores = {k: extra.pop(f"{k}_mesh") for k in ("psnr", "ssim", "lpips")}
    elif gt is not None:
        log.warning("--gt-mesh is ignored for splat (.ply) output: chamfer and F-score need a mesh")
    metrics = {
        **scores,
        "chamfer": extra.pop("chamfer", None),
        "fscore": extra.pop("fscore", None),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "peak_rss_mb": None if (rss := peak_rss_mb()) is None else round(rss, 1),
        "num_gaussians": result.splats.num,
        "num_faces": None if mesh is None else mesh.num_faces,
        "views": len(train),
        "holdout": len(held_ids),
        "iterations": result.iterations,
        "resolution": config.resolution,
        **({"completion_skipped": skipped} if skipped else {}),
        "warnings": _fit_warnings(config, len(train), result.warnings),
        "pose_views": None if result.pose_views is None else [
            {"name": v.name, "score": round(v.score, 3), "reliable": v.reliable, "rms_px": round(v.rms_px, 3)}
            for v in result.pose_views
        ],
        **extra,
    }
    if config.pose_refine:
        metrics["cameras"] = camera_changes(list(train.cameras), list(result.cameras), list(train.names))
    metrics.update(extra_metrics or {})
    _write_outputs(out, want_mesh, mesh, result.splats, spath, mpath, metrics, cancel)
    return ReconResult(out, metrics, [posed.names[i] for i in train_ids], [posed.names[i] for i in held_ids],
                       splats=result.splats, mesh=mesh, cameras=result.cameras)


def _fit_warnings(config: ReconConfig, photos: int, fit_warnings: list[str]) -> list[str]:
    """The user-facing warnings of a plain fit: the pose stage's, and the two-photo limit of
    pose refinement (the same as completion's)."""
    from .complete import TWO_PHOTOS_WARNING

    two = [TWO_PHOTOS_WARNING] if config.pose_refine and photos == 2 and not fit_warnings else []
    for w in two:
        log.warning("%s", w)
    return two + list(fit_warnings)


def _write_outputs(out: Path, want_mesh: bool, mesh, splats, spath: Path | None, mpath: Path | None,
                   metrics: dict[str, Any], cancel) -> None:
    """Write the mesh (or the splats), the optional splats file and metrics JSON; on failure or
    cancel nothing is left at any of the paths."""
    from .splat.model import write_splat_ply

    written: list[Path] = []
    try:
        check(cancel)
        t = time.perf_counter()
        if want_mesh:
            from .io.mesh import write_mesh

            write_mesh(mesh, out)
            written.append(out)
            if spath is not None:
                write_splat_ply(splats, spath)
                written.append(spath)
        else:
            write_splat_ply(splats, out)
            written.append(out)
        metrics["seconds"]["write"] = round(time.perf_counter() - t, 3)
        if mpath is not None:
            with atomic_file(mpath) as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def _completion(transforms, posed: PosedSet, train_ids: list[int], train: PosedSet, held: PosedSet | None, gt,
                config: ReconConfig, out: Path, seconds: dict[str, float], progress, cancel):
    """Few photos: the generator completes the unseen sides (engine/complete.py). Returns
    (splats, mesh or None, cameras, metrics), or the reason as a string when ``complete="auto"``
    finds no generator weights and there are >= 2 photos (logged as a warning; the caller
    reconstructs from the photos alone)."""
    from .complete import CompleteConfig, complete
    from .errors import DependencyError

    first, warm = completion_iterations(config.iterations)
    ccfg = CompleteConfig(
        model=config.model, seed=config.seed, device=config.device, allow_download=config.allow_download,
        rvc=config.rvc, refine_cameras=config.pose_refine, make_mesh=out.suffix.lower() in MESH_SUFFIXES,
        faces=config.faces, texture_size=config.texture_size, mesh=dict(config.mesh),
        fit_iterations=first, warm_iterations=warm,
    )
    photos = _sharper_training_photos(transforms, posed, train_ids, max(ccfg.photo_size, 512), cancel) or train
    t = time.perf_counter()
    try:
        res = complete(photos, None, ccfg, progress=progress, cancel=cancel)
    except DependencyError as e:
        if config.complete == "on" or len(train) < 2:
            raise
        log.warning("only %d photos: the sides no photo saw stay empty (%s; to complete them: %s)",
                    len(train), e.message, e.fix)
        return f"{e.message}; to complete them: {e.fix}"
    seconds["complete"] = time.perf_counter() - t
    seconds.update({f"complete_{k}": v for k, v in (res.metrics.get("seconds") or {}).items()})
    t = time.perf_counter()
    scores = evaluate_views(res.splats, held, config.device)
    extra: dict[str, Any] = {}
    if res.mesh is not None:
        from .mesh.evaluate import chamfer_fscore, gt_in_camera_frame, image_scores

        extra = {"psnr_splat": scores["psnr"], "ssim_splat": scores["ssim"]}
        mesh_scores = image_scores(res.mesh, held) if held is not None else {"psnr": None, "ssim": None, "lpips": None}
        scores = {k: mesh_scores.get(k) for k in ("psnr", "ssim", "lpips")}
        if gt is not None:
            extra.update(chamfer_fscore(res.mesh, gt_in_camera_frame(gt, posed.meta)))
    elif gt is not None:
        log.warning("--gt-mesh is ignored for splat (.ply) output: chamfer and F-score need a mesh")
    seconds["eval"] = time.perf_counter() - t
    m = res.metrics
    metrics = {
        **scores,
        "lpips": scores.get("lpips"),
        "chamfer": extra.pop("chamfer", None),
        "fscore": extra.pop("fscore", None),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "peak_rss_mb": None if (rss := peak_rss_mb()) is None else round(rss, 1),
        "num_gaussians": res.splats.num,
        "num_faces": None if res.mesh is None else res.mesh.num_faces,
        "views": len(train),
        "holdout": 0 if held is None else len(held),
        "resolution": config.resolution,
        "completion": {k: m.get(k) for k in ("generator", "steps", "generator_evals", "reference", "rvc_enabled",
                                             "psnr_inputs", "cameras_refined", "warnings")},
        **extra,
    }
    return res.splats, res.mesh, res.cameras, metrics


def _stored_long_side(transforms) -> int | None:
    """Longer side in pixels of the first frame's image file (None if it cannot be read)."""
    from PIL import Image

    from .io.posed import read_transforms, resolve_image_path

    try:
        meta = read_transforms(transforms)
        p = Path(transforms).expanduser()
        root = p if p.is_dir() else p.parent
        img = resolve_image_path(root, meta["frames"][0]["file_path"])
        with Image.open(img) as im:
            return max(im.size)
    except Exception:  # noqa: BLE001 - only an optimisation: keep the fit's images
        return None


def _sharper_training_photos(transforms, posed: PosedSet, train_ids: list[int], cap: int | None,
                             cancel) -> PosedSet | None:
    """The training views reloaded with their longer side at min(stored size, ``cap``) (``cap``
    None: as stored) when that is larger than the loaded ``posed``'s; None otherwise (never
    upsampled, nor when the stored size cannot be read)."""
    from .io.posed import load_posed_set

    stored = _stored_long_side(transforms)
    if stored is None:
        return None
    target = stored if cap is None else min(stored, cap)
    if target <= max(posed.cameras[0].width, posed.cameras[0].height):
        return None
    return _subset(load_posed_set(transforms, resolution=None if target == stored else target, cancel=cancel),
                   train_ids)


def _mesh_stage(transforms, posed: PosedSet, train_ids: list[int], fit, held: PosedSet | None, gt, config: ReconConfig,
                name: str, progress, cancel) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """Splats -> textured mesh, baked from the training photos at ``bake_resolution`` (at the
    fitted cameras); returns the mesh, seconds per stage and mesh metrics (psnr_mesh, ...)."""
    from .mesh import MeshConfig, splats_to_mesh
    from .mesh.evaluate import chamfer_fscore, gt_in_camera_frame, image_scores

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    photos = (_sharper_training_photos(transforms, posed, train_ids, config.bake_resolution, cancel)
              or _subset(posed, train_ids))
    # the fitted (possibly refined) training cameras, at the bake photos' size
    cams = [c.resized(p.width, p.height) for c, p in zip(fit.cameras, photos.cameras)]
    photos = PosedSet(cams, photos.images, photos.masks, photos.names, photos.meta)
    seconds["bake_load"] = time.perf_counter() - t
    mesh_cfg = MeshConfig(faces=config.faces, texture_size=config.texture_size, device=config.device, **config.mesh)
    res = splats_to_mesh(fit.splats, photos, mesh_cfg, name=name or "viewforge_mesh",
                         progress=progress, cancel=cancel)
    seconds.update({f"mesh_{k}": v for k, v in res.seconds.items()})
    t = time.perf_counter()
    extra: dict[str, Any] = {"psnr_mesh": None, "ssim_mesh": None, "lpips_mesh": None,
                             "texture_coverage": {k: round(v, 4) for k, v in res.coverage.items()}}
    if held is not None:
        extra.update({f"{k}_mesh": v for k, v in image_scores(res.mesh, held).items()})
    if gt is not None:
        extra.update(chamfer_fscore(res.mesh, gt_in_camera_frame(gt, posed.meta)))
    seconds["mesh_eval"] = time.perf_counter() - t
    return res.mesh, seconds, extra
