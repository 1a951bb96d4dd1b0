"""The job operators in Blender (bpy): reconstruct end to end, cancel and a killed worker leave the
scene untouched, every bad input is one clear report; generate from one image (a tiny Zero123++)
lands at the 3D cursor, and missing weights are one clear report.

Scenes are tiny (a few cameras, 48 px Cycles renders, a few dozen optimisation steps) so each test
takes seconds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from blender_helpers import (
    RecordingLayout,
    bbox,
    bbox_iou,
    cycles_photos,
    engine_camera,
    one_undo_step,
    photograph,
    procedural_object,
    scene_state,
    suzanne_scene,
    world_light,
    world_vertices,
)

pytestmark = pytest.mark.blender

RENDER_SIZE = 48


def add_cameras(bpy, n: int, photos: list | None = None, size: int = RENDER_SIZE):
    from viewforge.bridge.cameras import create_bpy_camera

    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    objs = []
    for i in range(n):
        photo = photos[i] if photos else None
        objs.append(create_bpy_camera(engine_camera(i, n, size), scene, name=f"Cam{i}", photo=photo))
    return objs


def png_photo(bpy, path: Path, w: int = RENDER_SIZE, h: int = RENDER_SIZE, seed: int = 0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 4)) * 255).astype(np.uint8)).save(path)
    return bpy.data.images.load(str(path))


def render_scene_photos(bpy, tmp: Path, n: int = 8):
    """Cameras around a procedural object, each with its Cycles render (RGBA) as its photo."""
    scene = bpy.context.scene
    obj = procedural_object(bpy)
    cams = add_cameras(bpy, n)
    cycles_photos(scene, RENDER_SIZE, samples=4)
    world_light(bpy, 1.0)
    for cam in cams:
        photograph(bpy, cam, tmp / f"{cam.name}.png")
    return obj, cams


def _fails(bpy, match: str, **settings) -> str:
    s = bpy.context.scene.viewforge
    for k, v in settings.items():
        setattr(s, k, v)
    before = scene_state(bpy)
    with pytest.raises(RuntimeError, match=match) as info:
        bpy.ops.viewforge.reconstruct()
    text = str(info.value)
    assert "Fix:" in text and "\n" not in text.strip(), text
    assert scene_state(bpy) == before
    from viewforge.bridge import jobs

    assert jobs.ACTIVE is None
    return text


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear report each, nothing changed
# ---------------------------------------------------------------------------------------------


def test_no_cameras(registered):
    _fails(registered, "the scene has no cameras")


def test_camera_without_photo(registered, tmp_path):
    bpy = registered
    photos = [png_photo(bpy, tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    cams = add_cameras(bpy, 4, photos=[*photos, None])
    for c in cams:
        c.select_set(True)
    text = _fails(bpy, "camera 'Cam3' has no photo", selected_only=True, output_folder=str(tmp_path / "out"))
    assert "deselect" in text
    # all cameras: only one has a photo -> too few
    for c in cams[1:3]:
        c.data.background_images.clear()
    _fails(bpy, "only 1 of 4 cameras has a photo", selected_only=False, complete="OFF")


def test_few_photos_completion_needs_the_generator(registered, tmp_path, monkeypatch):
    """1-4 photos: completion by the generator. One photo needs its weights (one clear report);
    2-4 photos without them reconstruct the photos alone, with a warning; the job carries the
    completion options."""
    from viewforge.bridge.reconstruct import ReconstructRequest, prepare_reconstruct

    bpy = registered
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    photos = [png_photo(bpy, tmp_path / f"p{i}.png", seed=i) for i in range(2)]
    cams = add_cameras(bpy, 2, photos=photos)
    out = str(tmp_path / "out")
    prepared = prepare_reconstruct(bpy.context.scene, ReconstructRequest(output_folder=out))
    prepared.cleanup()
    assert prepared.spec.options["complete"] == "auto" and prepared.spec.options["model"] == "zero123pp-v1.2"
    assert prepared.spec.options["allow_download"] is False
    assert any("2 photos: the sides no photo saw will not be completed" in w for w in prepared.warnings)
    text = _fails(bpy, r"Zero123\+\+ v1.2 weights", complete="ON", output_folder=out)
    assert "Allow Online Access" in text
    cams[1].data.background_images.clear()
    _fails(bpy, r"Zero123\+\+ v1.2 weights", complete="AUTO")
    _fails(bpy, "only 1 of 2 cameras has a photo.* at least 2", complete="OFF")


def test_photos_of_different_sizes(registered, tmp_path):
    bpy = registered
    photos = [png_photo(bpy, tmp_path / "a.png"), png_photo(bpy, tmp_path / "b.png", w=RENDER_SIZE, h=RENDER_SIZE // 2)]
    add_cameras(bpy, 2, photos=photos)
    _fails(bpy, r"camera 'Cam1': photo is 48x24 but the render is 48x48", output_folder=str(tmp_path / "out"))


def test_orthographic_camera(registered, tmp_path):
    bpy = registered
    photos = [png_photo(bpy, tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    cams = add_cameras(bpy, 3, photos=photos)
    cams[1].data.type = "ORTHO"
    _fails(bpy, "Cam1.*orthographic", output_folder=str(tmp_path / "out"))
    # an orthographic camera without a photo is not used: no error from it
    from viewforge.bridge.reconstruct import ReconstructRequest, prepare_reconstruct

    cams[1].data.background_images.clear()
    prepared = prepare_reconstruct(bpy.context.scene, ReconstructRequest(output_folder=str(tmp_path / "out")))
    prepared.cleanup()
    assert prepared.camera_names == ["Cam0", "Cam2"] and "Cam1" in prepared.warnings[0]


def test_output_folder_cannot_be_written(registered, tmp_path):
    bpy = registered
    photos = [png_photo(bpy, tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    add_cameras(bpy, 3, photos=photos)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    _fails(bpy, "output folder .*a_file/out cannot be written", output_folder=str(blocker / "out"))


def test_missing_dependencies_disable_the_operator(registered, tmp_path, monkeypatch):
    bpy = registered
    from viewforge.bridge import deps

    photos = [png_photo(bpy, tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    add_cameras(bpy, 3, photos=photos)
    real = deps.find_spec
    monkeypatch.setattr(deps, "find_spec", lambda name: None if name in ("torch", "xatlas") else real(name))
    assert deps.missing("reconstruct") == ["torch", "xatlas"]
    assert not bpy.ops.viewforge.reconstruct.poll()
    text = _fails(bpy, r"missing engine dependencies: torch, xatlas", output_folder=str(tmp_path / "out"))
    assert "Install Dependencies" in text
    monkeypatch.setattr(deps, "find_spec", real)
    assert bpy.ops.viewforge.reconstruct.poll()


def test_generate_input_image_from_file_or_blender(registered, tmp_path):
    """The generate job's input: a file as it is, or an image loaded in Blender written as PNG."""
    from viewforge.bridge.generate import _input_image
    from viewforge.engine.errors import ImageError
    from viewforge.engine.images import load_image

    bpy = registered
    s = bpy.context.scene.viewforge
    s.image_source = "FILE"
    with pytest.raises(ImageError, match="no image file is chosen"):
        _input_image(s, tmp_path)
    s.image_path = str(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="does not exist"):
        _input_image(s, tmp_path)
    image = png_photo(bpy, tmp_path / "in.png", w=20, h=10)
    s.image_path = str(tmp_path / "in.png")
    assert _input_image(s, tmp_path) == tmp_path / "in.png"
    s.image_source = "EDITOR"
    with pytest.raises(ImageError, match="no image is chosen"):
        _input_image(s, tmp_path / "w")
    s.image = image
    (tmp_path / "w").mkdir()
    out = _input_image(s, tmp_path / "w")
    rgb, alpha = load_image(out)
    ref, ref_alpha = load_image(tmp_path / "in.png")
    assert rgb.shape == (10, 20, 3) and np.abs(rgb - ref).max() < 1 / 255 + 1e-6
    assert alpha is not None and np.abs(alpha - ref_alpha).max() < 1 / 255 + 1e-6


