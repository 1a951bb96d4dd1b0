"""Rendering-aware velocity compensation (engine/sampling/rvc.py) in the 3D-aware sampler: the
input-view loss falls with RVC, unreliable views (loss > 0.8) are dropped, the schedule window,
settings and errors (CPU, small)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from viewforge.engine.errors import Cancelled, InputError
from viewforge.engine.mvgen.base import orbit_camera
from viewforge.engine.progress import CancelToken

SIZE = 48


@pytest.fixture(scope="module")
def setup():
    """Demo object, generator rig (object frame = scene frame here), oracle, two photo anchors."""
    from viewforge.engine.demo import DemoConfig, demo_mesh
    from viewforge.engine.io.types import Mesh
    from viewforge.engine.mesh.evaluate import normalisation
    from viewforge.engine.mvgen.oracle import OracleConfig, PerturbedOracle, render_rgba
    from viewforge.engine.sampling.anchors import Anchor

    m = demo_mesh(DemoConfig(segments=32, rings=20, texture_size=256))
    s, off = normalisation(m)
    m = Mesh(m.vertices * s + off, m.faces, m.normals, m.uvs, m.colors, m.texture)
    rig = [orbit_camera(30 + 60 * i, 20 if i % 2 == 0 else -10, 4.5, 30, SIZE, f"rig{i}") for i in range(6)]
    ref = orbit_camera(0, 0, 4.5, 30, SIZE, "ref")
    orc = PerturbedOracle.from_mesh(m, rig, ref, OracleConfig(seed=1))
    cams = [orbit_camera(a, 10, 4.0, 35, 64, name=f"p{a}") for a in (-20, 25)]
    anchors = [Anchor(render_rgba(m, c), c, 4.0, c.name) for c in cams]
    return m, orc, anchors


@pytest.fixture(scope="module")
def base(setup):
    """The aware sampler's result without RVC (shared by the tests that apply RVC to it)."""
    from viewforge.engine.sampling.aware import sample

    m, orc, anchors = setup
    return sample(orc, orc.condition_image(), _cfg(), cameras=orc.cameras(), anchors=anchors)


def _cfg():
    from viewforge.engine.sampling.aware import SAMPLER_FIT, SamplerConfig

    fit = replace(SAMPLER_FIT, init_points=1500, refine_start=40, refine_every=20, sh_degree=0, device="cpu")
    return SamplerConfig(method="aware", fit_iterations=80, warm_iterations=30, fit=fit)


def _psnr_at(splats, anchors):
    from viewforge.engine.metrics import psnr
    from viewforge.engine.sampling.aware import render_views

    def white(x):
        return x[..., :3] * x[..., 3:4] + 1 - x[..., 3:4]

    r = render_views(splats, [a.camera for a in anchors])
    return float(np.mean([psnr(white(x), white(a.rgba)) for x, a in zip(r, anchors)]))


def test_rvc_lowers_the_input_view_loss(setup):
    from viewforge.engine.sampling.aware import sample
    from viewforge.engine.sampling.rvc import RVCConfig, anchor_losses

    m, orc, anchors = setup
    cond = orc.condition_image()
    base = sample(orc, cond, _cfg(), cameras=orc.cameras(), anchors=anchors)
    events = []
    with_rvc = sample(orc, cond, _cfg(), cameras=orc.cameras(), anchors=anchors, rvc=RVCConfig(steps=40),
                      progress=events.append)
    assert base.rvc == [] and [r["t"] for r in with_rvc.rvc] == [499, 249]  # t < 0.5 T only
    assert base.evaluations == with_rvc.evaluations == 4  # RVC costs no network evaluation
    l0 = anchor_losses(base.splats, anchors)
    l1 = anchor_losses(with_rvc.splats, anchors)
    assert all(b < a for a, b in zip(l0, l1)), (l0, l1)
    for rep in with_rvc.rvc:
        assert all(rep["kept"]) and all(b < a for a, b in zip(rep["losses_before"], rep["losses_after"]))
    gain = _psnr_at(with_rvc.splats, anchors) - _psnr_at(base.splats, anchors)
    assert gain > 1.0, gain
    fr = [e.fraction for e in events if e.stage == "sample"]
    assert fr == sorted(fr) and fr[-1] == 1.0


