"""Completion from a few photos with cameras (engine/complete.py): rig placement at the reference
photo's camera, anchors, the PerturbedOracle set up from the true cameras, bad inputs, cancel,
and one end-to-end run of the tiny Zero123++ to a textured GLB (CPU, small)."""

from __future__ import annotations

import numpy as np
import pytest

from viewforge.engine.errors import Cancelled, DependencyError, ImageError, InputError, OutputError
from viewforge.engine.mvgen.base import orbit_camera
from viewforge.engine.progress import CancelToken

SIZE = 48
FIT = {"init_points": 1500, "refine_start": 40, "refine_every": 20, "sh_degree": 0}
FAST = dict(device="cpu", fit_iterations=80, warm_iterations=30, rvc_steps=40, fit=FIT, faces=1500,
            texture_size=128, mesh={"fuse_views": 12, "fuse_size": 64, "grid": 48, "bake_render_views": 4,
                                    "texture_refine_iterations": 0})


@pytest.fixture(scope="module")
def scene():
    """The demo object (normalised), a Zero123++-like rig in the generator's frame, and photos
    from one side of the object (azimuths -20 and 25 degrees, 64 px, FoV 35, distance 4)."""
    from viewforge.engine.demo import DemoConfig, demo_mesh
    from viewforge.engine.io.types import Mesh, PosedSet
    from viewforge.engine.mesh.evaluate import normalisation
    from viewforge.engine.mvgen.oracle import render_rgba

    m = demo_mesh(DemoConfig(segments=32, rings=20, texture_size=256))
    s, off = normalisation(m)
    m = Mesh(m.vertices * s + off, m.faces, m.normals, m.uvs, m.colors, m.texture)
    rig = [orbit_camera(30 + 60 * i, 20 if i % 2 == 0 else -10, 4.5, 30, SIZE, f"rig{i}") for i in range(6)]
    ref = orbit_camera(0, 0, 4.5, 30, SIZE, "ref")
    cams = [orbit_camera(a, 10, 4.0, 35, 64, name=f"p{a}") for a in (-20, 25)]
    rend = [render_rgba(m, c) for c in cams]
    posed = PosedSet(cams, [r[..., :3] for r in rend], [r[..., 3] for r in rend])
    return m, rig, ref, posed


def _subset(posed, ids):
    from viewforge.engine.io.types import PosedSet

    return PosedSet([posed.cameras[i] for i in ids], [posed.images[i] for i in ids],
                    [posed.masks[i] for i in ids], [posed.names[i] for i in ids])


def test_rig_reference_camera_is_the_photo_camera(scene):
    from viewforge.engine.complete import layout, place_rig, prepare_photos

    m, rig, ref, posed = scene
    # a square photo camera looking at the origin: the placed reference camera IS that camera
    photo = orbit_camera(40, 25, 3.0, 30, SIZE, "photo")
    pl = place_rig([ref] + rig, ref, photo, np.zeros(3))
    assert np.allclose(pl.cameras[0].world_to_camera, photo.world_to_camera, atol=1e-9)
    assert abs(pl.cameras[0].fx - photo.fx) < 1e-9 and abs(pl.scale - 3.0 / 4.5) < 1e-12
    # every rig camera is the generator's, mapped by the similarity (centres and view directions)
    for g, c in zip(rig, pl.cameras[1:]):
        assert np.allclose(c.center, pl.to_scene(g.center[None])[0], atol=1e-9)
        assert np.allclose(c.R, g.R @ pl.rotation.T, atol=1e-12)
        assert abs(np.linalg.norm(c.center) - 3.0) < 1e-9
    # from photos: the reference camera sits at the reference photo's centre, looks at the centre
    lay = layout(prepare_photos(posed, 256), rig, ref)
    assert lay.reference in (0, 1) and lay.centre_method == "rays"
    p = posed.cameras[lay.reference]
    v = lay.placement.reference
    assert np.allclose(v.center, p.center, atol=1e-9)
    uv, z = v.project(lay.centre[None])
    assert np.allclose(uv[0], [SIZE / 2, SIZE / 2], atol=1e-6) and z[0] > 0
    assert np.linalg.norm(lay.centre) < 0.35  # the demo object's box centre is the origin
    # the condition image (photo warped into the virtual camera) agrees with the truth there
    from viewforge.engine.metrics import psnr
    from viewforge.engine.mvgen.oracle import render_rgba

    truth = render_rgba(m, v)
    c = lay.condition.rgba

    def white(x):
        return x[..., :3] * x[..., 3:4] + 1 - x[..., 3:4]

    assert psnr(white(c), white(truth)) > 28
    box = np.argwhere(c[..., 3] > 0.5)
    span = (box.max(0) - box.min(0) + 1).max() / SIZE
    assert 0.7 < span <= 0.85  # the object spans fill = 0.8 of the condition image