def _disc_png(path: Path) -> Path:
    from viewforge.engine.images import save_png

    img = np.ones((120, 120, 3), np.float32)
    yy, xx = np.mgrid[:120, :120]
    img[(xx - 60) ** 2 + (yy - 60) ** 2 < 40**2] = [0.8, 0.3, 0.1]
    return save_png(path, img)


def _generate_settings(bpy, tmp_path: Path, model: str):
    s = bpy.context.scene.viewforge
    s.mode, s.image_source, s.image_path, s.model = "GENERATE", "FILE", str(_disc_png(tmp_path / "disc.png")), model
    s.quality, s.device = "DRAFT", "CPU"
    s.iterations, s.faces, s.texture_size, s.size = 60, 1500, 128, 1.5
    s.output_folder, s.output_name = str(tmp_path / "out"), "gen"
    return s


def test_generate_operator_imports_at_the_3d_cursor(registered, tmp_path):
    """A tiny Zero123++ saved to a folder, the settings point at it: the operator (background mode)
    adds one textured mesh whose bounding box stands on the 3D cursor; one undo removes it."""
    from tiny_models import save_tiny

    bpy = registered
    model = save_tiny(tmp_path / "tiny", seed=0)
    _generate_settings(bpy, tmp_path, str(model))
    bpy.context.scene.cursor.location = (2.0, -1.0, 0.5)
    assert bpy.ops.viewforge.generate.poll()
    with one_undo_step(bpy, bpy.ops.viewforge.generate) as new:
        assert len(new) == 1 and new[0].type == "MESH" and new[0].name == "gen"
        obj = new[0]
        assert 100 < len(obj.data.polygons) <= 1500 and obj.data.uv_layers
        lo, hi = bbox(world_vertices(obj))
        assert abs(float(lo[2]) - 0.5) < 1e-3  # standing on the cursor
        assert np.allclose((lo[:2] + hi[:2]) / 2, (2.0, -1.0), atol=1e-3)  # centred on it
        assert abs(float((hi - lo).max()) - 1.5) < 1e-3  # Size
        mat = obj.data.materials[0]
        bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        link = bsdf.inputs["Base Color"].links[0]
        assert link.from_node.type == "TEX_IMAGE" and tuple(link.from_node.image.size) == (128, 128)
        assert (tmp_path / "out" / "gen.glb").is_file()
        from viewforge.bridge import jobs

        assert jobs.LAST.state == "done" and "8 generator evaluations" in jobs.LAST.message


