"""PerturbedOracle: a multi-view "generator" that needs no weights, for testing samplers.

Its clean-view prediction is built from the ground-truth views of a real object (renders of a
mesh at the rig's cameras) in three parts:

1. **What the generator believes**, ``mu_v``: the true view ``v`` with view-inconsistent
   distortions: a smooth random warp, a per-channel colour gain and offset, and a blur, drawn
   once per view (``persistent``; or afresh at every call). Their amplitude scales with ``s_t``,
   the noise std of the sample it is given: the noisier the input, the more the generator must
   invent, and what it invents is where views disagree.
2. **Where its input says the object is** (``register``): the belief is warped by the optical
   flow from its coarse band to the input's coarse band, scaled by ``g_low`` below: a denoiser
   draws its detail where the noisy input's structure is.
3. **What the sample tells it**: the prediction is the posterior mean of the view under a
   Gaussian prior centred on ``mu_v``, given ``x_t = a_t x0 + s_t eps``, computed in two bands.
   With ``y = x_t / a_t`` (noise std ``s_t / a_t`` per pixel), a Gaussian low-pass ``G`` of
   std ``band_sigma`` pixels reduces that noise by ``c = 1 / (2 sqrt(pi) band_sigma)``, and

       x0 = mu + g_low * G(y - mu) + g_high * ((y - mu) - G(y - mu)),
       g_low  = tau_low^2  / (tau_low^2  + (c s_t / a_t)^2),
       g_high = tau_high^2 / (tau_high^2 + (s_t / a_t)^2),

   so at high noise the prediction is the generator's belief, and at low noise it follows the
   structure of its input (coarse first), as a trained denoiser does.

A sampler that feeds the generator consistent inputs (renders of a 3D reconstruction) therefore
gets predictions whose coarse structure is consistent; plain sampling carries the large early
distortions of each view forward. Sample space: (V, 4, H, W) float32 in [-1, 1]: the views
composited on white and their alpha (the testbed predicts alpha too, so no matting enters the
comparison of samplers). Schedule: cosine, "sample" prediction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .base import ConditionImage, GeneratorInfo, NoiseSchedule

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..io.types import Mesh, PosedSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OracleConfig:
    """Distortions of the PerturbedOracle (amplitudes at full noise, scaled by ``s_t``).

    warp_px: std of the smooth random displacement, in pixels at a 256 px view (scaled with size).
    color_shift: std of the per-channel gain (1 + N(0, color_shift)) and offset (N(0, color_shift/2)).
    blur_sigma: largest blur std in pixels at a 256 px view.
    band_sigma: std in pixels of the low-pass that splits coarse from fine structure (at 256 px).
    tau_low, tau_high: how far (in [-1, 1] units) the truth may lie from the generator's belief
        in the coarse and the fine band (the prior's std in the posterior mean).
    persistent: True (default): each view's distortion is drawn once and scaled by ``s_t`` at
        every call (a deterministic generator whose views disagree in a fixed way, more where it
        must invent more); False: drawn afresh at every call (an ancestral sampler's changing
        hallucinations).
    register: the generator draws its sharp belief where its input's coarse structure says the
        object is: the belief is warped by the optical flow from its low band to the input's,
        scaled by the coarse band's gain (True, default; a denoiser puts detail where the noisy
        input's structure is, it does not paste a fixed image).
    seed: seed of the distortion draws.
    """

    warp_px: float = 6.0
    color_shift: float = 0.08
    blur_sigma: float = 2.0
    band_sigma: float = 4.0
    tau_low: float = 0.2
    tau_high: float = 0.1
    persistent: bool = True
    register: bool = True
    seed: int = 0


def _white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) straight RGBA -> (H, W, 4) RGB composited on white + alpha."""
    a = rgba[..., 3:4]
    return np.concatenate([rgba[..., :3] * a + (1.0 - a), a], axis=2)


class PerturbedOracle:
    """See the module docstring. views: (H, W, 4) RGBA ground truth at ``cameras``; reference:
    the condition view (RGBA) at ``reference_cam``."""

    def __init__(self, views: Sequence[np.ndarray], cameras: Sequence[Camera], reference: np.ndarray,
                 reference_cam: Camera, config: OracleConfig = OracleConfig()) -> None:
        if len(views) != len(cameras) or not views:
            raise InputError(f"{len(views)} views for {len(cameras)} cameras", "give one ground-truth view per camera")
        shapes = {v.shape for v in views}
        if len(shapes) != 1 or next(iter(shapes))[2] != 4:
            raise InputError(f"views have shapes {sorted(shapes)}", "give (H, W, 4) RGBA views of one size")
        self._views = [np.asarray(v, np.float32) for v in views]
        self._cameras = list(cameras)
        self._reference = np.asarray(reference, np.float32)
        self._reference_cam = reference_cam
        self.config = config
        h, w = self._views[0].shape[:2]
        self.info = GeneratorInfo(id="perturbed-oracle", name="PerturbedOracle (testbed)",
                                  licence="none (no weights)", num_views=len(views), view_size=w, rig="free")
        self.schedule = NoiseSchedule.cosine(prediction="sample")
        self.evaluations = 0
        self._shape = (len(views), 4, h, w)

    @classmethod
    def from_mesh(cls, mesh: "Mesh", cameras: Sequence[Camera], reference_cam: Camera,
                  config: OracleConfig = OracleConfig(), *,
                  render_cameras: Sequence[Camera] | None = None,
                  render_reference: Camera | None = None) -> "PerturbedOracle":
        """Ground truth from unlit renders of a textured mesh (engine/mesh/raster.py).

        ``cameras``/``reference_cam``: the rig the oracle reports (``cameras()``), normally in the
        generator's own object frame. ``render_cameras``/``render_reference``: where the truth is
        rendered instead (default: the same cameras). Completion (engine/complete.py) reports the
        generator's rig and renders the truth at that rig placed in the scene from the TRUE
        reference camera, as a real generator, which sees a photo taken at the true camera, would
        draw views consistent with the true pose (docs/completion.md)."""
        rc = list(cameras) if render_cameras is None else list(render_cameras)
        if len(rc) != len(cameras):
            raise InputError(f"{len(rc)} render cameras for {len(cameras)} rig cameras", "give one per rig camera")
        rr = reference_cam if render_reference is None else render_reference
        views = [render_rgba(mesh, c) for c in rc]
        return cls(views, cameras, render_rgba(mesh, rr), reference_cam, config)

    @classmethod
    def for_photos(cls, mesh: "Mesh", photos: "PosedSet", cameras: Sequence[Camera], reference_cam: Camera,
                   config: OracleConfig = OracleConfig(), *, photo_size: int = 256, fill: float = 0.8,
                   reference: int | None = None) -> "PerturbedOracle":
        """The oracle of a completion benchmark: it reports the generator rig ``cameras`` /
        ``reference_cam`` (object frame) and renders the truth at that rig placed in the scene
        from ``photos`` with their TRUE cameras (engine/complete.py's layout, with the same
        ``photo_size``, ``fill`` and ``reference`` as the completion run). Completion then places
        the rig from the cameras it is given (perturbed or not): a real generator sees the photo,
        taken at the true camera, so its views agree with the true pose, not the scene's."""
        from ..complete import layout, prepare_photos

        lay = layout(prepare_photos(photos, photo_size), cameras, reference_cam, reference=reference, fill=fill)
        return cls.from_mesh(mesh, cameras, reference_cam, config, render_cameras=lay.placement.cameras,
                             render_reference=lay.placement.reference)

    # -- the interface ---------------------------------------------------------------------------

    def cameras(self) -> list[Camera]:
        return list(self._cameras)

    def reference_camera(self, elevation_deg: float = 0.0) -> Camera:
        """The reference camera it was built with; with ``elevation_deg`` != 0 the same camera
        (distance, FoV, azimuth 0) raised to that elevation."""
        if not elevation_deg:
            return self._reference_cam
        from .base import orbit_camera

        c = self._reference_cam
        w2c = c.world_to_camera
        dist = float(np.linalg.norm(-w2c[:3, :3].T @ w2c[:3, 3]))
        fov = math.degrees(2.0 * math.atan(0.5 * c.width / c.fx))
        return orbit_camera(0.0, float(elevation_deg), dist, fov, c.width, name=c.name)

    def condition_image(self) -> ConditionImage:
        """The reference view as a condition image (what a user's photo would be)."""
        return ConditionImage(self._reference, source="oracle reference")

    def condition(self, image: ConditionImage, seed: int = 0) -> Any:
        return image

    def initial_noise(self, seed: int) -> "torch.Tensor":
        import torch

        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(self._shape, generator=g)

    def denoise(self, x_t: "torch.Tensor", t: int, cond: Any) -> "torch.Tensor":
        import torch

        self.evaluations += 1
        a, s = self.schedule.alpha_sigma(t)
        draw = 0 if self.config.persistent else self.evaluations
        cfg = self.config
        h, w = self._shape[2:]
        k = w / 256.0
        y = (x_t.detach().cpu().numpy() / max(a, 1e-6)).astype(np.float32)  # (V, 4, H, W)
        band = cfg.band_sigma * k
        c = 1.0 / (2.0 * math.sqrt(math.pi) * band)
        g_low = cfg.tau_low**2 / (cfg.tau_low**2 + (c * s / a) ** 2)
        g_high = cfg.tau_high**2 / (cfg.tau_high**2 + (s / a) ** 2)
        out = np.empty_like(y)
        for v in range(self._shape[0]):
            rng = np.random.default_rng([cfg.seed, draw, v])
            mu = 2.0 * _white(distort(self._views[v], s, cfg, rng, k)) - 1.0  # (H, W, 4)
            yv = np.ascontiguousarray(np.transpose(y[v], (1, 2, 0)))
            if cfg.register and g_low > 0.05:
                mu = _register(mu, yv, band, g_low)
            d = yv - mu
            low = _blur(d, band)
            out[v] = np.transpose(mu + g_low * low + g_high * (d - low), (2, 0, 1))
        return torch.from_numpy(np.clip(out, -1.0, 1.0))

    def decode(self, x0: "torch.Tensor") -> list[np.ndarray]:
        """(H, W, 4) straight RGBA views."""
        x = ((x0.detach().cpu().numpy() + 1.0) / 2.0).clip(0, 1).transpose(0, 2, 3, 1)
        out = []
        for v in x:
            a = v[..., 3:4]
            rgb = np.where(a > 1e-3, (v[..., :3] - (1.0 - a)) / np.maximum(a, 1e-3), 1.0)
            out.append(np.concatenate([rgb.clip(0, 1), a], axis=2).astype(np.float32))
        return out

    def encode(self, views: Sequence[np.ndarray]) -> "torch.Tensor":
        """(H, W, 4) straight RGBA views -> (V, 4, H, W) sample."""
        import torch

        x = np.stack([_white(np.asarray(v, np.float32)) for v in views]).astype(np.float32)
        return torch.from_numpy(x.transpose(0, 3, 1, 2) * 2.0 - 1.0)

    # -- ground truth, for benchmarks ------------------------------------------------------------

    @property
    def truth(self) -> list[np.ndarray]:
        return list(self._views)


def render_rgba(mesh: "Mesh", camera: Camera) -> np.ndarray:
    """(H, W, 4) unlit RGBA render of a textured mesh (3x3 supersampled)."""
    from ..mesh.raster import render_textured

    rgb, alpha = render_textured(mesh, camera)
    return np.concatenate([rgb, alpha[..., None]], axis=2).astype(np.float32)


def _gray8(img: np.ndarray) -> np.ndarray:
    """(H, W, 4) [-1, 1] RGB-on-white + alpha -> (H, W) uint8 luminance (silhouette included)."""
    lum = (img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114 + 1.0) * 127.5
    return np.clip(lum, 0, 255).astype(np.uint8)


def _register(mu: np.ndarray, y: np.ndarray, band: float, gain: float) -> np.ndarray:
    """Warp the belief ``mu`` towards the coarse structure of the (noisy) input ``y`` by the
    optical flow between their low bands, scaled by ``gain``."""
    import cv2

    lo_mu, lo_y = _gray8(_blur(mu, band)), _gray8(_blur(y, band))
    flow = cv2.calcOpticalFlowFarneback(lo_y, lo_mu, None, 0.5, 3, max(int(4 * band) | 1, 5), 3, 5, 1.1, 0)
    h, w = mu.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mu.astype(np.float32), gx + gain * flow[..., 0], gy + gain * flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    if sigma <= 0.05:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def distort(rgba: np.ndarray, amount: float, cfg: OracleConfig, rng: np.random.Generator, k: float = 1.0) -> np.ndarray:
    """One view-inconsistent distortion of an RGBA view: smooth warp, colour gain/offset, blur,
    each scaled by ``amount`` in [0, 1]; ``k`` scales pixel amplitudes with the view size."""
    import cv2

    h, w = rgba.shape[:2]
    out = rgba
    if cfg.warp_px > 0 and amount > 0:
        coarse = rng.normal(0.0, cfg.warp_px * k * amount, size=(4, 4, 2)).astype(np.float32)
        field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        # premultiplied so the warped colour at the silhouette does not bleed black
        pm = np.concatenate([out[..., :3] * out[..., 3:4], out[..., 3:4]], axis=2)
        pm = cv2.remap(pm, gx + field[..., 0], gy + field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0)
        a = pm[..., 3:4]
        out = np.concatenate([pm[..., :3] / np.maximum(a, 1e-6), a], axis=2)
    if cfg.color_shift > 0 and amount > 0:
        gain = 1.0 + rng.normal(0.0, cfg.color_shift * amount, size=3)
        offset = rng.normal(0.0, cfg.color_shift * amount / 2.0, size=3)
        out = np.concatenate([np.clip(out[..., :3] * gain + offset, 0, 1), out[..., 3:4]], axis=2)
    if cfg.blur_sigma > 0 and amount > 0:
        sigma = cfg.blur_sigma * k * amount * rng.uniform(0.5, 1.0)
        pm = np.concatenate([out[..., :3] * out[..., 3:4], out[..., 3:4]], axis=2)
        pm = _blur(pm.astype(np.float32), sigma)
        a = pm[..., 3:4]
        out = np.concatenate([pm[..., :3] / np.maximum(a, 1e-6), a], axis=2)
    return np.clip(out, 0, 1).astype(np.float32)
