"""The newest Blender (bpy 5.3, Python 3.13) with the worker in an engine Python: run by
scripts/test_blender_latest.sh inside its chroot, with ``$VIEWFORGE_ENGINE_PYTHON`` set.

Registers the extension from ``--tree`` (as the package ``viewforge``), runs the operators'
checks (Check Engine Python with a good and a missing interpreter; the run buttons are enabled
although Blender's Python has no torch), then two jobs through the operators, each of which must
leave a textured mesh in the scene:

1. Reconstruct from Cameras: a subdivided, noise-textured Suzanne seen by ``--cams`` cameras
   (Cycles renders at ``--size`` px as their background images); Refine Cameras on as in the panel (``--no-refine-cameras`` turns it off).
2. Photos Without Cameras: ``--photos`` Cycles renders (``--photo-size`` px, 32 samples) of the
   same object in a folder, the cameras deleted; the job estimates them and adds them with the mesh.

Prints one line per figure and ``RESULT: PASS`` or ``RESULT: FAIL``; the exit status says the same.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", required=True, help="the extension's source tree")
    p.add_argument("--work", required=True, help="a scratch folder")
    p.add_argument("--cams", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--photo-size", type=int, default=320)
    p.add_argument("--no-refine-cameras", dest="refine_cameras", action="store_false",
                   help="Reconstruct with Refine Cameras off (on is the panel's default)")
    p.add_argument("--skip-photos", action="store_true")
    p.add_argument("--skip-reconstruct", action="store_true")
    p.add_argument("--capture", default="", help="copy the Reconstruct job's posed set, spec and output to this folder")
    return p.parse_args()


def world_box(obj) -> np.ndarray:
    from blender_helpers import bbox, world_vertices

    return bbox(world_vertices(obj))


def texture_of(obj):
    """The image of the object's base-colour texture node (None when it has none)."""
    for slot in obj.material_slots:
        if slot.material and slot.material.node_tree:
            for node in slot.material.node_tree.nodes:
                if node.type == "TEX_IMAGE" and node.image is not None:
                    return node.image
    return None


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        print(f"CHECK {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)
        return ok


def textured_mesh(check: Checks, bpy, new: list, label: str) -> object | None:
    meshes = [o for o in new if o.type == "MESH"]
    if not check(len(meshes) == 1, f"{label}: one new mesh object ({[o.name for o in new]})"):
        return None
    obj = meshes[0]
    image = texture_of(obj)
    check(len(obj.data.polygons) > 100 and len(obj.data.uv_layers) > 0, f"{label}: {len(obj.data.polygons)} faces with UVs")
    ok = image is not None and image.size[0] > 0
    spread = 0.0
    if ok:
        px = np.empty(image.size[0] * image.size[1] * image.channels, np.float32)
        image.pixels.foreach_get(px)
        spread = float(px.reshape(-1, image.channels)[:, :3].std())
    check(ok and spread > 0.02, f"{label}: texture {tuple(image.size) if ok else None}, pixel spread {spread:.3f}")
    return obj


def main() -> int:
    args = parse_args()
    work = Path(args.work)
    shim = work / "shim"
    shim.mkdir(parents=True, exist_ok=True)
    if not (shim / "viewforge").exists():
        os.symlink(args.tree, shim / "viewforge")
    sys.path.insert(0, str(shim))
    sys.path.insert(0, str(Path(args.tree) / "tests"))  # the test scenes (tests/blender_helpers.py)
    import bpy

    import viewforge
    from viewforge.bridge import engine_python, jobs
    from blender_helpers import bbox_iou, ring_cameras, sun, suzanne, world_light

    check = Checks()
    figures: dict[str, str] = {}
    print(f"Blender {bpy.app.version_string}, Python {sys.version.split()[0]}, extension from {Path(viewforge.__file__).parent}")
    check(Path(viewforge.__file__).resolve().parent == Path(args.tree).resolve(), "the extension is this tree")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    t = time.perf_counter()
    viewforge.register()
    figures["register_s"] = f"{time.perf_counter() - t:.2f}"
    check(hasattr(bpy.types.Scene, "viewforge"), "the extension registers (scene settings)")
    check(importlib.util.find_spec("torch") is None, "Blender's Python has no torch (jobs must run in the engine Python)")
    figures["blender_has_pillow"] = str(importlib.util.find_spec("PIL") is not None)
    python = engine_python.configured()
    check(bool(python), f"engine Python from ${engine_python.ENV_VAR}: {python}")

    # --- the operators' checks
    t = time.perf_counter()
    check(bpy.ops.viewforge.check_engine_python() == {"FINISHED"}, "Check Engine Python passes")
    figures["check_engine_python_s"] = f"{time.perf_counter() - t:.1f}"
    info = engine_python.last_check(python)
    figures["engine_python"] = info.summary() if info else "?"
    try:
        bpy.ops.viewforge.check_engine_python(python=str(work / "no" / "python"))
        check(False, "a missing engine Python is reported")
    except RuntimeError as e:
        text = str(e).strip()
        check("does not exist" in text and "Engine Python" in text and "\n" not in text.rstrip(), f"a missing engine Python: {text}")
    check(bpy.ops.viewforge.reconstruct.poll(), "Reconstruct is enabled (its dependencies are the engine Python's)")
    check(bpy.ops.viewforge.generate.poll(), "Generate is enabled")
    try:
        bpy.ops.viewforge.reconstruct()
        check(False, "Reconstruct with no cameras is refused")
    except RuntimeError as e:
        check("camera" in str(e).lower(), f"Reconstruct with no cameras: {str(e).strip()}")

    # --- Reconstruct from Cameras
    scene = bpy.context.scene
    source = suzanne(bpy, "blotches")  # high-contrast blotches: features SIFT can match
    sun(bpy, energy=2.0)
    world_light(bpy, 0.8)  # ambient light: the sides the sun misses keep their texture
    if args.skip_reconstruct:
        args.cams = 0
    t = time.perf_counter()
    ring_cameras(bpy, work / "renders", args.cams, args.size, name="Cam{i:02d}")
    figures["render_cameras_s"] = f"{time.perf_counter() - t:.0f}"
    source_box = world_box(source)
    source.hide_set(True)
    s = scene.viewforge
    s.refine_cameras = bool(args.refine_cameras)
    s.quality, s.device = "DRAFT", "AUTO"
    s.resolution, s.iterations, s.faces, s.texture_size = args.size, 300, 5000, 512
    s.output_folder, s.output_name = str(work / "out"), "suzanne"
    capture = args.capture
    if capture:  # keep the job's posed set, spec and result (a copy of the temporary folder)
        import json
        import shutil

        from viewforge.bridge.prepared import PreparedJob

        cleanup = PreparedJob.cleanup

        def keep(self, cleanup=cleanup):
            if self.work_dir is not None:
                dst = Path(capture) / Path(self.work_dir).name
                shutil.copytree(self.work_dir, dst, dirs_exist_ok=True)
                (dst / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=1, default=str))
            cleanup(self)

        PreparedJob.cleanup = keep
        np.save(Path(capture) / "source_box.npy", world_box(source))
    before = set(bpy.data.objects)
    t = time.perf_counter()
    try:
        if not args.skip_reconstruct:
            bpy.ops.viewforge.reconstruct()
    except RuntimeError as e:
        check(False, f"Reconstruct from cameras: {str(e).strip()}")
    figures["reconstruct_s"] = f"{time.perf_counter() - t:.0f}"
    new = [o for o in bpy.data.objects if o not in before]
    obj = None if args.skip_reconstruct else textured_mesh(check, bpy, new, f"Reconstruct ({args.cams} cameras, {args.size} px, refine {args.refine_cameras})")
    if obj is not None:
        iou = bbox_iou(world_box(obj), source_box)
        figures["reconstruct_iou"] = f"{iou:.2f}"
        figures["reconstruct_box"] = f"{np.round(world_box(obj), 2).tolist()} (Suzanne {np.round(source_box, 2).tolist()})"
        check(iou >= 0.75, f"Reconstruct: bounding-box IoU with Suzanne {iou:.2f}")
    figures["reconstruct_report"] = jobs.LAST.message if jobs.LAST else ""
    if args.capture and (work / "out").exists():
        import shutil

        shutil.copytree(work / "out", Path(args.capture) / "out", dirs_exist_ok=True)

    # --- Photos Without Cameras
    if not args.skip_photos:
        for o in [o for o in bpy.data.objects if o.type in {"CAMERA", "MESH"} and o is not source]:
            bpy.data.objects.remove(o)
        source.hide_set(False)
        photos = work / "photos"
        t = time.perf_counter()
        # 32 samples: SIFT needs photos without path-tracing noise (4 samples register 2 of 24)
        for cam in ring_cameras(bpy, photos, args.photos, args.photo_size, rings=(15, 35), distance=3.2, name="p{i:02d}",
                                samples=32, background=False):  # fmt: skip
            bpy.data.objects.remove(cam)
        figures["render_photos_s"] = f"{time.perf_counter() - t:.0f}"
        source.hide_set(True)
        s.photo_source, s.photo_folder, s.complete = "PHOTOS", str(photos), "OFF"
        s.resolution, s.iterations, s.faces, s.texture_size = 128, 300, 5000, 512
        s.output_name = "photos"
        before = set(bpy.data.objects)
        t = time.perf_counter()
        try:
            bpy.ops.viewforge.reconstruct()
        except RuntimeError as e:
            check(False, f"Photos Without Cameras: {str(e).strip()}")
        figures["photos_s"] = f"{time.perf_counter() - t:.0f}"
        new = [o for o in bpy.data.objects if o not in before]
        textured_mesh(check, bpy, new, f"Photos Without Cameras ({args.photos} photos, {args.photo_size} px)")
        n_cams = sum(o.type == "CAMERA" for o in new)
        figures["photos_cameras"] = f"{n_cams}/{args.photos}"
        check(n_cams >= args.photos * 3 // 4, f"Photos Without Cameras: {n_cams} of {args.photos} cameras estimated and added")
        figures["photos_report"] = jobs.LAST.message if jobs.LAST else ""

    viewforge.unregister()
    for k, v in figures.items():
        print(f"FIGURE {k}: {v}")
    print("RESULT:", "PASS" if not check.failed else f"FAIL ({len(check.failed)} checks)", flush=True)
    return 0 if not check.failed else 1


if __name__ == "__main__":
    sys.exit(main())