def test_generate_missing_weights_is_one_clear_error(registered, tmp_path, monkeypatch):
    """The registry id with an empty model cache and online access off: refused with the model's
    name, download size and how to allow the download; the scene and the output folder unchanged."""
    from viewforge.bridge import jobs
    from viewforge.bridge.weights import weights_status

    bpy = registered
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _generate_settings(bpy, tmp_path, "zero123pp-v1.2")
    st = weights_status("zero123pp-v1.2")
    assert not st.cached and st.info.licence.startswith("CC-BY-NC") and st.download_gb > 1
    assert str(st.folder).startswith(str(tmp_path / "empty-cache"))
    assert bpy.app.online_access is False  # the bpy module: no download may happen
    before = scene_state(bpy)
    with pytest.raises(RuntimeError, match="Zero123\\+\\+ v1.2 weights .* GB download.* not in the local model cache") as info:
        bpy.ops.viewforge.generate()
    text = str(info.value)
    assert "Fix:" in text and "Allow Online Access" in text and "\n" not in text.strip(), text
    assert scene_state(bpy) == before and jobs.ACTIVE is None
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    # an unknown model is refused the same way
    bpy.context.scene.viewforge.model = "no-such-model"
    with pytest.raises(RuntimeError, match="unknown model 'no-such-model'"):
        bpy.ops.viewforge.generate()
    assert scene_state(bpy) == before


def test_weights_status_reads_the_cache_only(registered, tmp_path, monkeypatch):
    """A complete snapshot of the pinned revision in the cache counts as downloaded; a local
    model folder is ready as it is; nothing touches the network."""
    from viewforge.bridge.weights import hub_cache_dir, weights_status
    from viewforge.engine.mvgen.zero123pp import INFO, SPEC

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert hub_cache_dir(str(tmp_path / "models")) == tmp_path / "models" / "hub"
    snap = tmp_path / "models" / "hub" / "models--sudo-ai--zero123plus-v1.2" / "snapshots" / INFO.revision
    for f in SPEC.files():
        (snap / f).parent.mkdir(parents=True, exist_ok=True)
    for f in SPEC.files()[:-1]:
        (snap / f).write_text("{}")
    assert not weights_status(INFO.id, str(tmp_path / "models")).cached  # one file missing
    (snap / SPEC.files()[-1]).write_text("{}")
    st = weights_status(INFO.id, str(tmp_path / "models"))
    assert st.cached and st.folder == snap and st.error == ""
    assert weights_status("nope").error.startswith("unknown model 'nope'")
    assert weights_status(str(tmp_path)).error.endswith("has no viewforge_generator.json")


