"""The multi-view generator interface, the PerturbedOracle testbed and the samplers (CPU, small)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from viewforge.engine.errors import Cancelled, InputError
from viewforge.engine.mvgen.base import NoiseSchedule, orbit_camera
from viewforge.engine.progress import CancelToken

SIZE = 48


@pytest.fixture(scope="module")
def scene():
    """The demo object, normalised like a benchmark mesh, a 6-view rig and a reference camera."""
    from viewforge.engine.demo import DemoConfig, demo_mesh
    from viewforge.engine.io.types import Mesh
    from viewforge.engine.mesh.evaluate import normalisation

    m = demo_mesh(DemoConfig(segments=32, rings=20, texture_size=256))
    s, off = normalisation(m)
    m = Mesh(m.vertices * s + off, m.faces, m.normals, m.uvs, m.colors, m.texture)
    rig = [orbit_camera(30 + 60 * i, 20 if i % 2 == 0 else -10, 4.5, 30, SIZE) for i in range(6)]
    ref = orbit_camera(0, 0, 4.5, 30, SIZE)
    return m, rig, ref


def _oracle(scene, **kw):
    from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle

    m, rig, ref = scene
    return PerturbedOracle.from_mesh(m, rig, ref, OracleConfig(**kw))


def _white(v):
    return v[..., :3] * v[..., 3:4] + (1 - v[..., 3:4])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_schedule_round_trip(prediction):
    import torch

    s = replace(NoiseSchedule.scaled_linear(), prediction=prediction)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = 600
    xt = s.add_noise(x0, eps, t)
    a, sig = s.alpha_sigma(t)
    out = {"epsilon": eps, "v_prediction": a * eps - sig * x0, "sample": x0}[prediction]
    assert torch.allclose(s.to_x0(out, xt, t), x0, atol=1e-4)
    assert torch.allclose(s.to_eps(x0, xt, t), eps, atol=1e-4)
    assert s.timesteps(4) == [999, 749, 499, 249]
    assert s.alpha_sigma(999)[1] > 0.99 and s.alpha_sigma(0)[0] > 0.999
    with pytest.raises(InputError):
        s.timesteps(0)


def test_orbit_camera_convention():
    cam = orbit_camera(0, 0, 3, 30, 64)
    c2w = np.linalg.inv(cam.world_to_camera)
    assert np.allclose(c2w[:3, 3], [0, -3, 0])  # azimuth 0: Blender's front view, on -Y
    xy, z = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))
    assert np.allclose(xy[0], [32, 32]) and xy[1, 1] < 32  # +Z is up in the image
    right = orbit_camera(90, 0, 3, 30, 64)
    assert np.allclose(np.linalg.inv(right.world_to_camera)[:3, 3], [3, 0, 0], atol=1e-9)
    assert abs(cam.fx - 32 / np.tan(np.radians(15))) < 1e-9


def test_oracle_follows_its_input_at_low_noise(scene):
    import torch

    from viewforge.engine.metrics import psnr

    orc = _oracle(scene)
    truth = orc.encode(orc.truth)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(truth.shape, generator=g)
    scores = {}
    for t in (999, 499, 100):
        x0 = orc.denoise(orc.schedule.add_noise(truth, eps, t), t, None)
        views = orc.decode(x0)
        assert len(views) == 6 and views[0].shape == (SIZE, SIZE, 4)
        scores[t] = np.mean([psnr(_white(a), _white(b)) for a, b in zip(views, orc.truth)])
    assert orc.evaluations == 3
    # pure noise: only the distorted belief; low noise: it follows the (true) input
    assert scores[999] < scores[499] < scores[100]
    assert scores[100] > 28 and scores[999] < 25
    # with no distortions the belief is the truth
    clean = _oracle(scene, warp_px=0, color_shift=0, blur_sigma=0)
    x0 = clean.decode(clean.denoise(torch.randn(truth.shape, generator=g), 999, None))
    assert np.mean([psnr(_white(a), _white(b)) for a, b in zip(x0, clean.truth)]) > 35


def test_cross_view_consistency_separates_truth_from_distorted_views(scene):
    from viewforge.engine.mvgen.oracle import OracleConfig, distort
    from viewforge.engine.sampling.evaluate import cross_view_consistency

    m, rig, _ = scene
    orc = _oracle(scene)
    rng = np.random.default_rng(0)
    bad = [distort(v, 1.0, OracleConfig(), rng, SIZE / 256) for v in orc.truth]
    good = cross_view_consistency(orc.truth, rig, m)
    worse = cross_view_consistency(bad, rig, m)
    assert good > worse + 4, (good, worse)


def test_view_weights_repeat_views():
    from viewforge.engine.splat.fit import _view_schedule

    assert list(_view_schedule(3, None)) == [0, 1, 2]
    assert list(_view_schedule(3, [1, 1, 4])) == [0, 1, 2, 2, 2, 2]
    with pytest.raises(InputError):
        _view_schedule(3, [1, 0, 1])
    with pytest.raises(InputError):
        _view_schedule(3, [1, 1])


def _small(method, **kw):
    from viewforge.engine.sampling.aware import SAMPLER_FIT, SamplerConfig

    fit = replace(SAMPLER_FIT, init_points=1500, refine_start=40, refine_every=20, sh_degree=0, device="cpu")
    return SamplerConfig(method=method, fit_iterations=80, warm_iterations=30, fit=fit, **kw)


@pytest.mark.parametrize("method,evals", [("oneshot", 4), ("aware", 4), ("im3d", 4 + 2 * 2)])
def test_samplers_count_evaluations_and_reconstruct(scene, method, evals):
    from viewforge.engine.metrics import psnr
    from viewforge.engine.sampling.aware import render_views, sample

    orc = _oracle(scene, seed=3)
    events = []
    res = sample(orc, orc.condition_image(), _small(method), progress=events.append)
    assert res.evaluations == evals
    assert res.steps[: 4] == [999, 749, 499, 249]
    assert len(res.views) == 6 and res.views[0].shape == (SIZE, SIZE, 4)
    assert res.splats.num > 100
    fr = [e.fraction for e in events if e.stage == "sample"]
    assert fr == sorted(fr) and fr[-1] == 1.0
    # the reconstruction looks like the object from the reference camera (where the input is)
    ref_render = render_views(res.splats, [res.reference_camera])[0]
    truth_ref = orc.condition_image().rgba
    assert psnr(_white(ref_render), _white(truth_ref)) > 17


def test_sampler_bad_settings_and_cancel(scene):
    from viewforge.engine.sampling.aware import sample

    orc = _oracle(scene)
    with pytest.raises(InputError, match="sampling method"):
        sample(orc, orc.condition_image(), _small("nope"))
    with pytest.raises(InputError, match="steps"):
        sample(orc, orc.condition_image(), _small("aware", steps=0))
    token = CancelToken()

    def cancel_after_first_denoise(ev):
        if ev.stage == "sample" and ev.message.startswith("denoise"):
            token.cancel()

    with pytest.raises(Cancelled):
        sample(orc, orc.condition_image(), _small("aware"), progress=cancel_after_first_denoise, cancel=token)
    assert orc.evaluations == 1