def test_one_photo_completes_to_a_mesh(scene, tmp_path):
    from viewforge.engine.complete import CompleteConfig, complete
    from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle

    m, rig, ref, posed = scene
    one = _subset(posed, [1])
    orc = PerturbedOracle.for_photos(m, one, rig, ref, OracleConfig(seed=2))
    out = tmp_path / "one.glb"
    events = []
    res = complete(one, out, CompleteConfig(**FAST), generator=orc, progress=events.append)
    assert out.is_file() and res.output == out
    assert res.metrics["centre_method"] == "one photo" and res.reference == 0
    assert res.metrics["generator_evals"] == 4 and len(res.views) == 6
    assert res.metrics["psnr_inputs"] > 22, res.metrics
    assert [r["t"] for r in res.metrics["rvc"]] == [499, 249]
    assert res.mesh is not None and res.mesh.num_faces > 100
    lo, hi = res.mesh.bounds()
    assert np.all(lo < 0.3) and np.all(hi > -0.3) and float((hi - lo).max()) < 4  # around the object
    assert {"sample", "complete"} <= {e.stage for e in events}
    assert any("rvc" in e.message for e in events if e.stage == "sample")


def test_completion_bad_inputs_and_cancel(scene, tmp_path):
    from viewforge.engine.complete import CompleteConfig, complete
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.mvgen.oracle import PerturbedOracle

    m, rig, ref, posed = scene
    orc = PerturbedOracle.for_photos(m, posed, rig, ref)
    cfg = CompleteConfig(**FAST)
    with pytest.raises(InputError, match="no photos"):
        complete(None, None, cfg, generator=orc)
    with pytest.raises(InputError, match="no photos"):
        complete([], None, cfg, generator=orc)
    with pytest.raises(InputError, match="no cameras"):
        complete(list(posed.images), None, cfg, generator=orc)
    with pytest.raises(OutputError, match="not an output format"):
        complete(posed, tmp_path / "x.obj", cfg, generator=orc)
    empty = PosedSet(posed.cameras, posed.images, [np.zeros_like(x) for x in posed.masks])
    with pytest.raises(ImageError, match="empty mask"):
        complete(empty, None, cfg, generator=orc)
    with pytest.raises(InputError, match="reference photo 5"):
        complete(posed, None, CompleteConfig(reference=5, **FAST), generator=orc)
    # the default generator's weights are not here (tests are offline): a clear DependencyError
    with pytest.raises(DependencyError, match="Zero123"):
        complete(posed, None, CompleteConfig(device="cpu"))
    token = CancelToken()

    def cancel_on_sample(ev):
        if ev.stage == "sample":
            token.cancel()

    with pytest.raises(Cancelled):
        complete(posed, tmp_path / "c.glb", cfg, generator=orc, progress=cancel_on_sample, cancel=token)
    assert not (tmp_path / "c.glb").exists()