# ---------------------------------------------------------------------------------------------
# Cancel and a killed worker: the scene is exactly as before
# ---------------------------------------------------------------------------------------------


def _start_long_job(bpy, tmp_path):
    """A job that fits for a long time (many steps, splat output) started without a timer."""
    from viewforge.bridge.reconstruct import ReconstructRequest, start_reconstruct

    photos = [png_photo(bpy, tmp_path / f"p{i}.png", seed=i) for i in range(4)]
    add_cameras(bpy, 4, photos=photos)
    req = ReconstructRequest(
        quality="draft", device="cpu", output_folder=str(tmp_path / "out"), output_suffix=".ply",
        overrides={"resolution": 32, "iterations": 100000},
    )  # fmt: skip
    before = scene_state(bpy)
    prepared = start_reconstruct(bpy.context.scene, req, timer=False)
    return prepared, before


def _tick_until(predicate, timeout=60.0):
    from viewforge.bridge import jobs

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if jobs.tick() is None or predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_cancel_leaves_the_scene_exactly_as_before(registered, tmp_path):
    bpy = registered
    from viewforge.bridge import jobs

    prepared, before = _start_long_job(bpy, tmp_path)
    assert jobs.is_running() and prepared.work_dir.is_dir()
    with pytest.raises(RuntimeError, match="is running"):  # one job at a time
        bpy.ops.viewforge.reconstruct()
    assert bpy.ops.viewforge.cancel.poll()
    _tick_until(lambda: jobs.status()["stage"] == "fit")
    assert jobs.status()["stage"] == "fit"
    t = time.monotonic()
    bpy.ops.viewforge.cancel()
    _tick_until(lambda: False)
    assert time.monotonic() - t < 2.0
    assert jobs.ACTIVE is None and jobs.LAST.state == "cancelled"
    assert "cancelled" in jobs.LAST.message
    assert scene_state(bpy) == before
    assert not prepared.work_dir.exists()
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_killed_worker_reports_an_error_and_changes_nothing(registered, tmp_path):
    bpy = registered
    from viewforge.bridge import jobs

    prepared, before = _start_long_job(bpy, tmp_path)
    _tick_until(lambda: jobs.status()["stage"] == "fit")
    os.kill(jobs.ACTIVE.handle.pid, signal.SIGKILL)
    _tick_until(lambda: False)
    assert jobs.ACTIVE is None and jobs.LAST.state == "failed"
    assert "killed by SIGKILL" in jobs.LAST.message and "Fix:" in jobs.LAST.message
    assert scene_state(bpy) == before
    assert not prepared.work_dir.exists()


def test_worker_error_is_reported_by_the_operator(registered, tmp_path):
    """An error inside the worker (an unreadable photo from the photo folder) comes back as the
    operator's one-line report; the scene is unchanged."""
    bpy = registered
    folder = tmp_path / "photos"
    for i in range(3):
        png_photo(bpy, folder / f"Cam{i}.png", seed=i)
    (folder / "Cam1.png").write_bytes(b"not a png at all")
    add_cameras(bpy, 3)
    s = bpy.context.scene.viewforge
    s.output_folder, s.photo_source, s.photo_folder = str(tmp_path / "out"), "FOLDER", str(folder)
    s.quality, s.resolution, s.iterations = "DRAFT", 32, 20
    before = scene_state(bpy)
    match = "Cam1.*cannot be read|Cam1.*not.*image"
    with pytest.raises(RuntimeError, match=match) as info:
        bpy.ops.viewforge.reconstruct()
    assert "Fix:" in str(info.value)
    assert scene_state(bpy) == before


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def test_reconstruct_operator_builds_an_aligned_textured_mesh(registered, tmp_path):
    bpy = registered
    source, cams = render_scene_photos(bpy, tmp_path / "renders", n=10)
    source_box = bbox(world_vertices(source))
    source.hide_set(True)
    s = bpy.context.scene.viewforge
    s.quality = "DRAFT"
    s.device = "CPU"
    s.refine_cameras = False  # exact cameras; 60 steps are too few for the photometric refinement of 48 px photos
    s.resolution, s.iterations, s.faces, s.texture_size = 40, 60, 2000, 256
    s.output_folder = str(tmp_path / "out")
    s.output_name = "recon"
    with one_undo_step(bpy, bpy.ops.viewforge.reconstruct) as new:
        assert len(new) == 1 and new[0].type == "MESH" and new[0].name == "recon"
        obj = new[0]
        assert 500 < len(obj.data.polygons) <= 2000 and obj.data.uv_layers
        mat = obj.data.materials[0]
        assert any(n.type == "TEX_IMAGE" and n.image is not None for n in mat.node_tree.nodes)
        iou = bbox_iou(bbox(world_vertices(obj)), source_box)
        assert iou >= 0.8, iou
        assert (tmp_path / "out" / "recon.glb").is_file()


