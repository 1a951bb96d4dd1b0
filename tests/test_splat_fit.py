"""Fitting Gaussians to a small synthetic posed set: quality, pose refinement, .ply, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viewforge.engine.cameras import Camera, look_at, rotation_angle_deg
from viewforge.engine.errors import Cancelled, NumericalError, PosedSetError
from viewforge.engine.io.types import PosedSet
from viewforge.engine.metrics import composite_on_white, psnr
from viewforge.engine.progress import CancelToken
from viewforge.engine.splat.fit import FitConfig, fit_splats, render_splats, se3_exp
from viewforge.engine.splat.model import Splats, read_splat_ply, visual_hull_points, write_splat_ply

SIZE = 40


def _ground_truth_splats(n=400, seed=0) -> Splats:
    """A colourful blob: Gaussians on a bumpy ellipsoid, colour varying with position."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    r = 0.6 + 0.15 * torch.sin(3 * d[:, 0]) * torch.cos(2 * d[:, 2])
    means = d * r[:, None] * torch.tensor([1.0, 0.8, 0.7])
    rgb = 0.5 + 0.45 * torch.stack([d[:, 0], torch.sin(2.5 * d[:, 1]), d[:, 2] * d[:, 0] * 2], -1)
    k = 16
    shN = torch.zeros(n, k - 1, 3)
    return Splats(
        means=means,
        scales=torch.full((n, 3), math.log(0.09)),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        opacities=torch.full((n,), 3.0),
        sh0=((rgb - 0.5) / 0.28209479177387814)[:, None, :],
        shN=shN,
    )


def _rig(n, radius=3.0, elev_deg=(25.0, -10.0), offset=0.0):
    cams = []
    f = SIZE * 1.3
    for i in range(n):
        az = 2 * math.pi * i / n + offset
        el = math.radians(elev_deg[i % 2])
        eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        cams.append(Camera(f, f, SIZE / 2, SIZE / 2, SIZE, SIZE, look_at(eye, (0, 0, 0)), name=f"v{i:02d}"))
    return cams


def _posed(splats: Splats, cams: list[Camera]) -> PosedSet:
    outs = render_splats(splats, cams, background=(0.0, 0.0, 0.0), device="cpu")
    imgs = [np.clip(o["rgb"] / np.maximum(o["alpha"][..., None], 1e-6), 0, 1) * (o["alpha"][..., None] > 1e-6) for o in outs]
    return PosedSet(cams, [i.astype(np.float32) for i in imgs], [o["alpha"].astype(np.float32) for o in outs])


@pytest.fixture(scope="module")
def scene():
    gt = _ground_truth_splats()
    train = _posed(gt, _rig(12))
    test = _posed(gt, _rig(4, offset=0.4))
    return gt, train, test


def _heldout_psnr(splats, test: PosedSet) -> float:
    outs = render_splats(splats, test.cameras, device="cpu")
    return float(np.mean([psnr(o["rgb"], composite_on_white(i, m)) for o, i, m in zip(outs, test.images, test.masks)]))


def test_fit_reaches_good_heldout_psnr(scene):
    _, train, test = scene
    events = []
    result = fit_splats(
        train, FitConfig(iterations=400, init_points=3000, sh_degree=1, sh_interval=200, refine_start=100,
                         refine_every=50, device="cpu"),
        progress=events.append,
    )
    assert result.iterations == 400
    assert events[-1].fraction == 1.0 and events[-1].stage == "fit"
    first, last = result.history[0][1], result.history[-1][1]
    assert last < 0.5 * first
    value = _heldout_psnr(result.splats, test)
    assert value > 24.0, value
    assert result.splats.num != 3000  # the strategy densified or pruned
    assert result.splats.sh_degree == 1


def test_pose_refinement_recovers_perturbed_cameras(scene):
    gt, train, _ = scene
    rng = np.random.default_rng(1)
    perturbed = []
    for cam in train.cameras:
        axis = rng.normal(size=3)
        delta = np.zeros(6)
        delta[:3] = axis / np.linalg.norm(axis) * math.radians(3.0)
        direction = rng.normal(size=3)
        delta[3:] = direction / np.linalg.norm(direction) * 0.03 * np.linalg.norm(cam.center)
        m = se3_exp(torch.tensor(delta[None], dtype=torch.float64))[0].numpy() @ cam.world_to_camera
        perturbed.append(cam.with_pose(m))
    before = np.median([rotation_angle_deg(a.R, b.R) for a, b in zip(perturbed, train.cameras)])
    assert 2.9 < before < 3.1
    noisy = PosedSet(perturbed, train.images, train.masks, train.names)
    result = fit_splats(
        noisy,
        FitConfig(iterations=600, init_points=3000, sh_degree=0, pose_refine=True, pose_lr=2e-3, pose_start=50,
                  densify=False, device="cpu"),
    )
    # the fit is defined up to a global similarity; compare relative rotations to camera 0
    def rel(cams, i):
        return cams[i].R @ cams[0].R.T

    errs = [rotation_angle_deg(rel(result.cameras, i), rel(train.cameras, i)) for i in range(1, len(train))]
    errs_before = [rotation_angle_deg(rel(perturbed, i), rel(train.cameras, i)) for i in range(1, len(train))]
    assert np.median(errs) < 0.5 * np.median(errs_before), (np.median(errs), np.median(errs_before))


def test_splat_ply_round_trip(tmp_path, scene):
    gt, _, _ = scene
    path = tmp_path / "splats.ply"
    write_splat_ply(gt, path)
    back = read_splat_ply(path)
    for k, v in gt.as_dict().items():
        torch.testing.assert_close(getattr(back, k), v)
    header = path.read_bytes()[:2000].decode("latin-1")
    for name in ("f_dc_0", "f_rest_44", "opacity", "scale_2", "rot_3", "binary_little_endian"):
        assert name in header


def test_cancel_stops_the_fit(scene):
    _, train, _ = scene
    token = CancelToken()

    def progress(event):
        if event.step >= 5:
            token.cancel()

    with pytest.raises(Cancelled):
        fit_splats(train, FitConfig(iterations=100, init_points=500, device="cpu"), progress=progress, cancel=token)


def test_empty_masks_is_a_clear_error(scene):
    _, train, _ = scene
    empty = PosedSet(train.cameras, train.images, [np.zeros_like(m) for m in train.masks])
    with pytest.raises(PosedSetError, match="mask is empty|every mask is empty"):
        fit_splats(empty, FitConfig(iterations=10, device="cpu"))


def test_cameras_that_see_nothing_in_common(scene):
    _, train, _ = scene
    # every other view's mask marks only a corner: no 3D point is inside all the silhouettes
    masks = []
    for i, m in enumerate(train.masks):
        if i % 2:
            m = np.zeros_like(m)
            m[:4, :4] = 1.0
        masks.append(m)
    with pytest.raises(PosedSetError, match="do not overlap"):
        visual_hull_points(PosedSet(train.cameras, train.images, masks), 100)
    visual_hull_points(train, 100)  # the consistent masks do overlap


def test_nan_loss_stops_with_numerical_error(scene, monkeypatch):
    _, train, _ = scene
    import viewforge.engine.splat.rasterize as rast

    real = rast.rasterize

    def broken(*args, **kwargs):
        render, alpha, meta = real(*args, **kwargs)
        return render * float("nan"), alpha, meta

    monkeypatch.setattr(rast, "rasterize", broken)
    with pytest.raises(NumericalError, match="diverged"):
        fit_splats(train, FitConfig(iterations=50, init_points=300, device="cpu"))
