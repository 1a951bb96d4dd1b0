"""The ``viewforge`` command line (also ``python -m viewforge``).

Every command has ``--help``, exits 0 on success, 2 with one line
``viewforge: error: <what>. Fix: <how>.`` on bad input (any :class:`ViewforgeError`, and argument
errors), 1 with one line on an unexpected error (the traceback only with ``--debug``), and 130 on
Ctrl-C. Outputs are written atomically, so a failed or interrupted command leaves nothing at the
output path. A progress bar is drawn on stderr when stderr is a terminal; when stdout is not a terminal
(a log), progress comes as ``viewforge progress: <stage> <percent>% (<message>)`` lines on stdout, one
per stage and at most one every 10 s.

Adding a command: write
``_add_<name>(parser)`` and ``_run_<name>(args, progress) -> int`` and append a :class:`Command`
to :data:`COMMANDS`. Import heavy modules (bpy, torch) inside ``_run_<name>`` only, so ``--help``
and engine-only commands never pay for them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .engine.errors import Cancelled, InputError, ViewforgeError
from .engine.mvgen import DEFAULT_MODEL
from .engine.progress import ProgressEvent, ProgressLines
from .engine.speed import CPU_NOTE

PROG = "viewforge"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Plumbing: parser, progress bar, error reporting
# ---------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of every other Viewforge error (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{PROG}: error: {_one_line(message).rstrip('.')}. Fix: see '{self.prog} --help'.\n")
        sys.exit(2)


class ProgressBar:
    """Turns engine :class:`ProgressEvent` s into a tqdm bar per stage on stderr, drawn only when
    stderr is a terminal (``enabled=None``), and into plain lines on stdout when stdout is not a
    terminal (``lines=None``: a log, a pipe, a batch system; :class:`ProgressLines`, prefixed
    ``viewforge progress:``: one per stage and at most one every 10 s), so a long job is never
    silent in a log and a log never fills with bar redraws."""

    def __init__(self, enabled: bool | None = None, lines: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        want_lines = not sys.stdout.isatty() if lines is None else bool(lines)
        self.lines = ProgressLines(prefix=f"{PROG} progress") if want_lines else None
        self._bar = None
        self._stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.lines is not None:
            self.lines(event)
        if not self.enabled:
            return
        from tqdm import tqdm

        total = int(event.total) if event.total else 100
        if event.stage != self._stage or self._bar is None or self._bar.total != total:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=total, desc=event.stage, file=sys.stderr, dynamic_ncols=True, leave=True)
        step = int(event.step) if event.step is not None and event.total else round(event.fraction * total)
        self._bar.n = min(max(step, 0), total)
        if event.message:
            self._bar.set_postfix_str(event.message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, argument set-up and runner (returns an exit code)."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, ProgressBar], int]
    epilog: str = ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_render_options(p: argparse.ArgumentParser, *, views: int = 24, resolution: int = 256) -> None:
    p.add_argument("--views", type=_positive_int, default=views, metavar="N", help=f"number of views (default {views})")
    p.add_argument(
        "--resolution",
        type=_positive_int,
        default=resolution,
        metavar="R",
        help=f"square image side in pixels (default {resolution})",
    )
    p.add_argument(
        "--elevation",
        type=float,
        nargs="+",
        default=[-20.0, 60.0],
        metavar="DEG",
        help="camera elevation in degrees: one value for a ring, or LOW HIGH for a band covered by a "
        "golden-angle spiral (default -20 60)",
    )
    p.add_argument("--fov", type=float, default=40.0, metavar="DEG", help="field of view in degrees (default 40)")
    p.add_argument("--samples", type=_positive_int, default=32, metavar="S", help="Cycles samples per pixel (default 32)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="Cycles noise seed (default 0)")
    p.add_argument("--denoise", action="store_true", help="denoise with OpenImageDenoise (slower, ~1-2 s per view)")


def _elevation(values: Sequence[float]) -> float | tuple[float, ...]:
    return values[0] if len(values) == 1 else tuple(values)


# ---------------------------------------------------------------------------------------------
# render-views
# ---------------------------------------------------------------------------------------------


def _add_render_views(p: argparse.ArgumentParser) -> None:
    p.add_argument("mesh", metavar="MESH", help="mesh file to render: .glb, .gltf or .obj")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created; its parent must exist)")
    _add_render_options(p)


def _run_render_views(args: argparse.Namespace, progress: ProgressBar) -> int:
    from .bridge.render import render_views  # imports bpy only when called

    out = render_views(
        args.mesh,
        args.output,
        views=args.views,
        resolution=args.resolution,
        elevation=_elevation(args.elevation),
        fov_deg=args.fov,
        samples=args.samples,
        seed=args.seed,
        denoise=args.denoise,
        progress=progress,
    )
    progress.close()
    size = f"{args.resolution}x{args.resolution}"
    print(f"{PROG} render-views: wrote {args.views} RGBA views ({size}) and transforms.json to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="OUT.glb: the reconstructed mesh, with the demo's files in the folder OUT (without .glb); "
                        "or a folder (the mesh is OUT/reconstruction.glb). Parent folders must exist")
    _add_render_options(p)
    p.add_argument("--iterations", type=int, default=1500, metavar="I",
                   help="reconstruction steps on the rendered set (default 1500; 0 = render only)")
    p.add_argument("--fit-resolution", type=_positive_int, default=128, metavar="R",
                   help="image size for the reconstruction (default 128)")
    p.add_argument("--faces", type=_positive_int, default=50000, metavar="F", help="mesh face budget (default 50000)")
    p.add_argument("--texture-size", type=_positive_int, default=2048, metavar="T",
                   help="texture size in pixels (default 2048)")
    p.add_argument("--grid", type=_positive_int, default=192, metavar="G",
                   help="mesh extraction voxels along the object's longest side (default 192)")


def _demo_reconstruct(work: Path, args: argparse.Namespace, progress: ProgressBar) -> list[tuple[str, str]]:
    """The demo's reconstruction step: ``work/posed`` -> a textured mesh ``work/reconstruction.glb``
    (+ the splats), with one in six views held out for PSNR/SSIM and the procedural object as
    ground truth for chamfer/F-score."""
    if args.iterations <= 0:
        return []
    from .engine.recon import ReconConfig, reconstruct

    holdout = args.views // 6 if args.views >= 6 else 0
    cfg = ReconConfig(holdout=holdout, resolution=args.fit_resolution, iterations=args.iterations, seed=args.seed,
                      faces=args.faces, texture_size=args.texture_size, gt_mesh=str(work / "object.glb"),
                      mesh={"grid": args.grid})
    res = reconstruct(work / "posed" / "transforms.json", work / "reconstruction.glb", cfg,
                      metrics_path=work / "metrics.json", splats_path=work / "splats.ply", progress=progress)
    m = res.metrics
    quality = (f"; held-out PSNR {m['psnr']:.2f} dB (splats {m['psnr_splat']:.2f} dB)"
               if m["psnr"] is not None else "")
    return [
        ("reconstruction.glb", f"textured mesh, {m['num_faces']} faces, {args.texture_size} px texture{quality}; "
                               f"chamfer {m['chamfer']:.4f}, F-score@0.1 {m['fscore']:.4f}"),
        ("splats.ply", f"{m['num_gaussians']} Gaussians fitted to {m['views']} views"),
        ("metrics.json", "metrics (DESIGN.md format) and seconds per stage"),
    ]


def _run_demo(args: argparse.Namespace, progress: ProgressBar) -> int:
    from .bridge.render import check_output_folder, check_render_settings
    from .engine.demo import demo_mesh
    from .engine.io.atomic import atomic_dir, atomic_file, check_output_path
    from .engine.io.mesh import write_glb

    requested = Path(args.output).expanduser()
    mesh_out = None
    if requested.suffix.lower() == ".glb":
        mesh_out = check_output_path(requested, (".glb",))
        requested = requested.with_suffix("")
    out = check_output_folder(requested, "object.glb", "Viewforge demo output")
    elevation = _elevation(args.elevation)
    check_render_settings(
        views=args.views, resolution=args.resolution, elevation=elevation, fov_deg=args.fov, samples=args.samples
    )
    from .bridge.render import render_views  # imports bpy only when called

    with atomic_dir(out) as work:
        progress(ProgressEvent("mesh", 0.0, "building the demo object"))
        mesh = demo_mesh()
        write_glb(mesh, work / "object.glb")
        progress(ProgressEvent("mesh", 1.0, f"{mesh.num_faces} faces"))
        render_views(
            work / "object.glb",
            work / "posed",
            views=args.views,
            resolution=args.resolution,
            elevation=elevation,
            fov_deg=args.fov,
            samples=args.samples,
            seed=args.seed,
            denoise=args.denoise,
            progress=progress,
        )
        rows = [
            ("object.glb", f"procedural test object ({mesh.num_faces} faces, {mesh.texture.shape[1]} px texture)"),
            ("posed/transforms.json", f"{args.views} cameras (NeRF/Blender convention, Z up)"),
            ("posed/images/", f"{args.views} RGBA PNGs, {args.resolution}x{args.resolution}"),
        ]
        rows += _demo_reconstruct(work, args, progress)
        if mesh_out is not None and args.iterations > 0:
            import shutil

            with atomic_file(mesh_out) as tmp:
                shutil.copyfile(work / "reconstruction.glb", tmp)
    progress.close()
    width = max(len(r[0]) for r in rows)
    if mesh_out is not None and args.iterations > 0:
        print(f"{PROG} demo: wrote {mesh_out} (the reconstruction) and {out}")
    else:
        print(f"{PROG} demo: wrote {out}")
    for rel, what in rows:
        print(f"  {rel:<{width}}  {what}")
    return 0


# ---------------------------------------------------------------------------------------------
# reconstruct
# ---------------------------------------------------------------------------------------------


def _add_reconstruct(p: argparse.ArgumentParser) -> None:
    p.add_argument("transforms", metavar="TRANSFORMS_JSON",
                   help="posed set: transforms.json (or its folder), or a folder of photos without cameras "
                        "(their cameras are estimated by structure from motion)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file: .glb or .blend (UV-textured mesh) or .ply (3D Gaussian splats)")
    p.add_argument("--views", type=_positive_int, default=None, metavar="N",
                   help="training views, evenly spaced over the frames not held out (default: all)")
    p.add_argument("--holdout", type=int, default=0, metavar="K",
                   help="held-out views for PSNR/SSIM, chosen evenly over all frames (default 0)")
    p.add_argument("--resolution", type=_positive_int, default=200, metavar="R",
                   help="longer image side in pixels for the fit (default 200)")
    p.add_argument("--iterations", type=_positive_int, default=3000, metavar="I", help="optimisation steps (default 3000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="compute device (default auto: CUDA, else Apple MPS, else CPU)")
    p.add_argument("--refine-poses", action="store_true", help="refine the camera poses jointly with the fit")
    p.add_argument("--faces", type=_positive_int, default=50000, metavar="F",
                   help="mesh face budget (default 50000; capped to 500..2000000)")
    p.add_argument("--texture-size", type=_positive_int, default=2048, metavar="T",
                   help="base-colour texture size in pixels (default 2048; capped to 64..8192)")
    p.add_argument("--grid", type=_positive_int, default=192, metavar="G",
                   help="mesh extraction voxels along the object's longest side (default 192)")
    p.add_argument("--splats", metavar="SPLATS.ply", default=None,
                   help="with a mesh output: also write the fitted Gaussians here")
    p.add_argument("--gt-mesh", metavar="GT", default=None,
                   help="ground-truth mesh: adds chamfer and F-score@0.1 to the metrics (mesh outputs)")
    p.add_argument("--metrics", metavar="M.json", default=None, help="write the metrics JSON (DESIGN.md) here")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--complete", choices=("auto", "on", "off"), default="auto",
                   help="generate the sides no photo saw (default auto: with at most 4 training photos, when the "
                        "generator's weights are there)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                   help=f"generator for completion: registry id or local model folder (default {DEFAULT_MODEL})")
    p.add_argument("--allow-download", action="store_true",
                   help="let completion download the generator's weights (pinned revision) when missing")
    p.add_argument("--no-rvc", action="store_true",
                   help="completion without rendering-aware velocity compensation (RVC)")
    p.add_argument("--cameras-out", metavar="DIR", default=None,
                   help="photos without cameras: also write the estimated posed set (transforms.json + photos) "
                        "to this new folder")


def _reconstruct_to(output: Path, run: Callable[[Path], object]):
    """Run ``run(path)`` for a .glb/.ply output directly; for .blend, into a temporary .glb that
    is then built into the .blend through bpy (atomically; nothing left behind on failure)."""
    if output.suffix.lower() != ".blend":
        return run(output)
    import tempfile

    from .engine.io.atomic import check_output_path
    from .engine.io.mesh import read_mesh

    check_output_path(output, (".blend",))
    with tempfile.TemporaryDirectory(prefix="viewforge-") as tmp:
        res = run(Path(tmp) / f"{output.stem}.glb")
        from .bridge.blendfile import save_mesh_blend  # imports bpy only when called

        save_mesh_blend(res.mesh if getattr(res, "mesh", None) is not None else read_mesh(res.output), output)
        res.output = output.expanduser().absolute()
        return res


def _run_reconstruct(args: argparse.Namespace, progress: ProgressBar) -> int:
    from .engine.recon import ReconConfig, reconstruct

    cfg = ReconConfig(
        views=args.views, holdout=args.holdout, resolution=args.resolution, iterations=args.iterations,
        device=args.device, seed=args.seed, pose_refine=args.refine_poses, faces=args.faces,
        texture_size=args.texture_size, gt_mesh=args.gt_mesh, mesh={"grid": args.grid},
        complete=args.complete, model=args.model, allow_download=args.allow_download, rvc=not args.no_rvc,
    )
    if args.gt_mesh is not None and not Path(args.gt_mesh).expanduser().is_file():
        raise InputError(f"ground-truth mesh {args.gt_mesh} not found", "give the path of a .glb/.gltf/.obj/.ply mesh")
    res = _reconstruct_to(
        Path(args.output),
        lambda out: reconstruct(args.transforms, out, cfg, metrics_path=args.metrics, splats_path=args.splats,
                                cameras_path=args.cameras_out, progress=progress),
    )
    progress.close()
    m = res.metrics
    quality = f", held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}" if m["psnr"] is not None else ""
    if m.get("psnr_splat") is not None:
        quality += f" (splats {m['psnr_splat']:.2f} dB)"
    if m["chamfer"] is not None:
        quality += f", chamfer {m['chamfer']:.4f}, F-score {m['fscore']:.4f}"
    what = (f"{m['num_faces']} faces" if m["num_faces"] is not None else f"{m['num_gaussians']} Gaussians")
    if m.get("sfm"):
        f = m["sfm"]
        what += f", cameras estimated for {len(f['registered'])} of {f['photos']} photos"
    if m.get("completion"):
        c = m["completion"]
        what += f", unseen sides completed by {c['generator']} in {c['generator_evals']} evaluations"
    print(
        f"{PROG} reconstruct: wrote {res.output} ({what} from {m['views']} views, "
        f"{sum(m['seconds'].values()):.0f} s{quality})"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------------


def _add_poses(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", metavar="PHOTO_DIR", help="folder of photos of one object, without cameras")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="new folder for the posed set: transforms.json + the registered photos (undistorted)")
    p.add_argument("--metrics", metavar="M.json", default=None,
                   help="write what was registered (per-photo reliability, unregistered photos) as JSON")


def _run_poses(args: argparse.Namespace, progress: ProgressBar) -> int:
    import json
    import shutil
    import tempfile

    from .engine.errors import OutputError
    from .engine.io.atomic import atomic_file, check_output_path
    from .engine.recon import PHOTO_SUFFIXES, estimate_posed_set, photo_folder_images

    src = Path(args.photos).expanduser()
    if not src.is_dir():
        raise InputError(f"{src} is not a folder", "give the folder that holds the photos")
    photos = photo_folder_images(src)
    if photos is None:
        raise InputError(f"{src} already has a transforms.json (its cameras are known)",
                         "reconstruct it directly, or give a folder of photos only")
    if not photos:
        raise InputError(f"{src} holds no photos", f"give a folder of photos ({', '.join(PHOTO_SUFFIXES)})")
    out = Path(args.output).expanduser().absolute()
    if out.exists():
        raise OutputError(f"{out} already exists", "give a new folder for the posed set")
    if not out.parent.is_dir():
        raise OutputError(f"the folder {out.parent} does not exist", "create it or choose another output folder")
    mpath = check_output_path(args.metrics, (".json",)) if args.metrics else None
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    created = False
    try:
        _, summary = estimate_posed_set(photos, staging / "posed", progress=progress)
        (staging / "posed").rename(out)
        created = True
        if mpath is not None:
            with atomic_file(mpath) as tmp:
                tmp.write_text(json.dumps(summary, indent=2) + "\n")
    except BaseException:
        if created:  # the folder did not exist before: nothing of the user's is in it
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.close()
    reliable = sum(v["reliable"] for v in summary["views"])
    missed = f"; not registered: {', '.join(summary['unregistered'])}" if summary["unregistered"] else ""
    print(f"{PROG} poses: wrote {out / 'transforms.json'} ({len(summary['registered'])} of {summary['photos']} photos "
          f"registered, {reliable} reliable, {summary['seconds'].get('total', 0.0):.0f} s{missed})")
    return 0


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not (0.0 < value < 1e6):
        raise argparse.ArgumentTypeError(f"must be a positive length, got {text}")
    return value


def _input_elevation(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not (-89.0 <= value <= 89.0):
        raise argparse.ArgumentTypeError(f"must be an elevation in degrees between -89 and 89, got {text}")
    return value


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="one image of one object: PNG/JPEG/WebP; RGBA or on a plain background")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file: .glb or .blend (UV-textured mesh) or .ply (3D Gaussian splats)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                   help=f"multi-view generator: a registry id or a local model folder (default {DEFAULT_MODEL})")
    p.add_argument("--steps", type=_positive_int, default=4, metavar="K",
                   help="sampling steps (default 4; two generator evaluations each with guidance)")
    p.add_argument("--method", choices=("aware", "oneshot", "im3d"), default="aware",
                   help="aware: 3D-aware sampling, reconstruction inside every step (default); oneshot: "
                        "generate the views, then reconstruct; im3d: IM-3D's regeneration rounds")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="compute device (default auto: CUDA, else Apple MPS, else CPU)")
    p.add_argument("--faces", type=_positive_int, default=30000, metavar="F", help="mesh face budget (default 30000)")
    p.add_argument("--texture-size", type=_positive_int, default=1024, metavar="T",
                   help="base-colour texture size in pixels (default 1024: the views are 320 px)")
    p.add_argument("--size", type=_positive_float, default=1.0, metavar="METRES",
                   help="longest side of the result (default 1); it stands on z = 0, centred in x and y")
    p.add_argument("--input-elevation", type=_input_elevation, default=0.0, metavar="DEG",
                   help="the photo's camera elevation above the object in degrees (default 0: taken level; "
                        "e.g. 20 for a photo from a little above)")
    p.add_argument("--iterations", type=_positive_int, default=1000, metavar="I",
                   help="splat fit steps of the first reconstruction; later ones get 30%% of it (default 1000)")
    p.add_argument("--grid", type=_positive_int, default=192, metavar="G",
                   help="mesh extraction voxels along the object's longest side (default 192)")
    p.add_argument("--allow-download", action="store_true",
                   help="download the model's weights when they are not in the local cache (needs network; "
                        "see the licence in docs/zero123pp.md)")
    p.add_argument("--metrics", metavar="M.json", default=None,
                   help="write the metrics JSON (generator evaluations, faces, seconds per stage) here")
    p.add_argument("--no-rvc", action="store_true",
                   help="accepted for scripts; no effect here: RVC applies to reconstruction from photos, "
                        "generation from one image has no input cameras to compensate for")


def _run_generate(args: argparse.Namespace, progress: ProgressBar) -> int:
    import os
    import time

    if not progress.enabled:  # pipes and logs: no third-party bars (model loading) either
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from .engine.generate import GenerateConfig, generate
    from .engine.mvgen.base import resolve

    if args.metrics is not None:
        from .engine.io.atomic import check_output_path

        check_output_path(args.metrics, (".json",))
    resolve(args.model)  # an unknown model fails now, not after the image is prepared
    cfg = GenerateConfig(
        model=args.model, steps=args.steps, method=args.method, seed=args.seed, device=args.device,
        allow_download=args.allow_download, faces=args.faces, texture_size=args.texture_size, size=args.size,
        input_elevation=args.input_elevation, fit_iterations=args.iterations, warm_iterations=max(1, args.iterations * 3 // 10), mesh={"grid": args.grid},
    )  # fmt: skip
    t = time.perf_counter()
    res = _reconstruct_to(
        Path(args.output),
        lambda out: generate(args.image, out, cfg, metrics_path=args.metrics, progress=progress),
    )
    progress.close()
    m = res.metrics
    what = f"{m['num_faces']} faces" if m.get("num_faces") is not None else f"{m['num_gaussians']} Gaussians"
    print(f"{PROG} generate: wrote {res.output} ({what}, {m['generator_evals']} generator evaluations, "
          f"{time.perf_counter() - t:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", metavar="PRED", help="predicted mesh (.glb/.gltf/.obj/.ply)")
    p.add_argument("--gt", metavar="GT", default=None, help="ground-truth mesh: chamfer and F-score@0.1")
    p.add_argument("--views", metavar="TRANSFORMS_JSON", default=None,
                   help="posed set: PSNR/SSIM of the textured mesh at its cameras (and the frame of --gt "
                        "when its transforms.json records a normalization, as render-views writes)")
    p.add_argument("--resolution", type=_positive_int, default=None, metavar="R",
                   help="longer image side for the image metrics (default: as stored)")
    p.add_argument("--metrics", metavar="M.json", default=None, help="write the metrics JSON here")


def _run_eval(args: argparse.Namespace, progress: ProgressBar) -> int:
    import json

    from .engine.mesh.evaluate import evaluate_mesh, write_metrics

    if args.metrics is not None:
        from .engine.io.atomic import check_output_path

        check_output_path(args.metrics, (".json",))
    m = evaluate_mesh(args.pred, args.gt, args.views, resolution=args.resolution)
    if args.metrics is not None:
        write_metrics(m, args.metrics)
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}))
    return 0


# ---------------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------------


def _add_batch(p: argparse.ArgumentParser) -> None:
    # optional for argparse only: `--ray IN -o OUT` reads IN as --ray's ADDRESS (_batch_input)
    p.add_argument("input", metavar="INPUT_DIR", nargs="?", default=None,
                   help="folder of posed sets (sub-folders with transforms.json), folders of photos without cameras, and images")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (created; its parent must exist)")
    p.add_argument("--quality", choices=("draft", "standard", "high"), default="standard",
                   help="quality preset: fit resolution, steps, face budget, texture size (default standard)")
    p.add_argument("--format", choices=("glb", "ply"), default="glb",
                   help="output format: glb (textured mesh, default) or ply (Gaussian splats)")
    p.add_argument("--resolution", type=_positive_int, default=None, metavar="R", help="override the preset's fit resolution")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="I", help="override the preset's steps")
    p.add_argument("--views", type=_positive_int, default=None, metavar="N",
                   help="training views per posed set, evenly spaced (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="compute device (default auto)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run only the input NAME (a file or folder stem; repeat for more)")
    p.add_argument("--shard", default=None, metavar="I/N", help="run every N-th input from the I-th (1 <= I <= N), e.g. one farm task each")
    p.add_argument("--list", action="store_true",
                   help="print the jobs (name, kind, output, todo or complete), one a line, and run nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="run every job again (default: skip jobs whose output is complete from an earlier run)")
    ray = p.add_argument_group("Ray cluster (pip install 'viewforge[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run the jobs as Ray tasks: alone, on a local cluster it starts; 'auto', on the cluster running "
                     "on this machine; HOST:PORT, on that cluster. OUT_DIR must be a folder every node sees at the same path")
    ray.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="CPUs per job (default 1)")
    ray.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                     help="GPUs per job (default: 1 with --device cuda, or auto on a cluster with GPUs; else 0)")
    ray.add_argument("--ray-retries", type=int, default=2, metavar="N", help="runs again a job whose process or node died, N times (default 2)")
    ray.add_argument("--ray-local-cpus", type=_positive_int, default=None, metavar="N", help="CPUs of the local cluster (default: all)")


def _batch_input(args: argparse.Namespace) -> None:
    """INPUT_DIR is required; ``--ray`` takes an optional ADDRESS, so ``batch --ray IN -o OUT``
    parses IN as the address: an address that is an existing folder and no INPUT_DIR means IN is
    the input and Ray starts a local cluster."""
    if args.input is not None:
        return
    if args.ray not in (None, "local", "auto") and Path(args.ray).is_dir():
        args.input, args.ray = args.ray, "local"
        return
    raise InputError("INPUT_DIR is missing", "viewforge batch INPUT_DIR -o OUT_DIR [options]")


def _run_batch(args: argparse.Namespace, progress: ProgressBar) -> int:
    from .engine.batch import BatchConfig, format_table, run_batch

    _batch_input(args)

    cfg = BatchConfig(quality=args.quality, device=args.device, seed=args.seed, output_format=f".{args.format}",
                      resolution=args.resolution, iterations=args.iterations, views=args.views)
    what = {"only": args.only, "shard": args.shard, "overwrite": args.overwrite}
    if args.list:
        from .engine.batch import plan_batch

        for job in plan_batch(args.input, args.output, cfg, **what).jobs:
            print(f"{job.item.name}\t{job.item.kind}\t{job.spec.output}\t{'complete' if job.skip else 'todo'}")
        return 0
    if args.ray is None:
        rows = run_batch(args.input, args.output, cfg, progress=progress, **what)
    else:
        from .engine.batch_ray import RayConfig, import_ray, run_batch_ray

        import_ray()  # one line before any work when Ray is not installed
        rcfg = RayConfig(address=None if args.ray == "local" else args.ray, cpus=args.ray_cpus, gpus=args.ray_gpus,
                         retries=max(0, args.ray_retries), local_cpus=args.ray_local_cpus)
        rows = run_batch_ray(args.input, args.output, cfg, rcfg, progress=progress, **what)
    progress.close()
    print(format_table(rows))
    failed = sum(r.status == "failed" for r in rows)
    if failed:
        sys.stderr.write(f"{PROG} batch: {failed} of {len(rows)} jobs failed (see the table); the others wrote their output.\n")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# The command table and main()
# ---------------------------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Command(
        "render-views",
        "render a posed set (RGBA PNGs + transforms.json) of a mesh with Blender Cycles",
        "Render a posed set of MESH: the mesh is imported as Blender imports it (glTF's +Y up becomes "
        "+Z up), normalised (bounding-box centre at the origin, longest side spanning [-1, 1]) and "
        "rendered from deterministic cameras on a sphere around it. Writes DIR/transforms.json "
        "(NeRF/Blender convention, cameras in the normalised frame, the normalisation recorded) and "
        "DIR/images/NNNN.png (RGBA, transparent background).",
        _add_render_views,
        _run_render_views,
        "example: viewforge render-views Duck.glb -o /tmp/duck --views 24 --resolution 256",
    ),
    Command(
        "reconstruct",
        "reconstruct a UV-textured mesh (or Gaussian splats) from a posed set",
        "Fit 3D Gaussians to the images of a posed set at their cameras (NeRF/Blender transforms.json), "
        "then, for a .glb or .blend OUT, extract a mesh (TSDF fusion + marching cubes), simplify it to "
        "--faces, unwrap it (xatlas) and bake a --texture-size base-colour texture from the photos. "
        "A .ply OUT is the Gaussians themselves (the standard 3D Gaussian splatting format). The "
        "result is in the cameras' frame. With --holdout K, K frames are kept out of the fit and "
        "PSNR/SSIM of the output are measured on them (on white); --metrics writes those, "
        "chamfer/F-score with --gt-mesh, and the stage timings as JSON. A folder of photos without "
        "cameras gets its cameras by structure from motion first (as viewforge poses). With 1-4 "
        "training photos the generator (--model) completes the sides no photo saw (--complete).",
        _add_reconstruct,
        _run_reconstruct,
        "example: viewforge reconstruct lego/transforms_train.json -o lego.glb --views 24 --holdout 8 "
        "--resolution 200 --metrics m.json",
    ),
    Command(
        "poses",
        "estimate the cameras of photos without cameras (structure from motion) and write a posed set",
        "Find the camera of each photo in PHOTO_DIR by structure from motion (COLMAP through pycolmap: "
        "SIFT features, matching, incremental mapping; one shared camera, lens distortion estimated "
        "and removed). Writes OUT_DIR/transforms.json and the registered photos, undistorted: a posed "
        "set that reconstruct, Blender (File > Import > Cameras from transforms.json), nerfstudio and "
        "instant-ngp read. The frame: the object's sparse points centred at the origin, about unit "
        "size, +Z up from the cameras' average up direction. Photos that cannot be registered are "
        "named and left out; duplicates are dropped.",
        _add_poses,
        _run_poses,
        "example: viewforge poses photos/ -o posed/ && viewforge reconstruct posed/ -o object.glb",
    ),
    Command(
        "generate",
        "generate a UV-textured mesh of the object in one image",
        "Generate a 3D object from one image: the object is cut out (alpha, else its plain "
        "background), a multi-view generator (--model; Zero123++ v1.2 by default, weights "
        "CC-BY-NC-4.0, about 3.9 GB, fetched only with --allow-download) paints six views around it, "
        "and 3D-aware sampling reconstructs Gaussian splats inside each of the --steps denoising "
        "steps so that the views agree; the splats become a mesh (simplified to --faces, unwrapped, "
        "--texture-size texture baked from the views). The object stands on z = 0 (the ground), "
        "centred in x and y, its longest side --size long; a .glb is +Y up as glTF requires. A .ply "
        "OUT is the splats themselves. " + CPU_NOTE + " (--device; docs/zero123pp.md has the timings).",
        _add_generate,
        _run_generate,
        "example: viewforge generate chair.png -o chair.glb --steps 4 --seed 1",
    ),
    Command(
        "eval",
        "measure a mesh against a ground truth (chamfer, F-score) and at posed views (PSNR, SSIM)",
        "Chamfer distance and F-score@0.1 between PRED and --gt (100k surface samples each, both "
        "normalised so the ground truth's bounding box has its longest side spanning [-1, 1]), and "
        "PSNR/SSIM of the textured PRED rendered (unlit) at the cameras of --views against its images, "
        "both on white. Prints the metrics JSON; --metrics writes it.",
        _add_eval,
        _run_eval,
        "example: viewforge eval duck.glb --gt Duck.glb --views /tmp/duck/transforms.json --metrics m.json",
    ),
    Command(
        "demo",
        "build the procedural demo object, render a posed set of it and reconstruct a textured mesh",
        "Build Viewforge's procedural test object (a textured pawn with a handle and a nose; no "
        "third-party asset), write it as DIR/object.glb, render DIR/posed/ (transforms.json + "
        "images/) from it with render-views, and reconstruct it: DIR/reconstruction.glb (UV-textured "
        "mesh), DIR/splats.ply, DIR/metrics.json (held-out PSNR/SSIM, chamfer and F-score against the "
        "object). With -o OUT.glb, DIR is OUT without .glb and the mesh is also written to OUT.glb.",
        _add_demo,
        _run_demo,
        "example: viewforge demo -o demo.glb",
    ),
    Command(
        "batch",
        "run one job per posed set or image in a folder; print a summary table",
        "Run one job per input of INPUT_DIR: a folder holding transforms.json is one posed set; "
        "otherwise each sub-folder with a transforms.json is reconstructed, each sub-folder of photos "
        "without one is reconstructed after structure from motion, and each image (.png, .jpg, "
        ".webp) is generated from (as viewforge generate, with the default model). Each job runs "
        "in its own worker process and writes OUT_DIR/<name>.<format>; a failed job does not stop the "
        "others. A job whose output is complete from an earlier run is skipped (resume; --overwrite runs it "
        "again); a second batch writing to the same OUT_DIR refuses. With --ray the jobs are Ray tasks on a "
        "cluster (docs/batch.md). Prints a table of the jobs; exits 1 if any failed.",
        _add_batch,
        _run_batch,
        "example: viewforge batch captures/ -o meshes/ --quality draft",
    ),
]


def _quiet_openmp() -> None:
    """Make OpenMP threads (torch's and numba's) sleep instead of spinning while they wait.

    Set before torch or numba load. Alone it costs nothing measurable; when another busy process
    shares the cores (Blender, a second job, a test run) spinning threads steal each other's time:
    a 300-step fit took 20 s per process with two running at once on 2 cores, 7 s with PASSIVE
    (7 s alone either way). A value the user set wins.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("viewforge")
    except Exception:  # noqa: BLE001  (not installed as a distribution: running from a tree)
        return "unknown"