# ---------------------------------------------------------------------------------------------
# The job manager (bridge/jobs.py) with stand-in handles: the timer path, one job at a time
# ---------------------------------------------------------------------------------------------


class FakeHandle:
    """Implements the worker interface; ends after ``steps`` polls in ``final`` state."""

    def __init__(self, steps=2, final="done", result="R", error=None):
        self.steps, self.final = steps, final
        self.state, self.stage, self.fraction, self.message = "running", "fit", 0.0, ""
        self.result, self.error, self.cancelling, self.killed = result, error, False, False

    def poll(self):
        self.steps -= 1
        self.fraction = min(1.0, self.fraction + 0.5)
        if self.steps <= 0:
            self.state = "cancelled" if self.cancelling else self.final
            return False
        return True

    def cancel(self):
        self.cancelling = True

    def kill(self):
        self.killed = True


def test_manager_imports_on_success_from_the_timer_function(registered):
    from viewforge.bridge import jobs

    calls, cleaned = [], []
    h = FakeHandle(steps=3)
    jobs.start(h, "test", on_success=lambda r: calls.append(r) or f"imported {r}", cleanup=lambda: cleaned.append(1), timer=False)
    assert jobs.is_running() and jobs.status()["label"] == "test"
    assert jobs.status_line() == "Viewforge test: fit 0%"
    other = FakeHandle()
    with pytest.raises(Exception, match="another Viewforge job \\(test\\) is running"):
        jobs.start(other, "second", timer=False)
    assert other.killed and other.cancelling  # refused jobs are stopped at once
    assert jobs.tick() == jobs.POLL_INTERVAL_S and not calls
    assert jobs.status_line() == "Viewforge test: fit 50%"
    while jobs.tick() is not None:
        pass
    assert calls == ["R"] and cleaned == [1]
    assert jobs.LAST.state == "done" and jobs.LAST.message == "imported R"


def test_manager_reports_an_import_failure_and_stop_all(registered):
    from viewforge.bridge import jobs
    from viewforge.engine.errors import MeshError

    def bad(_):
        raise MeshError("mesh file x.glb has no triangles", "run again")

    jobs.start(FakeHandle(steps=1), "test", on_success=bad, timer=False)
    assert jobs.tick() is None
    assert jobs.LAST.state == "failed" and jobs.LAST.message == "mesh file x.glb has no triangles. Fix: run again."
    h = FakeHandle(steps=100)
    jobs.start(h, "long", on_success=lambda r: pytest.fail("must not import"), timer=False)
    jobs.stop_all()  # what loading a file or unregistering does
    assert h.killed and jobs.ACTIVE is None and jobs.LAST.state == "cancelled"


def test_status_bar_and_panel_show_a_running_job(registered):
    import types

    from viewforge.bridge import jobs
    from viewforge.panels.main import VIEWFORGE_PT_main, _draw_status

    jobs.start(FakeHandle(steps=5), "reconstruct", timer=False)
    try:
        jobs.tick()
        log = []
        _draw_status(types.SimpleNamespace(layout=RecordingLayout(log)), registered.context)
        assert log[0][0] == "progress" and log[0][1] == 0.5 and "reconstruct: fit 50%" in log[0][2]
        assert log[1][1] == "viewforge.cancel"
        log = []
        VIEWFORGE_PT_main.draw(types.SimpleNamespace(layout=RecordingLayout(log)), registered.context)
        ops = [e[1] for e in log if e[0] == "operator"]
        assert "viewforge.cancel" in ops and "viewforge.reconstruct" not in ops  # one job at a time
        assert not registered.ops.viewforge.reconstruct.poll()
    finally:
        jobs.stop_all()