def test_unreliable_view_is_dropped(setup, base):
    from viewforge.engine.sampling.anchors import Anchor
    from viewforge.engine.sampling.rvc import RVCConfig, compensate

    m, orc, anchors = setup
    res = base
    rng = np.random.default_rng(0)
    noise = np.concatenate([rng.random((64, 64, 3)), np.ones((64, 64, 1))], 2).astype(np.float32)
    bad = Anchor(noise, anchors[1].camera, 4.0, "bad")  # another "object": loss > 0.8
    comp = compensate(res.splats, [anchors[0], bad], orc.cameras(), RVCConfig(steps=40), fit=_cfg().fit)
    assert comp.kept == [True, False]
    assert comp.losses_before[1] > 0.8 and comp.losses_before[0] < 0.8
    assert comp.losses_after[0] < comp.losses_before[0]
    # only bad views: nothing to follow, the model is returned unchanged
    alone = compensate(res.splats, [bad], orc.cameras(), RVCConfig(steps=40), fit=_cfg().fit)
    assert alone.kept == [False] and alone.splats is res.splats
    # strength 0 changes nothing either
    off = compensate(res.splats, anchors, orc.cameras(), RVCConfig(strength=0.0), fit=_cfg().fit)
    assert off.splats is res.splats and off.losses_after == off.losses_before


def test_rvc_settings_window_and_errors(setup):
    import torch

    from viewforge.engine.sampling.aware import sample
    from viewforge.engine.sampling.rvc import RVCConfig, view_loss

    cfg = RVCConfig()
    assert (cfg.strength, cfg.t_max, cfg.max_loss) == (0.1, 0.5, 0.8)
    assert cfg.active(499, 1000) and cfg.active(249, 1000) and not cfg.active(500, 1000)
    assert not cfg.active(749, 1000) and not RVCConfig(strength=0.0).active(10, 1000)
    x = torch.rand(32, 32, 3)
    assert float(view_loss(x, x)) < 1e-6
    assert float(view_loss(x, 1 - x)) > 0.8
    with pytest.raises(InputError):
        RVCConfig(strength=-1.0)
    with pytest.raises(InputError):
        RVCConfig(t_max=2.0)
    m, orc, anchors = setup
    with pytest.raises(InputError, match="RVC"):
        sample(orc, orc.condition_image(), replace(_cfg(), method="oneshot"), anchors=anchors, rvc=cfg)
    with pytest.raises(InputError, match="rig cameras"):
        sample(orc, orc.condition_image(), _cfg(), cameras=orc.cameras()[:3], anchors=anchors)
    token = CancelToken()

    def cancel_in_rvc(ev):
        if "rvc" in ev.message:
            token.cancel()

    with pytest.raises(Cancelled):
        sample(orc, orc.condition_image(), _cfg(), anchors=anchors, rvc=RVCConfig(steps=40),
               progress=cancel_in_rvc, cancel=token)