def _configure_logging(debug: bool) -> None:
    """WARNING and above to stderr (everything with --debug); the handler filters, so third-party
    loggers that set their own level (Blender's glTF importer logs at INFO) stay quiet too."""
    level = logging.DEBUG if debug else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s"))
    handler._viewforge_cli = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_viewforge_cli", False)]:
        root.removeHandler(old)  # main() run again in one process (tests, scripts): one handler, today's stderr
    root.addHandler(handler)
    root.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per :data:`COMMANDS` entry)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="debug logging and full tracebacks on errors"
    )
    parser = _Parser(
        prog=PROG,
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=30),
        description="Viewforge: images to textured meshes. Run 'viewforge COMMAND --help' for a command's options.",
        epilog="Exit codes: 0 success, 1 unexpected error, 2 bad input (one-line reason), 130 interrupted.",
    )
    parser.add_argument("--debug", action="store_true", default=False, help="debug logging and full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS:
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description,
            epilog=cmd.epilog,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter if "\n" in cmd.description else argparse.HelpFormatter,
        )
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    _quiet_openmp()
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        parser.print_help(sys.stderr)
        return 2
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    progress = ProgressBar()
    output = getattr(args, "output", None)
    try:
        return cmd.run(args, progress)
    except (KeyboardInterrupt, Cancelled):
        progress.close()
        where = f"; nothing was written to {output}" if output else ""
        sys.stderr.write(f"{PROG}: interrupted{where}.\n")
        return 130
    except ViewforgeError as e:
        progress.close()
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: {e.one_line()}\n")
        return 2
    except Exception as e:  # noqa: BLE001  (the last line of defence: one line, traceback on --debug)
        progress.close()
        if debug:
            traceback.print_exc()
        hint = "" if debug else " Run again with --debug for the traceback."
        sys.stderr.write(
            f"{PROG}: unexpected error: {type(e).__name__}: {_one_line(e)}.{hint}"
            " Please report it with the command you ran.\n"
        )
        return 1