def test_tiny_zero123pp_completion_to_textured_glb(tiny_model, scene, tmp_path):
    """The real generator path (latents, encode/decode of the RVC correction) with 2 photos."""
    import trimesh

    from viewforge.engine.complete import CompleteConfig, complete

    _, _, _, posed = scene
    out = tmp_path / "tiny.glb"
    res = complete(posed, out, CompleteConfig(model=str(tiny_model), **FAST))
    assert res.metrics["generator"] == "zero123pp-v1.2" and res.metrics["generator_evals"] == 8
    assert len(res.rig.cameras) == 6 and res.rig.cameras[0].width == 16
    assert len(res.metrics["rvc"]) == 2 and all(all(r["kept"]) for r in res.metrics["rvc"])
    # the photos are hard constraints: the model matches them whatever the random generator draws
    assert res.metrics["psnr_inputs"] > 18, res.metrics
    geom = next(iter(trimesh.load(out).geometry.values()))
    assert geom.visual.material.baseColorTexture.size == (128, 128)


def test_refined_cameras_re_place_the_rig(scene):
    """With refine_cameras and the model-based fallback, the refined cameras are used and the rig is
    re-placed from the refined reference camera (here a stand-in refinement that returns the true
    cameras)."""
    import viewforge.engine.complete as C
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.mvgen.oracle import PerturbedOracle
    from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors

    m, rig, ref, posed = scene
    bad = PosedSet(perturb_cameras(posed.cameras, 3.0, 0.0, seed=0), posed.images, posed.masks, posed.names)
    stand_in = C.PoseRefiners(before=lambda posed, photos, progress, cancel: (photos, None),
                              against_model=lambda photos, splats, device, progress, cancel: (list(posed.cameras),
                                                                                              "refined"))
    orc = PerturbedOracle.for_photos(m, posed, rig, ref)
    res = C.complete(bad, None, C.CompleteConfig(refine_cameras=True, refine_fallback=True, make_mesh=False, **FAST),
                     generator=orc, refiners=stand_in)
    assert rotation_errors(res.cameras, posed.cameras)[0] < 1e-6 < rotation_errors(bad.cameras, posed.cameras)[0]
    assert np.allclose(res.rig.reference.center, posed.cameras[res.reference].center, atol=1e-9)
    true_rig = C.layout(C.prepare_photos(posed, 256), rig, ref).placement.cameras
    assert all(np.allclose(a.world_to_camera, b.world_to_camera, atol=1e-9) for a, b in zip(res.rig.cameras, true_rig))
    assert res.metrics["cameras_refined"] == "refined" and res.metrics["rvc"][-1]["after_refinement"]
    assert res.metrics["warnings"] == [C.TWO_PHOTOS_WARNING] and "third photo" in C.TWO_PHOTOS_WARNING
    # closer to the truth around the object than the same run left at the perturbed cameras
    from viewforge.engine.metrics import psnr
    from viewforge.engine.mvgen.oracle import render_rgba
    from viewforge.engine.sampling.aware import render_views

    stay = C.complete(bad, None, C.CompleteConfig(make_mesh=False, **FAST), generator=orc)
    assert stay.metrics["warnings"] == []  # the cameras were not refined: nothing to warn about
    around = [orbit_camera(a, 15, 4.5, 30, SIZE) for a in range(0, 360, 45)]
    truth = [render_rgba(m, c) for c in around]

    def score(splats):
        w = [x[..., :3] * x[..., 3:4] + 1 - x[..., 3:4] for x in render_views(splats, around)]
        return np.mean([psnr(a, t[..., :3] * t[..., 3:4] + 1 - t[..., 3:4]) for a, t in zip(w, truth)])

    print("held-out refined", score(res.splats), "perturbed", score(stay.splats))
    assert score(res.splats) > score(stay.splats) + 1.0


