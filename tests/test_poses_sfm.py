"""Structure from motion (engine/poses/sfm.py) on a synthetic capture: the demo object with a
noise texture rendered by our mesh rasterizer from 16 cameras at 256 px; bad inputs; the
view-graph filter; the posed-set writer."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pycolmap")

from viewforge.engine.cameras import Camera, look_at
from viewforge.engine.demo import DemoConfig, demo_mesh, noise_texture
from viewforge.engine.errors import InputError
from viewforge.engine.images import save_png
from viewforge.engine.io.posed import load_posed_set
from viewforge.engine.mesh.raster import render_textured
from viewforge.engine.poses.evaluate import rotation_errors
from viewforge.engine.poses.sfm import SfmConfig, estimate_poses, filter_view_graph, write_sfm_result

SIZE = 256
N_VIEWS = 16


def _object(seed: int = 0):
    return replace(demo_mesh(DemoConfig(segments=64, rings=40, texture_size=64)), texture=noise_texture(seed=seed))


def _rig(n: int = N_VIEWS, size: int = SIZE, radius: float = 3.4, fov_deg: float = 40.0) -> list[Camera]:
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    cams = []
    for k in range(n):
        az = 2 * math.pi * k / n
        el = math.radians((15.0, 35.0)[k % 2])
        eye = np.array([radius * math.cos(el) * math.cos(az), radius * math.cos(el) * math.sin(az),
                        1.0 + radius * math.sin(el)])
        cams.append(Camera(f, f, size / 2, size / 2, size, size, look_at(eye, (0, 0, 1.0)), name=f"v{k:02d}"))
    return cams


def _write_photos(mesh, cams, folder, prefix="") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for cam in cams:
        rgb, alpha = render_textured(mesh, cam, supersample=2)
        paths.append(save_png(folder / f"{prefix}{cam.name}.png", rgb, alpha))
    return paths


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sfm_capture")
    cams = _rig()
    return cams, _write_photos(_object(), cams, folder)


@pytest.fixture(scope="module")
def result(capture):
    cams, paths = capture
    events = []
    res = estimate_poses(paths, SfmConfig(num_threads=2), progress=events.append)
    res.events = events
    return res


def test_sfm_recovers_the_synthetic_rig(capture, result):
    cams, _ = capture
    assert result.registered == [c.name for c in cams]
    assert result.unregistered == {} and result.duplicates == {}
    by_name = {c.name: c for c in cams}
    ref = [by_name[n] for n in result.registered]
    _, aligned = rotation_errors(result.cameras, ref)
    assert aligned < 1.5, aligned  # measured 0.75 degrees
    # focal length (shared camera) within 3 %
    assert abs(result.cameras[0].fx / cams[0].fx - 1) < 0.03
    # camera centres agree after a similarity (shape of the rig)
    a = np.stack([c.center for c in result.cameras])
    b = np.stack([c.center for c in ref])
    a0, b0 = a - a.mean(0), b - b.mean(0)
    s = np.linalg.norm(b0) / np.linalg.norm(a0)
    u, _, vt = np.linalg.svd(b0.T @ a0)
    r = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    err = np.linalg.norm(s * a0 @ r.T - b0, axis=1) / np.linalg.norm(b0, axis=1).mean()
    assert np.median(err) < 0.04, err  # measured 0.021
    # reliability per view
    assert len(result.views) == N_VIEWS
    for v in result.views:
        assert v.observations >= 20 and v.rms_px < 1.5 and 0.0 <= v.score <= 1.0
    assert result.posed.masks is not None and len(result.posed) == N_VIEWS
    assert result.posed.cameras[0].distortion is None  # undistorted, pinhole
    assert set(result.seconds) >= {"features", "matching", "mapping", "total"}
    fractions = [e.fraction for e in result.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and {e.stage for e in result.events} == {"sfm"}


def test_sfm_world_frame_is_artist_friendly(result):
    """+Z = the cameras' average up, origin at the points' median, ~2 units across, first camera at -Y."""
    ups = np.stack([-c.R[1] for c in result.cameras]).mean(0)
    assert ups[2] / np.linalg.norm(ups) > 0.999
    pts = result.points
    assert len(pts) > 200
    med = np.median(pts, axis=0)
    assert abs(med[2]) < 1e-6 and np.abs(med[:2]).max() < 0.05
    extent = np.percentile(pts, 98, axis=0) - np.percentile(pts, 2, axis=0)
    assert extent.max() == pytest.approx(2.0, rel=1e-6)
    c0 = result.cameras[0].center
    assert abs(c0[0]) < 1e-6 and c0[1] < 0
    # true rig: object ~2 units tall seen from 3.4 units; the normalised distance is comparable
    assert 2.5 < np.linalg.norm(c0[:2]) < 6.0


def test_sfm_result_writes_a_posed_set(result, tmp_path):
    out = write_sfm_result(result, tmp_path / "posed")
    back = load_posed_set(out)
    assert len(back) == len(result.posed)
    for a, b in zip(back.cameras, result.cameras):
        assert np.allclose(a.world_to_camera, b.world_to_camera, atol=1e-6)
        assert a.fx == pytest.approx(b.fx)


def test_sfm_bad_inputs_warn_and_are_named(capture, tmp_path, caplog):
    """A duplicate, an unregistrable photo (noise) and photos of another object in one run: the
    rest register, each bad photo is named in the result and in a warning."""
    cams, paths = capture
    extra = tmp_path / "extra"
    extra.mkdir()
    dup = extra / "copy_of_v03.png"
    shutil.copy(paths[3], dup)
    rng = np.random.default_rng(5)
    noise = save_png(extra / "noise.png", rng.random((SIZE, SIZE, 3)).astype(np.float32))
    other = _write_photos(_object(seed=7), _rig(6)[:3], extra, prefix="other_")
    with caplog.at_level(logging.WARNING, logger="viewforge.engine.poses.sfm"):
        res = estimate_poses([*paths, dup, noise, *other], SfmConfig(num_threads=2))
    assert res.duplicates == {"copy_of_v03": "v03"}
    assert len(res.registered) == N_VIEWS
    assert set(res.unregistered) == {"noise", "other_v00", "other_v01", "other_v02"}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "copy_of_v03" in text and "noise" in text and "other_v01" in text
    assert res.warnings and all("\n" not in w for w in res.warnings)


def test_sfm_one_photo_or_identical_photos_is_an_error(capture, tmp_path):
    _, paths = capture
    with pytest.raises(InputError, match="at least 2 overlapping photos") as e:
        estimate_poses(paths[:1])
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)
    copy = tmp_path / "same.png"
    shutil.copy(paths[0], copy)
    with pytest.raises(InputError, match="at least 2 distinct"):
        estimate_poses([paths[0], copy])


def test_sfm_photos_without_alpha(capture, tmp_path):
    """Plain RGB photos (no alpha, no masks): still registered, no masks in the posed set."""
    from viewforge.engine.images import load_image

    cams, paths = capture
    plain = []
    for p in paths[::2] + paths[1::2]:
        rgb, alpha = load_image(p)
        plain.append(save_png(tmp_path / p.name, rgb * alpha[..., None] + (1 - alpha[..., None])))
    res = estimate_poses(plain, SfmConfig(num_threads=2))
    assert len(res.registered) >= N_VIEWS - 1 and res.posed.masks is None
    by_name = {c.name: c for c in cams}
    assert rotation_errors(res.cameras, [by_name[n] for n in res.registered])[1] < 2.0
    assert res.registered[0] == "v00"  # input order, which sets the heading: v00 on -Y
    assert abs(res.cameras[0].center[0]) < 1e-6


def test_sfm_cancel_and_progress(capture):
    from viewforge.engine.errors import Cancelled
    from viewforge.engine.progress import CancelToken

    _, paths = capture
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        estimate_poses(paths, cancel=token)


def test_sfm_nothing_registers_is_an_error(tmp_path):
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(0)
    paths = [save_png(tmp_path / f"n{i}.png", rng.random((128, 128, 3)).astype(np.float32)) for i in range(3)]
    before = set(Path(tempfile.gettempdir()).glob("viewforge_sfm_*"))
    with pytest.raises(InputError, match="structure from motion") as e:
        estimate_poses(paths, SfmConfig(num_threads=2))
    assert "Fix:" in str(e.value)
    assert set(Path(tempfile.gettempdir()).glob("viewforge_sfm_*")) <= before  # work folder removed


def test_view_graph_filter_drops_contradicting_pairs():
    rng = np.random.default_rng(0)

    def rot(axis, deg):
        axis = np.asarray(axis, float) / np.linalg.norm(axis)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        t = math.radians(deg)
        return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k

    absolute = [rot(rng.normal(size=3), rng.uniform(0, 180)) for _ in range(8)]
    edges, truth = [], []
    for i in range(8):
        for j in range(i + 1, 8):
            r = absolute[j] @ absolute[i].T @ rot(rng.normal(size=3), 2.0)  # 2 degrees of noise
            bad = (i, j) in {(0, 4), (2, 6), (1, 3)}
            if bad:  # a symmetric "ghost": off by 180 degrees about a random axis
                r = r @ rot(rng.normal(size=3), 180.0)
            edges.append((i, j, r, 300 if bad else 40))  # the wrong pairs even have more inliers
            truth.append(not bad)
    keep = filter_view_graph(8, edges, max_residual_deg=20.0, trials=100)
    assert keep.tolist() == truth
