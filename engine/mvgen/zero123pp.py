"""Zero123++ v1.2 as a :class:`~.base.MultiViewGenerator`, written on diffusers building blocks.

The model (sudo-ai/zero123plus-v1.2) is a Stable Diffusion 2 UNet fine-tuned to paint six views
of an object, tiled 3 rows x 2 columns into one 960 x 640 image, from one condition image. What
this module reproduces from the public pipeline (docs/zero123pp.md has the mapping):

- **Reference attention** ("reference-only"): the condition image's VAE latent is noised to the
  current timestep and run through the UNet in a *write* pass that records the input of every
  self-attention (``attn1``); in the *read* pass over the views those records are appended to the
  self-attention's keys/values, so every view token can attend to the condition image.
- **Global embedding**: the CLIP image embedding of the condition image, times v1.2's per-token
  ramping coefficients (``model_index.json``), is added to the text encoder's empty-prompt states.
- **Guidance**: classifier-free, scale 4.0 by default; the unconditional branch has the plain
  empty-prompt states and the latent of an all-zero (grey) normalised image as its reference.
- **Scaling**: sample space = ``scale_latents(vae_latent * scaling_factor)``; the VAE sees
  ``scale_image(2 p - 1)`` for pixel values ``p`` (and the decoder's output is unscaled back).
- **Schedule**: the scheduler config's betas (v1.2: linear 0.00085..0.012 over 1000 steps),
  v-prediction.
- **Background**: grey (0.5): the zero of the scaled image space.

Heavy imports (torch, diffusers, transformers) happen inside functions.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..cameras import Camera
from ..errors import DependencyError, InputError
from ..progress import CancelToken, ProgressCallback, check, report
from .base import (
    ConditionImage,
    GeneratorInfo,
    NoiseSchedule,
    RegistryEntry,
    orbit_camera,
    register,
)
from .weights import Component, ModelSpec, check_folder, fetch, read_marker, write_marker

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

#: Grey behind v1.2's views: the zero of the scaled image space (the public pipeline pastes the
#: condition image on 127/255; 0.5 is used everywhere here).
BACKGROUND = (0.5, 0.5, 0.5)

#: Hub snapshot of sudo-ai/zero123plus-v1.2 (main as of 2024; the commit several public projects
#: pin and cache under .../snapshots/<this>/). Not checked against the hub from here (no network).
REVISION = "2da07e89919e1a130c9b5add1584c70c7aa065fd"

INFO = GeneratorInfo(
    id="zero123pp-v1.2",
    name="Zero123++ v1.2",
    licence="CC-BY-NC-4.0 (non-commercial)",
    repo_id="sudo-ai/zero123plus-v1.2",
    revision=REVISION,
    # fp16 safetensors: UNet 866M + CLIP-H vision 632M + CLIP-H text 340M + VAE 84M parameters.
    download_mb=3850.0,
    num_views=6,
    view_size=320,
    rig="fixed",
    background=BACKGROUND,
    # v1.2's feature_extractor_vae: shortest edge 512, crop 512 (the CLIP one takes 224 from it).
    condition_size=512,
    condition_fill=0.85,  # CONDITION_FILL
)

register(RegistryEntry(INFO, ".zero123pp:load"))

#: The files loaded (also the download's allow-list): configs + safetensors, no remote code.
SPEC = ModelSpec(
    name=INFO.name,
    repo_id=INFO.repo_id or "",
    revision=REVISION,
    download_mb=INFO.download_mb or 0.0,
    components=(
        Component("unet", "config.json", "diffusion_pytorch_model.safetensors"),
        Component("vae", "config.json", "diffusion_pytorch_model.safetensors"),
        Component("text_encoder", "config.json", "model.safetensors"),
        Component("vision_encoder", "config.json", "model.safetensors"),
        # special_tokens_map.json holds v1.2's pad token "!" (SD2-era layout); optional: without it
        # the loader sets that pad token itself (Zero123PlusGenerator._check_pad_token).
        Component("tokenizer", "tokenizer_config.json", None, ("vocab.json", "merges.txt"),
                  optional=("special_tokens_map.json",)),
        Component("scheduler", "scheduler_config.json"),
        Component("feature_extractor_clip", "preprocessor_config.json"),
        Component("feature_extractor_vae", "preprocessor_config.json"),
    ),
)

# ---------------------------------------------------------------------------------------------
# Rig and grid
# ---------------------------------------------------------------------------------------------

#: Azimuths relative to the condition view (counter-clockwise seen from above) and absolute
#: elevations of the six views, in grid order (row-major, 3 rows x 2 columns).
AZIMUTHS = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ELEVATIONS = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
FOV_DEG = 30.0
#: v1.2 normalises the object to a fixed size whatever the input's framing: about a sphere of
#: radius 0.5 seen from 0.5 / tan(15 deg) with FoV 30, i.e. the sphere fills the frame (the model
#: authors' description). The scale of the frame is arbitrary; the ratio and the FoV are not.
OBJECT_RADIUS = 0.5
DISTANCE = OBJECT_RADIUS / math.tan(math.radians(FOV_DEG / 2.0))
#: The fraction of the condition image's side the object's longest bounding-box side is
#: normalised to (engine/mvgen/prep.py) so that it agrees with the rig's framing: InstantMesh,
#: the reconstructor trained on v1.2's views, resizes its inputs' foreground to 0.85.
CONDITION_FILL = 0.85
GRID_ROWS, GRID_COLS = 3, 2

# The public pipeline's scalings (sample space <-> VAE latent, pixels <-> VAE input).
LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75
IMAGE_SCALE = 0.5 / 0.8


def scale_latents(z):
    """VAE latent (times the VAE's scaling factor) -> sample space."""
    return (z - LATENT_SHIFT) * LATENT_SCALE


def unscale_latents(z):
    return z / LATENT_SCALE + LATENT_SHIFT


def scale_image(x):
    """Image in [-1, 1] -> the VAE's input range (v1.2 encodes and decodes images shrunk by 0.625)."""
    return x * IMAGE_SCALE


def unscale_image(x):
    return x / IMAGE_SCALE


def tile_views(views: Sequence[np.ndarray], rows: int = GRID_ROWS, cols: int = GRID_COLS) -> np.ndarray:
    """``rows * cols`` (S, S, C) views -> one (rows*S, cols*S, C) grid, row-major."""
    if len(views) != rows * cols:
        raise InputError(f"{len(views)} views given, the grid holds {rows * cols}", f"give {rows * cols} views")
    size = views[0].shape[0]
    if any(v.shape[:2] != (size, size) or v.shape[2:] != views[0].shape[2:] for v in views):
        raise InputError("views of different sizes or channel counts", "give square views of one size")
    return np.concatenate([np.concatenate(list(views[r * cols:(r + 1) * cols]), axis=1) for r in range(rows)], axis=0)


def untile_grid(grid: np.ndarray, rows: int = GRID_ROWS, cols: int = GRID_COLS) -> list[np.ndarray]:
    """Inverse of :func:`tile_views`."""
    h, w = grid.shape[0] // rows, grid.shape[1] // cols
    return [grid[r * h:(r + 1) * h, c * w:(c + 1) * w].copy() for r in range(rows) for c in range(cols)]


def matte_background(rgb: np.ndarray, background: Sequence[float] = BACKGROUND, lo: float = 0.03,
                     hi: float = 0.10) -> np.ndarray:
    """(H, W, 3) views on a flat background -> (H, W, 4) RGBA.

    Alpha is a soft threshold of the largest channel distance to the background (0 below ``lo``,
    1 above ``hi``); holes enclosed by the object (object colours close to the background) are
    filled. Colours are kept as they are (straight alpha)."""
    from scipy import ndimage

    d = np.abs(rgb - np.asarray(background, np.float32)).max(axis=-1)
    alpha = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
    solid = ndimage.binary_fill_holes(alpha > 0.5)
    alpha = np.where(solid, np.maximum(alpha, 1.0 * solid), alpha)
    return np.concatenate([rgb, alpha[..., None]], axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Reference attention
# ---------------------------------------------------------------------------------------------


class _RefBank:
    """Shared by the self-attention processors: ``mode`` is "off", "write" or "read"."""

    def __init__(self) -> None:
        self.mode = "off"
        self.store: dict[str, Any] = {}
        self.writes = 0


class _RefAttnProcessor:
    """Wraps a diffusers attention processor: in "write" mode records the layer's context (the
    self-attention input), in "read" mode appends the recorded tokens to its keys/values."""

    def __init__(self, inner, bank: _RefBank, name: str) -> None:
        self.inner, self.bank, self.name = inner, bank, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        import torch

        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if self.bank.mode == "write":
            self.bank.store[self.name] = ctx
            self.bank.writes += 1
        elif self.bank.mode == "read":
            ref = self.bank.store.pop(self.name)  # (B, N_ref, C)
            ctx = torch.cat([ctx, ref], dim=1)  # (B, N + N_ref, C)
        return self.inner(attn, hidden_states, ctx, attention_mask, temb)


def _install_reference_attention(unet) -> _RefBank:
    from diffusers.models.attention_processor import AttnProcessor2_0

    bank = _RefBank()
    procs = {}
    for name in unet.attn_processors:
        inner = AttnProcessor2_0()
        procs[name] = _RefAttnProcessor(inner, bank, name) if name.endswith("attn1.processor") else inner
    unet.set_attn_processor(procs)
    return bank


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Zero123Condition:
    """The encoded condition image. Index 0 of each pair is the unconditional branch.

    text: (2, L, D) encoder states: empty prompt, and empty prompt + ramp * CLIP image embedding.
    latent: (2, 4, h, w) raw VAE latents (no scaling) of the grey "zero" image and of the condition.
    ref_noise: (2, 4, h, w) the noise that puts ``latent`` at each timestep for the write pass
        (drawn once per condition, so ``denoise`` is deterministic).
    image_embeds: (1, 1, D) the CLIP image embedding.
    """

    text: "torch.Tensor"
    latent: "torch.Tensor"
    ref_noise: "torch.Tensor"
    image_embeds: "torch.Tensor"
    source: str = ""


def _proc_cfg(folder: Path, name: str) -> dict:
    path = folder / name / "preprocessor_config.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "copy the model folder's preprocessor configs again") from None


#: Tokenizer folders already warned about (the warning is given once per folder and process).
_PAD_WARNED: set[str] = set()


def _check_pad_token(tokenizer, folder: Path) -> None:
    """v1.2 pads the empty prompt with "!" (id 0), set by ``tokenizer/special_tokens_map.json``
    (SD2-era layout). Without that file transformers pads with ``<|endoftext|>`` and the prompt
    states at positions 2-76 change: then the pad token is set to "!" here, with a warning."""
    if (folder / "tokenizer" / "special_tokens_map.json").is_file():
        return
    bang = tokenizer.convert_tokens_to_ids("!")
    if tokenizer.pad_token_id == bang:
        return
    key = str(folder.resolve())
    if key not in _PAD_WARNED:
        _PAD_WARNED.add(key)
        log.warning("model folder %s has no tokenizer/special_tokens_map.json: padding the prompt with '!' "
                    "(id %s) as Zero123++ v1.2 does, not %r", folder, bang, tokenizer.pad_token)
    tokenizer.pad_token = "!"


def _check_preprocessors(folder: Path, vae_cfg: dict, clip_cfg: dict, vae_factor: int, unet_factor: int) -> int:
    """The side the condition image is prepared at (the larger of the two crops), after checking
    that the preprocessor configs agree with the VAE and the UNet; one-line InputError if not."""
    fix = "use the model's own feature_extractor_vae / feature_extractor_clip preprocessor_config.json"
    sizes = {}
    for name, cfg in (("feature_extractor_vae", vae_cfg), ("feature_extractor_clip", clip_cfg)):
        try:
            short = _edge(cfg["size"], "shortest_edge") if cfg.get("do_resize", True) else None
            crop = _edge(cfg["crop_size"], "height") if cfg.get("do_center_crop", True) else short
            resample = int(cfg.get("resample", 3))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"model folder {folder}: {name} has no usable size/crop_size", fix) from None
        if crop is None or crop < 1 or (short is not None and crop > short):
            raise InputError(f"model folder {folder}: {name} crops {crop} px from a {short} px resize", fix)
        if resample not in _PIL_FILTERS:
            raise InputError(f"model folder {folder}: {name} has an unknown resample filter {resample}", fix)
        sizes[name] = crop
    crop = sizes["feature_extractor_vae"]
    if crop % (vae_factor * unet_factor):
        raise InputError(f"model folder {folder}: feature_extractor_vae crops {crop} px, not a multiple of "
                         f"{vae_factor * unet_factor} (the VAE's factor {vae_factor} times the UNet's {unet_factor})", fix)
    mean = np.broadcast_to(np.asarray(vae_cfg.get("image_mean", 0.5), np.float64), (3,))
    std = np.broadcast_to(np.asarray(vae_cfg.get("image_std", 0.5), np.float64), (3,))
    if not (np.allclose(mean, 0.5) and np.allclose(std, 0.5 / IMAGE_SCALE)):
        raise InputError(f"model folder {folder}: feature_extractor_vae normalises with mean {mean.tolist()} and std "
                         f"{std.tolist()}, but its VAE encodes views as (p - 0.5) / {0.5 / IMAGE_SCALE:g}", fix)
    return max(sizes.values())


#: PIL's resample codes in preprocessor configs (nearest 0, lanczos 1, bilinear 2, bicubic 3, box 4, hamming 5).
_PIL_FILTERS = (0, 1, 2, 3, 4, 5)


def pil_resize(img: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C) resized to ``size`` = (w, h) with PIL's filter ``resample``
    (what CLIPImageProcessor uses), channel by channel in float (no 8-bit rounding)."""
    from PIL import Image

    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], np.float32)).resize(size, resample=resample))
             for c in range(img.shape[2])]
    return np.stack(chans, axis=-1).astype(np.float32)


def _edge(value, key: str) -> int:
    if isinstance(value, dict):
        return int(value.get(key) or value.get("height") or value.get("shortest_edge"))
    return int(value)


class Zero123PlusGenerator:
    """Zero123++ v1.2 (see the module docstring). Build with :func:`load`."""

    def __init__(self, folder: Path, *, info: GeneratorInfo, device, dtype, guidance_scale: float,
                 view_size: int) -> None:
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        self.folder = folder
        self.device, self.dtype = device, dtype
        self.guidance_scale = float(guidance_scale)
        self.evaluations = 0
        kw: dict = dict(torch_dtype=dtype, use_safetensors=True)
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            kw["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, without its warning
        self.unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), **kw).to(device).eval()
        self.vae = AutoencoderKL.from_pretrained(str(folder / "vae"), **kw).to(device).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=dtype,
                                                          use_safetensors=True).to(device).eval()
        self.vision_encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(folder / "vision_encoder"), dtype=dtype, use_safetensors=True).to(device).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        _check_pad_token(self.tokenizer, folder)
        self.clip_cfg = _proc_cfg(folder, "feature_extractor_clip")
        self.vae_cfg = _proc_cfg(folder, "feature_extractor_vae")
        index = json.loads((folder / "model_index.json").read_text())
        self.ramp = torch.tensor(index["ramping_coefficients"], dtype=torch.float32)  # (L,)
        self.schedule = _schedule_from_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.view_size = int(view_size)
        if self.view_size % self.vae_factor:
            raise InputError(f"view size {self.view_size} is not a multiple of the VAE's factor {self.vae_factor}",
                             "fix view_size in the model folder's marker file")
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.condition_size = _check_preprocessors(folder, self.vae_cfg, self.clip_cfg, self.vae_factor, unet_factor)
        self.info = _replace(info, view_size=self.view_size, condition_size=self.condition_size)
        self._bank = _install_reference_attention(self.unet)
        with torch.no_grad():
            self._empty_text = self._encode_empty_prompt()  # (1, L, D)
        if self._empty_text.shape[1] != self.ramp.shape[0]:
            raise InputError(f"{len(self.ramp)} ramping coefficients for {self._empty_text.shape[1]} text tokens",
                             "the model folder's model_index.json does not match its tokenizer")
        self._negative_latent = None

    # -- geometry ------------------------------------------------------------------------------

    def cameras(self) -> list[Camera]:
        return [orbit_camera(a, e, DISTANCE, FOV_DEG, self.view_size, name=f"zero123pp_{i}")
                for i, (a, e) in enumerate(zip(AZIMUTHS, ELEVATIONS))]

    def reference_camera(self, elevation_deg: float = 0.0) -> Camera:
        """The condition image's camera: azimuth 0, ``elevation_deg`` above the object (0: the
        photo was taken level; v1.2's rig elevations are absolute, so a photo from above is
        anchored above), v1.2's distance and FoV."""
        return orbit_camera(0.0, float(elevation_deg), DISTANCE, FOV_DEG, self.view_size, name="zero123pp_input")

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.vae_factor
        return (1, int(self.unet.config.in_channels), GRID_ROWS * self.view_size // f, GRID_COLS * self.view_size // f)

    # -- conditioning --------------------------------------------------------------------------

    def _encode_empty_prompt(self):
        import torch

        tok = self.tokenizer("", padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(self.device)
        return self.text_encoder(ids)[0].float()  # (1, L, D) last hidden state

    def _preprocess(self, rgb: np.ndarray, cfg: dict):
        """(S, S, 3) float RGB -> (1, 3, crop, crop) normalised like a CLIPImageProcessor: its
        shortest-edge resize with the config's own PIL ``resample`` filter (v1.2: bicubic for
        CLIP, bilinear for the VAE), centre crop, normalisation."""
        import torch

        img = np.ascontiguousarray(rgb, np.float32)
        if cfg.get("do_resize", True):
            short = _edge(cfg.get("size", img.shape[1]), "shortest_edge")
            h, w = img.shape[:2]
            if min(h, w) != short:  # transformers' shortest-edge rule: the long side is truncated
                size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
                img = pil_resize(img, size, int(cfg.get("resample", 3)))
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        if cfg.get("do_center_crop", True):
            crop = _edge(cfg.get("crop_size", x.shape[-1]), "height")
            h, w = x.shape[-2:]
            top, left = max((h - crop) // 2, 0), max((w - crop) // 2, 0)
            x = x[..., top:top + crop, left:left + crop]
        x = x.clamp(0.0, 1.0)
        if cfg.get("do_normalize", True):
            mean = torch.tensor(np.broadcast_to(np.asarray(cfg.get("image_mean", 0.5), np.float32), (3,)).copy())
            std = torch.tensor(np.broadcast_to(np.asarray(cfg.get("image_std", 0.5), np.float32), (3,)).copy())
            x = (x - mean[:, None, None]) / std[:, None, None]
        return x.to(self.device, self.dtype)

    def negative_latent(self):
        """(1, 4, h, w) VAE latent of the all-zero normalised image (the unconditional reference)."""
        import torch

        if self._negative_latent is None:
            crop = _edge(self.vae_cfg.get("crop_size", self.view_size), "height")
            zeros = torch.zeros(1, 3, crop, crop, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self._negative_latent = self.vae.encode(zeros).latent_dist.mode().float()
        return self._negative_latent

    def condition(self, image: ConditionImage, seed: int = 0) -> Zero123Condition:
        """CLIP embedding + VAE latent of ``image`` on the grey background (see the class docs).
        ``seed``: the sampler's seed, which the reference-latent noise follows."""
        import torch

        rgba = np.asarray(image.rgba, np.float32)
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] != rgba.shape[1]:
            raise InputError(f"condition image of shape {rgba.shape}", "give a square (S, S, 4) RGBA image")
        rgb = image.on_background(BACKGROUND)
        with torch.no_grad():
            pix_vae = self._preprocess(rgb, self.vae_cfg)  # (1, 3, c, c), = scale_image(2p - 1) for v1.2
            latent = self.vae.encode(pix_vae).latent_dist.mode().float()  # (1, 4, c/f, c/f)
            pix_clip = self._preprocess(rgb, self.clip_cfg)
            embeds = self.vision_encoder(pix_clip).image_embeds.float()[:, None]  # (1, 1, D)
        text_c = self._empty_text + embeds * self.ramp.to(embeds.device)[None, :, None]  # (1, L, D)
        text = torch.cat([self._empty_text, text_c])  # (2, L, D)
        lat = torch.cat([self.negative_latent(), latent])  # (2, 4, h, w)
        gen = torch.Generator("cpu").manual_seed(int(seed) + 7919)
        noise = torch.randn(lat.shape, generator=gen).to(lat.device)
        return Zero123Condition(text, lat, noise, embeds, image.source)

    # -- diffusion -----------------------------------------------------------------------------

    def initial_noise(self, seed: int):
        """x_T: (1, 4, 3*S/f, 2*S/f) standard normal latents (f = 8 for v1.2: (1, 4, 120, 80))."""
        import torch

        gen = torch.Generator("cpu").manual_seed(int(seed))
        return torch.randn(self.latent_shape, generator=gen).to(self.device)

    def _unet(self, sample, t: int, states):
        import torch

        ts = torch.full((sample.shape[0],), int(t), device=self.device, dtype=torch.long)
        return self.unet(sample.to(self.device, self.dtype), ts, encoder_hidden_states=states.to(self.device, self.dtype)).sample

    def denoise(self, x_t, t: int, cond: Zero123Condition):
        """The guided clean-sample prediction x0 (B, 4, h, w) from x_t at timestep ``t``.

        A write pass over the condition latent noised to ``t``, then the read pass over the views
        (both branches batched); guidance on the v-prediction."""
        import torch

        x_t = x_t.to(self.device, torch.float32)
        b = x_t.shape[0]
        guided = self.guidance_scale > 1.0
        sl = slice(0, 2) if guided else slice(1, 2)
        n = 2 if guided else 1
        a, s = self.schedule.alpha_sigma(t)
        ref = a * cond.latent[sl] + s * cond.ref_noise[sl]  # (n, 4, h', w')
        ref = ref.repeat_interleave(b, 0)  # (n*B, ...): branch-major
        states = cond.text[sl].repeat_interleave(b, 0)  # (n*B, L, D)
        with torch.no_grad():
            self._bank.store.clear()
            self._bank.mode = "write"
            try:
                self._unet(ref, t, states)
                self._bank.mode = "read"
                v = self._unet(x_t.repeat(n, 1, 1, 1), t, states).float()  # (n*B, 4, h, w)
            finally:
                self._bank.mode = "off"
                self._bank.store.clear()
        self.evaluations += n * b
        if guided:
            v = v[:b] + self.guidance_scale * (v[b:] - v[:b])
        return self.schedule.to_x0(v, x_t, t)

    # -- sample space <-> views ----------------------------------------------------------------

    def decode(self, x0) -> list[np.ndarray]:
        """(1, 4, h, w) sample -> 6 (S, S, 4) float32 RGBA views, matted against the grey."""
        import torch

        if x0.ndim != 4 or x0.shape[0] != 1:
            raise InputError(f"decode takes one sample (1, 4, h, w), got {tuple(x0.shape)}", "decode samples one by one")
        z = unscale_latents(x0.to(self.device, torch.float32)) / self.vae.config.scaling_factor
        with torch.no_grad():
            img = self.vae.decode(z.to(self.dtype)).sample.float()  # (1, 3, H, W)
        pix = (unscale_image(img) * 0.5 + 0.5).clamp(0.0, 1.0)[0].permute(1, 2, 0).cpu().numpy()
        return [matte_background(v, BACKGROUND) for v in untile_grid(pix.astype(np.float32))]

    def encode(self, views: Sequence[np.ndarray]):
        """6 views ((S, S, 4) RGBA, composited on grey, or (S, S, 3) RGB) -> (1, 4, h, w) sample."""
        import torch
        import torch.nn.functional as F

        rgbs = []
        for v in views:
            v = np.asarray(v, np.float32)
            if v.ndim != 3 or v.shape[2] not in (3, 4):
                raise InputError(f"view of shape {v.shape}", "give (S, S, 3) or (S, S, 4) float images")
            if v.shape[2] == 4:
                v = v[..., :3] * v[..., 3:] + np.asarray(BACKGROUND, np.float32) * (1.0 - v[..., 3:])
            if v.shape[:2] != (self.view_size, self.view_size):
                t = torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1)[None]
                t = F.interpolate(t, size=(self.view_size, self.view_size), mode="bilinear", antialias=True,
                                  align_corners=False)
                v = t[0].permute(1, 2, 0).numpy()
            rgbs.append(v)
        grid = tile_views(rgbs)  # (3S, 2S, 3)
        x = torch.from_numpy(np.ascontiguousarray(grid)).permute(2, 0, 1)[None].to(self.device)
        x = scale_image(x * 2.0 - 1.0)
        with torch.no_grad():
            z = self.vae.encode(x.to(self.dtype)).latent_dist.mode().float()
        return scale_latents(z * self.vae.config.scaling_factor)

    # -- plain sampling ------------------------------------------------------------------------

    def generate(self, cond: Zero123Condition, steps: int = 28, seed: int = 0,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[np.ndarray]:
        """Sample six views with Euler-ancestral steps (the public pipeline's sampler) on the
        "trailing" timesteps; returns :meth:`decode`'s views."""
        import torch

        ts = self.schedule.timesteps(steps)
        x = self.initial_noise(seed)  # VP sample at ts[0]
        gen = torch.Generator("cpu").manual_seed(int(seed) + 1)
        for i, t in enumerate(ts):
            check(cancel)
            x0 = self.denoise(x, t, cond)
            a, s = self.schedule.alpha_sigma(t)
            sig = s / a
            if i + 1 < len(ts):
                a_n, s_n = self.schedule.alpha_sigma(ts[i + 1])
                sig_n = s_n / a_n
            else:
                a_n, sig_n = 1.0, 0.0
            up = math.sqrt(max(sig_n**2 * (sig**2 - sig_n**2) / sig**2, 0.0))
            down = math.sqrt(max(sig_n**2 - up**2, 0.0))
            xs = x / a  # VE: x0 + sig * eps
            eps = (xs - x0) / sig
            xs = x0 + down * eps
            if up > 0:
                xs = xs + up * torch.randn(xs.shape, generator=gen).to(xs.device)
            x = xs * a_n
            report(progress, "generate", i + 1, len(ts), f"step {i + 1}/{len(ts)}")
        return self.decode(x)


def _replace(info: GeneratorInfo, **kw) -> GeneratorInfo:
    from dataclasses import replace

    return replace(info, **kw)


def _schedule_from_config(cfg: dict) -> NoiseSchedule:
    """The :class:`NoiseSchedule` of a diffusers scheduler config (linear or scaled_linear betas)."""
    T = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 0.00085)), float(cfg.get("beta_end", 0.012))
    kind = cfg.get("beta_schedule", "linear")
    if kind == "linear":
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2
    else:
        raise InputError(f"unsupported beta_schedule {kind!r} in the scheduler config",
                         "use a model whose scheduler has linear or scaled_linear betas")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise InputError(f"unsupported prediction_type {pred!r}", "use an epsilon or v-prediction model")
    return NoiseSchedule(np.cumprod(1.0 - betas), pred)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _resolve_dtype(dtype, device):
    import torch

    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            return {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}[dtype]
        except KeyError:
            raise InputError(f"unknown dtype {dtype!r}", "use float16, bfloat16 or float32") from None
    return dtype


def load(source: str, *, device: str = "auto", dtype=None, guidance_scale: float = 4.0,
         allow_download: bool = False, progress: ProgressCallback | None = None,
         cache_dir: str | Path | None = None) -> Zero123PlusGenerator:
    """Load Zero123++ v1.2 from the registry id (the pinned hub snapshot in the local cache,
    downloaded only with ``allow_download``) or from a local folder of the same layout with a
    ``viewforge_generator.json`` marker (``{"generator": "zero123pp-v1.2"}``, optional
    ``"view_size"``, 320 by default)."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"{INFO.name} needs torch, diffusers and transformers ({exc.name} is missing)",
                              None) from exc
    from ..device import resolve_device

    view_size = INFO.view_size
    if source == INFO.id:
        folder = fetch(SPEC, allow_download=allow_download, cache_dir=cache_dir, progress=progress)
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise InputError(f"model {source!r} is neither {INFO.id!r} nor a folder", f"use {INFO.id!r} or a model folder")
        marker = read_marker(folder)
        if marker.get("generator") != INFO.id:
            raise InputError(f"model folder {folder} is for {marker.get('generator')!r}, not {INFO.id!r}",
                             "load it with its own generator")
        view_size = int(marker.get("view_size", view_size))
        check_folder(folder, SPEC, local=True)
    dev = resolve_device(device)
    report(progress, "load", 0, 1, INFO.name)
    gen = Zero123PlusGenerator(folder, info=INFO, device=dev, dtype=_resolve_dtype(dtype, dev),
                               guidance_scale=guidance_scale, view_size=view_size)
    report(progress, "load", 1, 1, INFO.name)
    log.info("loaded %s from %s on %s", INFO.name, folder, dev)
    return gen


# ---------------------------------------------------------------------------------------------
# Tiny checkpoint (tests)
# ---------------------------------------------------------------------------------------------

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _write_tiny_tokenizer(folder: Path, max_length: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chars = list("!abcdefghijklmnopqrstuvwxyz")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}, indent=1))
    # SD2-era layout: the pad token "!" is set here, not in tokenizer_config.json.
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "!"}, indent=1))


#: The shapes of the real v1.2 components (an SD2 UNet and SD VAE, OpenCLIP-H text and vision
#: encoders; the parameter counts are those of v1.2's files): :func:`save_full_random`.
FULL_UNET = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32)
FULL_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=4, norm_num_groups=32, sample_size=768, scaling_factor=0.18215)
FULL_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, projection_dim=512, pad_token_id=0,
                 bos_token_id=54, eos_token_id=55, hidden_act="gelu")
FULL_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")


def save_full_random(path: str | Path, seed: int = 0, dtype: str = "float16") -> Path:
    """Save a randomly initialised Zero123++ with the real v1.2 shapes (FULL_* configs, 320 px
    views, v1.2's preprocessor configs: CLIP 224 bicubic, VAE 512 bilinear) in ``dtype``
    safetensors (about 3.8 GB in float16). Random weights make its output meaningless but its
    compute that of the real model: for timings (bench/gpu.py). The tokenizer is the tiny one
    (the empty prompt's 77 positions are all that is encoded)."""
    return save_random(Path(path), seed, 320, FULL_UNET, FULL_VAE, FULL_TEXT, FULL_VISION, clip_size=224,
                        vae_size=512, dtype=dtype)


def save_random(folder: Path, seed: int, view_size: int, unet_cfg: dict, vae_cfg: dict, text_cfg: dict,
                vision_cfg: dict, *, clip_size: int, vae_size: int, dtype: str = "float32") -> Path:
    """Save a randomly initialised Zero123++ of the given component configs (UNet2DConditionModel,
    AutoencoderKL, CLIPTextModel, CLIPVisionModelWithProjection keyword arguments) in the real
    folder layout: a tiny CLIP tokenizer, the scheduler and preprocessor configs (CLIP at
    ``clip_size``, VAE at ``vae_size``), the marker with ``view_size``; ``dtype`` safetensors."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tdtype = _resolve_dtype(dtype, torch.device("cpu"))
    tokens = int(text_cfg["max_position_embeddings"])
    UNet2DConditionModel(**unet_cfg).to(tdtype).save_pretrained(str(folder / "unet"), safe_serialization=True)
    AutoencoderKL(**vae_cfg).to(tdtype).save_pretrained(str(folder / "vae"), safe_serialization=True)
    _write_tiny_tokenizer(folder / "tokenizer", tokens)
    CLIPTextModel(CLIPTextConfig(**text_cfg)).to(tdtype).save_pretrained(str(folder / "text_encoder"))
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_cfg)).to(tdtype).save_pretrained(
        str(folder / "vision_encoder"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
        "steps_offset": 1, "timestep_spacing": "linspace"}, indent=1))
    for name, size, mean, std, resample in (("feature_extractor_clip", clip_size, _CLIP_MEAN, _CLIP_STD, 3),
                                            ("feature_extractor_vae", vae_size, [0.5] * 3, [0.8] * 3, 2)):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
            "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std,
            "resample": resample, "do_convert_rgb": True}, indent=1))
    rng = np.random.default_rng(seed)
    ramp = np.clip(np.linspace(0.0, 0.3, tokens) + 0.02 * rng.standard_normal(tokens), 0.0, None)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "Zero123PlusPipeline", "_diffusers_version": "0.20.2",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "ramping_coefficients": [float(r) for r in ramp]}, indent=1))
    write_marker(folder, INFO.id, view_size=int(view_size))
    return folder