def test_the_jobs_device_reaches_the_refinement_against_the_model(scene, monkeypatch):
    """CompleteConfig.device is handed to the model-based pose refinement (its SparseRefineConfig),
    not left at that config's default ("auto")."""
    import viewforge.engine.complete as C
    import viewforge.engine.poses.sparse as sparse
    from viewforge.engine.mvgen.oracle import PerturbedOracle

    m, rig, ref, posed = scene
    seen = []

    def stand_in(photos, splats, config, **kw):
        seen.append(config)
        return sparse.SparseRefineResult(list(photos.cameras), [])

    monkeypatch.setattr(sparse, "refine_cameras_to_model", stand_in)
    orc = PerturbedOracle.for_photos(m, posed, rig, ref)
    fast = dict(FAST, fit_iterations=20, warm_iterations=10, steps=1, rvc=False, final_fit=False)
    C.complete(posed, None, C.CompleteConfig(refine_cameras=True, refine_fallback=True, make_mesh=False, **fast),
               generator=orc, refiners=C.PoseRefiners(before=lambda posed, photos, progress, cancel: (photos, None)))
    assert [c.device for c in seen] == ["cpu"]


def test_refinement_keeps_the_poses_when_the_photos_do_not_match(scene):
    """The real refinement on photos that share no features (flat colour): no pose changes before
    sampling (None: nothing refined) nor after it without the fallback, which needs no model."""
    import viewforge.engine.complete as C
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.poses.evaluate import perturb_cameras

    _, _, _, posed = scene
    bad = perturb_cameras(posed.cameras, 3.0, 0.0, seed=0)
    flat = PosedSet(bad, [np.full_like(i, 0.7) for i in posed.images], posed.masks, posed.names)
    photos = C.prepare_photos(flat, 256)
    same, note = C.refine_photos_first(flat, photos, None, None)
    assert same is photos and note is None
    # ... and without the fallback nothing runs after sampling: the input poses are kept
    assert C.after_sampling_step(C.CompleteConfig(refine_cameras=True, refine_silhouettes=False), note, [1]) == "kept"
    assert C.KEPT_NOTE.startswith("input poses kept")


def test_photos_refined_against_each_other_before_sampling():
    """With photos that match (the textured spheres of tests/helpers.py, 3 photos from one
    side, 3 degree errors) the first stage refines them at the working size; the model-based
    fallback is not called."""
    import viewforge.engine.complete as C
    from viewforge.engine.io.types import PosedSet
    from viewforge.engine.poses.evaluate import perturb_cameras, rotation_errors

    from helpers import front_cameras, render_spheres

    true = front_cameras(size=256)
    shots = [render_spheres(c) for c in true]
    bad = PosedSet(perturb_cameras(true, 3.0, 0.0, seed=1), [s[0] for s in shots], [s[1] for s in shots],
                   [c.name for c in true])
    photos = C.prepare_photos(bad, 128)  # working size below REFINE_SIZE: the stage matches at 256
    refined, note = C.refine_photos_first(bad, photos, None, None)
    assert note == "refined against each other"
    assert [c.width for c in refined.cameras] == [128] * 3 and refined.images is photos.images
    assert rotation_errors(refined.cameras, true)[1] < 0.3 < rotation_errors(bad.cameras, true)[1]


def test_without_rvc_the_model_gets_the_final_fit_of_rvc(scene):
    """RVC's model ends with one more warm fit after its last correction; without RVC the same
    fit budget goes to the plain fit (CompleteConfig.final_fit), so the two compare fairly."""
    from viewforge.engine.complete import CompleteConfig, complete
    from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle

    m, rig, ref, posed = scene
    orc = PerturbedOracle.for_photos(m, posed, rig, ref, OracleConfig(seed=2))
    base = dict(FAST, rvc=False, make_mesh=False)
    short = complete(posed, None, CompleteConfig(final_fit=False, **base), generator=orc)
    full = complete(posed, None, CompleteConfig(**base), generator=orc)
    print(f"psnr_inputs {short.metrics['psnr_inputs']:.2f} -> {full.metrics['psnr_inputs']:.2f}")
    assert "final_fit" in full.metrics["seconds"] and "final_fit" not in short.metrics["seconds"]
    # the same samples (up to the fits' float noise, which the aware sampler feeds back), fitted longer
    assert float(np.abs(np.stack(full.views) - np.stack(short.views)).mean()) < 0.01
    assert full.metrics["psnr_inputs"] > short.metrics["psnr_inputs"] + 0.1