def test_photos_from_a_folder_matched_by_camera_name(registered, tmp_path):
    import json

    from viewforge.bridge.reconstruct import ReconstructRequest, image_file_size, prepare_reconstruct

    bpy = registered
    folder = tmp_path / "photos"
    png_photo(bpy, folder / "cam0.PNG", w=96, h=96)  # case-insensitive, twice the render size
    png_photo(bpy, folder / "Cam1.png", seed=1)
    from PIL import Image

    Image.new("RGB", (48, 48)).save(folder / "Cam1.jpg")  # PNG preferred over JPEG
    Image.new("RGB", (96, 48)).save(folder / "other.jpg")
    assert image_file_size(folder / "other.jpg") == (96, 48) and image_file_size(folder / "cam0.PNG") == (96, 96)
    for c in bpy.data.images:
        bpy.data.images.remove(c)
    add_cameras(bpy, 3)
    before = scene_state(bpy)
    req = ReconstructRequest(photo_source="FOLDER", photo_folder=str(folder), output_folder=str(tmp_path / "out"),
                             complete="off")
    prepared = prepare_reconstruct(bpy.context.scene, req)
    try:
        assert prepared.camera_names == ["Cam0", "Cam1"]
        assert prepared.warnings == ["1 camera(s) without a photo were skipped: Cam2"]
        meta = json.loads(Path(prepared.spec.input).read_text())
        assert [f["file_path"] for f in meta["frames"]] == ["images/Cam0.png", "images/Cam1.png"]
        assert [(f.get("w", meta.get("w")), f.get("h", meta.get("h"))) for f in meta["frames"]] == [(96, 96), (48, 48)]
        assert prepared.spec.output == str(tmp_path / "out" / "Scene_reconstruction.glb")
        assert scene_state(bpy) == before
    finally:
        prepared.cleanup()
    assert not prepared.work_dir.exists()


def test_photos_without_cameras_become_cameras_and_a_mesh(registered, photo_folder, tmp_path):
    """Photos Without Cameras: structure from motion in the job; the estimated cameras (each with
    its photo) and the mesh arrive together as one undo step; bad folders are one clear report."""
    pytest.importorskip("pycolmap")
    bpy = registered
    _, folder = photo_folder
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(next(folder.glob("*.png")).read_bytes())
    _fails(bpy, "holds 1 photo", photo_source="PHOTOS", photo_folder=str(one), output_folder=str(tmp_path / "out"))
    _fails(bpy, "does not exist", photo_folder=str(tmp_path / "nowhere"))
    from viewforge.bridge.reconstruct import ReconstructRequest, prepare_reconstruct

    # the job reads the photo folder itself: no temporary copy is made
    prepared = prepare_reconstruct(bpy.context.scene, ReconstructRequest(
        photo_source="PHOTOS", photo_folder=str(folder), output_folder=str(tmp_path / "out"), complete="off"))
    assert prepared.work_dir is None and prepared.spec.input == str(folder)
    prepared.cleanup()
    s = bpy.context.scene.viewforge
    s.photo_folder = str(folder)
    s.quality, s.device = "DRAFT", "CPU"
    s.resolution, s.iterations, s.faces, s.texture_size = 48, 80, 2000, 256
    s.output_name = "sfm"
    with one_undo_step(bpy, bpy.ops.viewforge.reconstruct) as new:
        meshes, cams = [o for o in new if o.type == "MESH"], [o for o in new if o.type == "CAMERA"]
        assert [o.name for o in meshes] == ["sfm"] and len(cams) == 16
        assert all(len(c.data.background_images) and c.data.background_images[0].image is not None for c in cams)
        scene = bpy.context.scene
        assert (scene.render.resolution_x, scene.render.resolution_y) == (256, 256)
        assert (tmp_path / "out" / "sfm_cameras" / "transforms.json").is_file()
        # the mesh sits where the estimated cameras look: every camera sees the object's centre in front
        centre = world_vertices(meshes[0]).mean(0)
        for c in cams:
            local = np.linalg.inv(np.array(c.matrix_world)) @ np.append(centre, 1.0)
            assert local[2] < 0  # Blender cameras look down -Z


