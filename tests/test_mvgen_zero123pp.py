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

from tiny_models import save_tiny  # noqa: E402

torch.set_num_threads(2)
VIEW = 16  # tiny views; the real model's are 320


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("z123") / "tiny", seed=0, view_size=VIEW)


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


def test_the_default_model_is_a_registry_id():
    from viewforge.engine.mvgen import DEFAULT_MODEL

    assert DEFAULT_MODEL in base.builtins() and base.DEFAULT_MODEL == DEFAULT_MODEL


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


# -- v1.2 input fidelity -------------------------------------------------------------------------


def test_pad_token_is_bang_with_and_without_the_special_tokens_file(gen, tiny_dir, tmp_path, caplog):
    import logging

    assert (tiny_dir / "tokenizer" / "special_tokens_map.json").is_file()
    assert "tokenizer/special_tokens_map.json" in zero123pp.SPEC.allow_patterns()
    assert "tokenizer/special_tokens_map.json" not in zero123pp.SPEC.files()  # optional for the check
    assert gen.tokenizer.pad_token_id == 0 == gen.tokenizer.convert_tokens_to_ids("!")
    ids = gen.tokenizer("", padding="max_length", max_length=77).input_ids
    assert ids[2:] == [0] * 75  # bos, eos, then "!" padding
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "tokenizer" / "special_tokens_map.json").unlink()
    from transformers import CLIPTokenizer

    assert CLIPTokenizer.from_pretrained(str(bare / "tokenizer")).pad_token_id == 55  # <|endoftext|> without it
    with caplog.at_level(logging.WARNING, logger="viewforge.engine.mvgen.zero123pp"):
        g2 = base.load_generator(str(bare), device="cpu")
        base.load_generator(str(bare), device="cpu")
    assert caplog.text.count("special_tokens_map.json") == 1  # warned once
    assert g2.tokenizer.pad_token_id == 0
    assert torch.equal(g2._empty_text, gen._empty_text)


def test_condition_is_prepared_at_the_configs_size_with_their_filters(gen):
    from PIL import Image

    assert gen.condition_size == 32 == gen.info.condition_size  # the larger crop (CLIP 32, VAE 16)
    assert zero123pp.INFO.condition_size == 512 and zero123pp.INFO.condition_fill == 0.85
    assert gen.vae_cfg["resample"] == 2 and gen.clip_cfg["resample"] == 3
    rng = np.random.default_rng(0)
    rgb = rng.random((32, 32, 3)).astype(np.float32)
    got = gen._preprocess(rgb, gen.vae_cfg)[0].permute(1, 2, 0).numpy()
    want = np.stack([np.asarray(Image.fromarray(rgb[..., c]).resize((16, 16), Image.BILINEAR)) for c in range(3)], -1)
    assert np.allclose(got, (np.clip(want, 0, 1) - 0.5) / 0.8, atol=1e-5)
    bicubic = np.stack([np.asarray(Image.fromarray(rgb[..., c]).resize((16, 16), Image.BICUBIC)) for c in range(3)], -1)
    assert not np.allclose(got, (np.clip(bicubic, 0, 1) - 0.5) / 0.8, atol=1e-3)
    big = base.ConditionImage(np.concatenate([rgb, np.ones((32, 32, 1), np.float32)], 2))
    assert tuple(gen.condition(big).latent.shape) == (2, 4, 8, 8)  # 16 px VAE crop / 2


@pytest.mark.parametrize("edit, says", [
    ({"crop_size": {"height": 18, "width": 18}, "size": {"shortest_edge": 18}}, "not a multiple of 4"),
    ({"image_std": [0.5, 0.5, 0.5]}, "std"),
    ({"crop_size": {"height": 24, "width": 24}}, "crops 24 px from a 16 px resize"),
])
def test_preprocessor_config_that_disagrees_with_the_vae_is_a_one_line_error(tiny_dir, tmp_path, edit, says):
    import json

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    p = bad / "feature_extractor_vae" / "preprocessor_config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **edit}))
    with pytest.raises(InputError, match=says) as e:
        base.load_generator(str(bad), device="cpu")
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_reference_noise_follows_the_seed(gen):
    a, b, c = gen.condition(_image(), seed=0), gen.condition(_image(), seed=0), gen.condition(_image(), seed=3)
    assert torch.equal(a.ref_noise, b.ref_noise) and not torch.allclose(a.ref_noise, c.ref_noise)
    assert torch.equal(a.latent, c.latent)


def test_sampler_passes_its_seed_and_elevation(gen, monkeypatch):
    from viewforge.engine.sampling import aware

    seen = {}
    real = gen.condition

    def spy(image, seed=0):
        seen["seed"] = seed
        return real(image, seed)

    monkeypatch.setattr(gen, "condition", spy)
    cfg = aware.SamplerConfig(method="oneshot", steps=1, seed=5, input_elevation=20.0, fit_iterations=30,
                              warm_iterations=10)
    res = aware.sample(gen, _image(), cfg)
    assert seen["seed"] == 5
    c = -res.reference_camera.world_to_camera[:3, :3].T @ res.reference_camera.world_to_camera[:3, 3]
    assert math.degrees(math.asin(c[2] / np.linalg.norm(c))) == pytest.approx(20.0)
    with pytest.raises(InputError, match="elevation"):
        aware.sample(gen, _image(), dataclasses.replace(cfg, input_elevation=95.0))


def test_v12_geometry_and_full_size_shapes():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    assert zero123pp.DISTANCE == pytest.approx(0.5 / math.tan(math.radians(15.0)))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**zero123pp.FULL_UNET)
        vae = AutoencoderKL(**zero123pp.FULL_VAE)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