def test_holding_cameras_surround_the_object():
    from viewforge.engine.sampling.rvc import shell_cameras

    rig = [orbit_camera(30 + 60 * i, 20 if i % 2 == 0 else -10, 4.5, 30, SIZE, f"rig{i}") for i in range(6)]
    assert shell_cameras(rig, 0) == []
    hold = shell_cameras(rig, 16)
    assert len(hold) == 16 and len({c.name for c in hold}) == 16
    dirs = []
    for c in hold:
        assert np.linalg.norm(c.center) == pytest.approx(4.5, abs=1e-6)  # the rig's distance to its centre
        uv, z = c.project(np.zeros((1, 3)))  # the rig looks at the origin: so does every holding camera
        assert z[0] > 0 and np.allclose(uv[0], (SIZE / 2, SIZE / 2), atol=1e-6)
        assert (c.fx, c.width) == (rig[0].fx, rig[0].width)
        dirs.append(c.center / np.linalg.norm(c.center))
    dirs = np.array(dirs)
    # every direction on the sphere has a holding camera within 45 degrees (below and above too)
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(500, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    assert (probe @ dirs.T).max(axis=1).min() > np.cos(np.radians(45))
    assert dirs[:, 2].max() > 0.9 and dirs[:, 2].min() < -0.9
    with pytest.raises(InputError):
        shell_cameras(rig[:1], 4)


def test_rvc_holds_the_model_between_the_rig_views(setup, base):
    """The proximal term holds the model at cameras around the object, not only at the rig: the
    correction then changes the model less from directions no rig view sees (where it used to grow
    floaters, docs/completion.md) while it fits the photos as well."""
    from viewforge.engine.mvgen.base import orbit_camera as orbit
    from viewforge.engine.sampling.aware import render_views
    from viewforge.engine.sampling.rvc import RVCConfig, compensate

    m, orc, anchors = setup
    held = [orbit(15 + 45 * k, 0 if k % 2 == 0 else 30, 4.5, 30, 64, f"held{k}") for k in range(8)]

    def white(x):
        return x[..., :3] * x[..., 3:4] + 1 - x[..., 3:4]

    r0 = render_views(base.splats, held)
    change, gain = {}, {}
    for pv in (0, 16):
        c = compensate(base.splats, anchors, orc.cameras(), RVCConfig(steps=40, prox_views=pv), fit=_cfg().fit)
        change[pv] = np.mean([np.abs(white(a) - white(b)).mean() for a, b in zip(render_views(c.splats, held), r0)])
        gain[pv] = np.mean(c.losses_before) - np.mean(c.losses_after)
    assert RVCConfig().prox_views == 16
    assert change[16] < 0.85 * change[0], change
    assert gain[16] > 0.9 * gain[0] > 0, gain
    with pytest.raises(InputError):
        RVCConfig(prox_batch=0)


def test_detail_hold_keeps_the_fine_band_at_the_holding_views(setup, base):
    """detail_weight holds the high band (the render minus its 1.5 px blur) of the holding views
    more strongly than the low band: the correction changes fine detail there less, for the same
    kind of fit to the photos (docs/completion.md "RVC as implemented")."""
    import torch

    from viewforge.engine.sampling.rvc import RVCConfig, _gaussian_blur, compensate, shell_cameras
    from viewforge.engine.sampling.aware import render_views

    m, orc, anchors = setup
    hold = shell_cameras(orc.cameras(), 16)
    blur = _gaussian_blur(1.5)

    def white(x):
        return torch.from_numpy(np.ascontiguousarray(x[..., :3] * x[..., 3:4] + 1 - x[..., 3:4]))

    r0 = [white(x) for x in render_views(base.splats, hold)]
    high, low, gain = {}, {}, {}
    for w in (0.0, 100.0):
        c = compensate(base.splats, anchors, orc.cameras(), RVCConfig(steps=40, detail_weight=w), fit=_cfg().fit)
        d = [white(x) - y for x, y in zip(render_views(c.splats, hold), r0)]
        high[w] = float(np.mean([((x - blur(x)) ** 2).mean().item() for x in d]))
        low[w] = float(np.mean([(blur(x) ** 2).mean().item() for x in d]))
        gain[w] = np.mean(c.losses_before) - np.mean(c.losses_after)
    assert RVCConfig().detail_weight == 20.0 and RVCConfig().detail_sigma == 1.5
    assert high[100.0] < 0.3 * high[0.0], high  # measured 0.09
    assert high[100.0] / low[100.0] < 0.7 * high[0.0] / low[0.0], (high, low)  # the fine band is held more
    assert gain[100.0] > 0.3 * gain[0.0] > 0, gain  # the photos are still fitted (measured 0.64)
    with pytest.raises(InputError):
        RVCConfig(detail_sigma=0.0)
    with pytest.raises(InputError):
        RVCConfig(detail_weight=-1.0)


def test_final_fit_after_the_last_correction(setup):
    """When the last step applies RVC, the final model is a warm fit of that step's views and the
    photos from R*: one more fit, no network evaluation; final_fit=False returns R* itself."""
    from viewforge.engine.sampling.aware import sample
    from viewforge.engine.sampling.rvc import RVCConfig

    m, orc, anchors = setup
    runs = {}
    for ff in (True, False):
        events = []
        res = sample(orc, orc.condition_image(), _cfg(), cameras=orc.cameras(), anchors=anchors,
                     rvc=RVCConfig(steps=20, final_fit=ff), progress=events.append)
        runs[ff] = (res, [e.message for e in events])
        assert res.evaluations == 4 and [r["t"] for r in res.rvc] == [499, 249]
    assert any("final fit" in msg for msg in runs[True][1])
    assert not any("final fit" in msg for msg in runs[False][1])
    a, b = runs[True][0].splats.as_dict(), runs[False][0].splats.as_dict()
    assert not np.allclose(a["means"].numpy(), b["means"].numpy())  # the fit moved R*
    assert RVCConfig().final_fit