def test_two_photos_are_completed_by_the_generator(registered, tiny_model, tmp_path):
    """Reconstruct from Cameras with two photos and Completion On: the worker loads the (tiny)
    generator from the panel's model folder, completes the object and imports one textured mesh
    where the cameras look, as one undo step."""
    bpy = registered
    source, cams = render_scene_photos(bpy, tmp_path / "renders", n=2)
    source_box = bbox(world_vertices(source))
    source.hide_set(True)
    s = bpy.context.scene.viewforge
    s.complete, s.model = "ON", str(tiny_model)
    s.quality, s.device = "DRAFT", "CPU"
    s.resolution, s.iterations, s.faces, s.texture_size = 48, 90, 1500, 128
    s.output_folder, s.output_name = str(tmp_path / "out"), "completed"
    with one_undo_step(bpy, bpy.ops.viewforge.reconstruct) as new:
        assert [o.name for o in new] == ["completed"] and new[0].type == "MESH" and new[0].data.uv_layers
        from viewforge.bridge import jobs

        assert jobs.LAST.state == "done" and "unseen sides generated" in jobs.LAST.message
        # the cameras are refined by default, and two photos cannot pin their vergence: the report says so
        assert "add a third photo from another height" in jobs.LAST.message
        # the photos anchor the result: it covers the photographed object (the tiny generator's random
        # views add blobs around it, so the box is larger than the object's)
        box = bbox(world_vertices(new[0]))
        lo, hi = np.maximum(box[0], source_box[0]), np.minimum(box[1], source_box[1])
        covered = np.prod(np.clip(hi - lo, 0, None)) / np.prod(source_box[1] - source_box[0])
        volume, source_volume = np.prod(box[1] - box[0]), np.prod(source_box[1] - source_box[0])
        assert covered > 0.8 and volume < 30 * source_volume, (box, source_box)


# ---------------------------------------------------------------------------------------------
# Refinement is an improvement step: when it cannot help, the cameras stay and the mesh is built
# ---------------------------------------------------------------------------------------------


def test_default_reconstruct_keeps_the_cameras_refinement_cannot_use(registered, tmp_path, capsys):
    """Refine Cameras on (the default) with 160 px photos that give SIFT too little to match: the
    job keeps every camera where it is, says so in its report, and builds the mesh over the object.
    (Photos with no texture at all take the same path: tests/test_poses_features.py.)"""
    bpy = registered
    source, cams = suzanne_scene(bpy, tmp_path / "renders", n=6, size=160)
    source_box = bbox(world_vertices(source))
    source.hide_set(True)
    poses = [np.array(c.matrix_world) for c in cams]
    s = bpy.context.scene.viewforge
    assert s.refine_cameras and s.complete == "AUTO"  # the defaults
    s.quality, s.device = "DRAFT", "CPU"
    s.resolution, s.iterations, s.faces, s.texture_size = 64, 120, 3000, 256
    s.output_folder, s.output_name = str(tmp_path / "out"), "suzanne"
    with one_undo_step(bpy, bpy.ops.viewforge.reconstruct) as new:
        from viewforge.bridge import jobs

        assert [o.type for o in new] == ["MESH"] and new[0].data.uv_layers
        assert jobs.LAST.state == "done"
        assert "cameras kept as placed: pose refinement by features found" in jobs.LAST.message, jobs.LAST.message
        assert "cameras kept as they were" not in jobs.LAST.message  # said once
        assert all(np.array_equal(np.array(c.matrix_world), p) for c, p in zip(cams, poses))
        iou = bbox_iou(bbox(world_vertices(new[0])), source_box)
        assert iou >= 0.75, iou
    # background mode (blender -b): the job's progress is in the log as lines, one per stage at least
    stages = {ln.split(": ")[2].split()[0] for ln in capsys.readouterr().out.splitlines()
              if ln.startswith("viewforge progress: reconstruct: ")}
    assert {"fit", "poses"} <= stages, stages
