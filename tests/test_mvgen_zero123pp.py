"""Zero123++ v1.2 backend: a tiny random model of the same architecture, saved and loaded through
the real loading code (no weights are downloaded)."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from viewforge.engine.errors import Cancelled, DependencyError, InputError  # noqa: E402
from viewforge.engine.mvgen import base, zero123pp  # noqa: E402
from viewforge.engine.progress import CancelToken  # noqa: E402

torch.set_num_threads(2)
VIEW = 16  # tiny views; the real model's are 320


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return zero123pp.save_tiny(tmp_path_factory.mktemp("z123") / "tiny", seed=0, view_size=VIEW)


@pytest.fixture(scope="module")
def gen(tiny_dir):
    return base.load_generator(str(tiny_dir), device="cpu")


def _image(color=(1.0, 0.0, 0.0), size=24) -> base.ConditionImage:
    rgba = np.zeros((size, size, 4), np.float32)
    rgba[6:18, 8:16, :3] = color
    rgba[6:18, 8:16, 3] = 1.0
    return base.ConditionImage(rgba, source="test")


@pytest.fixture(scope="module")
def cond(gen):
    return gen.condition(_image())


def test_registry_entry_states_licence_pin_and_size():
    entry = base.builtins()["zero123pp-v1.2"]
    info = entry.info
    assert entry.loader == ".zero123pp:load"
    assert "CC-BY-NC" in info.licence and info.repo_id == "sudo-ai/zero123plus-v1.2"
    assert len(info.revision) == 40 and int(info.revision, 16) >= 0
    assert 3000 < info.download_mb < 9000
    assert (info.num_views, info.view_size, info.rig) == (6, 320, "fixed")
    assert info.background == (0.5, 0.5, 0.5)
    patterns = zero123pp.SPEC.files()
    assert all(p.endswith((".json", ".txt", ".safetensors")) for p in patterns)
    assert not any(p.endswith((".bin", ".py", ".ckpt")) for p in patterns)


def test_tiny_loads_through_registry_with_shapes(gen, cond):
    assert isinstance(gen, zero123pp.Zero123PlusGenerator)
    assert gen.info.id == "zero123pp-v1.2" and gen.info.view_size == VIEW
    assert gen.schedule.prediction == "v_prediction"
    x = gen.initial_noise(3)
    assert tuple(x.shape) == (1, 4, 3 * VIEW // 2, 2 * VIEW // 2)  # (1, 4, 120, 80) at 320 px / f 8
    assert torch.equal(x, gen.initial_noise(3)) and not torch.equal(x, gen.initial_noise(4))
    assert cond.text.shape == (2, 77, 32) and cond.latent.shape[:2] == (2, 4)
    x0 = gen.denoise(x, 999, cond)
    assert x0.shape == x.shape and torch.isfinite(x0).all()
    views = gen.decode(x0)
    assert len(views) == 6
    for v in views:
        assert v.shape == (VIEW, VIEW, 4) and v.dtype == np.float32
        assert v.min() >= 0.0 and v.max() <= 1.0
    assert tuple(gen.encode(views).shape) == tuple(x.shape)


def test_schedule_is_the_configs_linear_betas():
    cfg = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "num_train_timesteps": 1000,
           "prediction_type": "v_prediction"}
    s = zero123pp._schedule_from_config(cfg)
    betas = np.linspace(0.00085, 0.012, 1000)
    assert np.allclose(s.alphas_cumprod, np.cumprod(1 - betas))
    assert s.alphas_cumprod[-1] == pytest.approx(0.00158, rel=0.01)
    sl = zero123pp._schedule_from_config({**cfg, "beta_schedule": "scaled_linear"})
    assert np.allclose(sl.alphas_cumprod, base.NoiseSchedule.scaled_linear().alphas_cumprod)
    with pytest.raises(InputError):
        zero123pp._schedule_from_config({**cfg, "beta_schedule": "squaredcos_cap_v2"})


def test_grid_tiling_is_row_major_three_by_two_and_exact():
    rng = np.random.default_rng(0)
    views = [rng.random((5, 5, 3)).astype(np.float32) for _ in range(6)]
    grid = zero123pp.tile_views(views)
    assert grid.shape == (15, 10, 3)
    assert np.array_equal(grid[0:5, 5:10], views[1])  # top right: view 1 (azimuth 90)
    assert np.array_equal(grid[5:10, 0:5], views[2])  # middle left: view 2 (azimuth 150)
    assert np.array_equal(grid[10:15, 5:10], views[5])
    back = zero123pp.untile_grid(grid)
    assert all(np.array_equal(a, b) for a, b in zip(back, views))
    with pytest.raises(InputError):
        zero123pp.tile_views(views[:5])


def test_scalings_match_the_public_pipeline_and_invert():
    assert zero123pp.scale_latents(0.22) == pytest.approx(0.0)
    assert zero123pp.scale_latents(1.22) == pytest.approx(0.75)
    assert zero123pp.unscale_latents(zero123pp.scale_latents(0.37)) == pytest.approx(0.37)
    assert zero123pp.scale_image(1.0) == pytest.approx(0.625)
    assert zero123pp.unscale_image(zero123pp.scale_image(-0.3)) == pytest.approx(-0.3)


def test_guided_denoise_counts_two_evaluations_and_mixes_branches(gen, cond):
    x = gen.initial_noise(1)
    before = gen.evaluations
    guided = gen.denoise(x, 500, cond)
    assert gen.evaluations - before == 2
    gen.guidance_scale = 1.0
    try:
        before = gen.evaluations
        x0_c = gen.denoise(x, 500, cond)  # conditional branch only
        assert gen.evaluations - before == 1
        swapped = dataclasses.replace(cond, text=cond.text.flip(0), latent=cond.latent.flip(0),
                                      ref_noise=cond.ref_noise.flip(0))
        x0_u = gen.denoise(x, 500, swapped)  # the unconditional branch in the conditional slot
    finally:
        gen.guidance_scale = 4.0
    assert not torch.allclose(x0_c, x0_u)
    assert torch.allclose(guided, x0_u + 4.0 * (x0_c - x0_u), atol=1e-4)


def test_unconditional_branch_is_empty_prompt_and_zero_image(gen, cond):
    assert torch.allclose(cond.text[0], gen._empty_text[0])
    expected = gen._empty_text[0] + cond.image_embeds[0] * gen.ramp[:, None]
    assert torch.allclose(cond.text[1], expected, atol=1e-6)
    assert torch.equal(cond.latent[0:1], gen.negative_latent())
    assert not torch.allclose(cond.latent[0], cond.latent[1])


def test_rig_angles_distance_and_fov_from_the_cameras(gen):
    cams = gen.cameras()
    assert len(cams) == 6
    az, el = [], []
    for cam in cams:
        w2c = cam.world_to_camera
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        assert np.linalg.norm(centre) == pytest.approx(zero123pp.DISTANCE)
        az.append(math.degrees(math.atan2(centre[0], -centre[1])) % 360)
        el.append(math.degrees(math.asin(centre[2] / np.linalg.norm(centre))))
        forward = w2c[2, :3]  # camera +z in world: looks at the origin
        assert np.allclose(forward, -centre / np.linalg.norm(centre), atol=1e-9)
        assert (cam.width, cam.height) == (VIEW, VIEW)
        assert math.degrees(2 * math.atan(cam.width / 2 / cam.fx)) == pytest.approx(30.0)
    assert np.allclose(az, [30, 90, 150, 210, 270, 330])
    assert np.allclose(el, [20, -10, 20, -10, 20, -10])
    ref = gen.reference_camera().world_to_camera
    c = -ref[:3, :3].T @ ref[:3, 3]
    assert np.allclose(c, [0.0, -zero123pp.DISTANCE, 0.0])


def test_reference_attention_write_pass_sees_the_noised_condition_latent(gen, cond, monkeypatch):
    seen = []
    forward = gen.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append((gen._bank.mode, sample.detach().clone()))
        return forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(gen.unet, "forward", spy)
    writes = gen._bank.writes
    x = gen.initial_noise(2)
    gen.denoise(x, 700, cond)
    assert [m for m, _ in seen] == ["write", "read"]
    a, s = gen.schedule.alpha_sigma(700)
    assert torch.allclose(seen[0][1], a * cond.latent + s * cond.ref_noise, atol=1e-6)
    assert torch.equal(seen[1][1], x.repeat(2, 1, 1, 1))
    n_self = sum(1 for k in gen.unet.attn_processors if k.endswith("attn1.processor"))
    assert n_self > 0 and gen._bank.writes - writes == n_self
    assert gen._bank.store == {} and gen._bank.mode == "off"


def test_reference_latent_and_condition_image_change_the_prediction(gen, cond):
    x = gen.initial_noise(5)
    x0 = gen.denoise(x, 600, cond)
    assert torch.equal(x0, gen.denoise(x, 600, cond))  # deterministic
    other_lat = cond.latent.clone()
    other_lat[1] = -other_lat[1] + 1.0
    x0_lat = gen.denoise(x, 600, dataclasses.replace(cond, latent=other_lat))
    assert (x0_lat - x0).abs().max() > 1e-4  # only the reference latent changed
    x0_img = gen.denoise(x, 600, gen.condition(_image((0.0, 0.2, 1.0))))
    assert (x0_img - x0).abs().max() > 1e-4


def test_matting_against_the_grey_background():
    rgb = np.full((12, 12, 3), 0.5, np.float32)
    rgb[2:10, 2:10] = (0.9, 0.1, 0.1)
    rgb[5:7, 5:7] = 0.5  # grey inside the object: a hole to fill
    rgba = zero123pp.matte_background(rgb)
    assert rgba.shape == (12, 12, 4)
    assert rgba[0, 0, 3] == 0.0 and rgba[3, 3, 3] == 1.0 and rgba[5, 5, 3] == 1.0
    near = rgb.copy()
    near[0, 0] = 0.565  # 0.065 from grey: half way between the thresholds
    assert zero123pp.matte_background(near)[0, 0, 3] == pytest.approx(0.5, abs=1e-5)


def test_encode_composites_rgba_on_grey(gen):
    rng = np.random.default_rng(1)
    rgb = [rng.random((VIEW, VIEW, 3)).astype(np.float32) for _ in range(6)]
    rgba = [np.concatenate([v, np.ones((VIEW, VIEW, 1), np.float32)], -1) for v in rgb]
    assert torch.allclose(gen.encode(rgb), gen.encode(rgba))
    clear = [np.concatenate([v, np.zeros((VIEW, VIEW, 1), np.float32)], -1) for v in rgb]
    grey = [np.full((VIEW, VIEW, 3), 0.5, np.float32)] * 6
    assert torch.allclose(gen.encode(clear), gen.encode(grey))
    assert not torch.allclose(gen.encode(rgb), gen.encode(grey))


def test_generate_runs_ancestral_steps_and_honours_cancel(gen, cond):
    before = gen.evaluations
    events = []
    views = gen.generate(cond, steps=2, seed=0, progress=events.append)
    assert len(views) == 6 and views[0].shape == (VIEW, VIEW, 4)
    assert gen.evaluations - before == 4
    assert events[-1].fraction == 1.0
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        gen.generate(cond, steps=2, cancel=tok)


def test_missing_weights_offline_names_model_and_size(tmp_path):
    with pytest.raises(DependencyError) as err:
        base.load_generator("zero123pp-v1.2", device="cpu", cache_dir=tmp_path)
    msg = str(err.value)
    assert "Zero123++ v1.2" in msg and "3.9 GB" in msg
    assert "--allow-download" in msg and "Allow Online Access" in msg


def test_pickle_only_folder_is_refused_without_unpickling(tiny_dir, tmp_path, monkeypatch):
    bad = tmp_path / "binonly"
    shutil.copytree(tiny_dir, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (bad / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(InputError, match="pickle"):
        base.load_generator(str(bad), device="cpu")


def test_incomplete_folder_and_unknown_id(tiny_dir, tmp_path):
    part = tmp_path / "partial"
    shutil.copytree(tiny_dir, part)
    (part / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(InputError, match="vocab.json"):
        base.load_generator(str(part), device="cpu")
    with pytest.raises(InputError, match="unknown model"):
        base.load_generator("zero123pp-v9", device="cpu")
