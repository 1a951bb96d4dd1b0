"""The multi-view generator interface, its noise schedule and the generator registry.

A **multi-view generator** turns one prepared condition image into ``V`` views of the object at a
camera rig. Samplers (:mod:`viewforge.engine.sampling`) drive it step by step, so the interface is
the diffusion model's, not a pipeline's:

- ``cameras()``: the rig, ``V`` :class:`~viewforge.engine.cameras.Camera` in the *object frame*
  (object at the origin, Blender world axes: +Z up; the condition image's camera at azimuth 0 on
  the -Y side, see :func:`orbit_camera`).
- ``condition(image)``: encode a :class:`ConditionImage` once per job.
- ``initial_noise(seed)``: ``x_T`` in the generator's *sample space* (latents for a latent model).
- ``denoise(x_t, t, cond)``: the model's clean-sample prediction ``x0`` at timestep ``t``
  (classifier-free guidance included; every call adds its network evaluations to ``evaluations``).
- ``decode(x0)`` -> views (RGBA), ``encode(views)`` -> sample: between sample space and images,
  used to reconstruct from predictions and to re-noise renders.
- ``schedule``: the :class:`NoiseSchedule` (``x_t = a_t x0 + s_t eps``).

Generators are found through the **registry** (:data:`REGISTRY`, :func:`load_generator`): an id
(``"zero123pp-v1.2"``) or a local model folder. Each entry states its weights' licence and download
size, shown to the user before the first download.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence

import numpy as np

from ..cameras import Camera, look_at
from ..errors import InputError
from . import DEFAULT_MODEL  # noqa: F401  (the registry's default, re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Condition image and rig geometry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ConditionImage:
    """A prepared condition image (:func:`viewforge.engine.mvgen.prep.prepare_image`).

    rgba: (S, S, 4) float32 in [0, 1], straight (not premultiplied) alpha; the object centred and
          scaled so its bounding box's longest side spans ``fill`` of the image.
    fill: fraction of the side the object spans.
    source: where it came from (file name), for messages.
    """

    rgba: np.ndarray
    fill: float = 0.8
    source: str = ""

    @property
    def size(self) -> int:
        return int(self.rgba.shape[0])

    def on_background(self, color: Sequence[float]) -> np.ndarray:
        """(S, S, 3) RGB composited over a flat ``color``."""
        a = self.rgba[..., 3:4]
        return (self.rgba[..., :3] * a + np.asarray(color, np.float32) * (1.0 - a)).astype(np.float32)


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float, fov_deg: float, size: int,
                 name: str = "") -> Camera:
    """A square pinhole camera on a sphere around the origin, looking at it, +Z up.

    Azimuth 0 is the condition image's camera, on the -Y side (Blender's front view); azimuth
    grows counter-clockwise seen from above (+Z), so 90 is on the +X side. Elevation is above
    the XY plane."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = distance * np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)
    return Camera(f, f, size / 2.0, size / 2.0, size, size, look_at(eye, (0.0, 0.0, 0.0)), name=name)


def ortho_orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float, half_extent: float, size: int,
                       name: str = "") -> Camera:
    """A square orthographic camera placed as :func:`orbit_camera` places its pinhole one; the
    image spans ``[-half_extent, half_extent]`` world units on both axes around the origin."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = distance * np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    f = 0.5 * size / half_extent
    return Camera(f, f, size / 2.0, size / 2.0, size, size, look_at(eye, (0.0, 0.0, 0.0)), name=name,
                  projection="orthographic")


# ---------------------------------------------------------------------------------------------
# Noise schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance-preserving schedule: ``x_t = a_t x0 + s_t eps`` with
    ``a_t = sqrt(alphas_cumprod[t])``, ``s_t = sqrt(1 - alphas_cumprod[t])``, t in [0, T).

    alphas_cumprod: (T,) decreasing.
    prediction: what the network outputs: "epsilon", "v_prediction" or "sample".
    """

    alphas_cumprod: np.ndarray
    prediction: Literal["epsilon", "v_prediction", "sample"] = "epsilon"

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000,
                      prediction: str = "epsilon") -> "NoiseSchedule":
        """Stable Diffusion's schedule (also Zero123++'s)."""
        betas = np.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=np.float64) ** 2
        return cls(np.cumprod(1.0 - betas), prediction)  # type: ignore[arg-type]

    @classmethod
    def cosine(cls, steps: int = 1000, prediction: str = "sample") -> "NoiseSchedule":
        """Nichol & Dhariwal's cosine schedule (the oracle's)."""
        t = np.arange(steps + 1, dtype=np.float64) / steps
        f = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        acp = np.clip(f[1:] / f[0], 1e-5, 1.0)
        return cls(acp, prediction)  # type: ignore[arg-type]

    @property
    def num_train_timesteps(self) -> int:
        return int(len(self.alphas_cumprod))

    def alpha_sigma(self, t: int) -> tuple[float, float]:
        acp = float(self.alphas_cumprod[int(t)])
        return math.sqrt(acp), math.sqrt(max(1.0 - acp, 0.0))

    def noise_level(self, t: int) -> float:
        """``s_t^2`` in [0, 1]: 0 clean, 1 pure noise."""
        return 1.0 - float(self.alphas_cumprod[int(t)])

    def timesteps(self, steps: int) -> list[int]:
        """``steps`` descending timesteps, "trailing" spacing (the first is T-1, so the first step
        starts from pure noise; diffusers' ``timestep_spacing="trailing"``)."""
        if steps < 1:
            raise InputError(f"{steps} sampling steps", "use at least 1 step")
        T = self.num_train_timesteps
        ts = np.round(np.arange(T, 0, -T / steps)).astype(int) - 1
        return [int(t) for t in ts]

    def add_noise(self, x0, eps, t: int):
        a, s = self.alpha_sigma(t)
        return a * x0 + s * eps

    def to_x0(self, model_out, x_t, t: int):
        """The clean-sample prediction from a network output of kind ``prediction``."""
        a, s = self.alpha_sigma(t)
        if self.prediction == "epsilon":
            return (x_t - s * model_out) / a
        if self.prediction == "v_prediction":
            return a * x_t - s * model_out
        return model_out

    def to_eps(self, x0, x_t, t: int):
        """The noise implied by ``x_t`` and a clean prediction ``x0``."""
        a, s = self.alpha_sigma(t)
        return (x_t - a * x0) / max(s, 1e-8)


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorInfo:
    """What the registry and the UI know about a generator.

    id: registry id ("zero123pp-v1.2"). name: human-readable name.
    licence: licence of the weights (shown before the first download).
    repo_id, revision: the weights on the model hub (pinned revision), None if none are needed.
    download_mb: size of the download in MB (for the "missing weights" message), None if none.
    num_views, view_size: views per generation and their side in pixels.
    rig: "fixed" (the model's own cameras) or "free" (any cameras).
    background: the RGB colour the model puts behind the object (views are matted against it).
    condition_size: side in pixels the condition image is prepared at (the model's largest
        preprocessor crop: 512 for Zero123++ v1.2's VAE branch).
    condition_fill: the fraction of that side the object's longest bounding-box side is
        normalised to, the framing that agrees with the generator's reference camera.
    projection: the rig cameras' projection, "perspective" or "orthographic"
        (:data:`viewforge.engine.cameras.PROJECTIONS`).
    commercial: whether the weights' licence permits commercial use (shown with the licence).
    gpu_memory_gb: peak GPU memory of one sample at full size in float16 (measured), None if unknown;
        loading on a GPU with less free memory stops with a clear message before anything loads.
    """

    id: str
    name: str
    licence: str
    repo_id: str | None = None
    revision: str | None = None
    download_mb: float | None = None
    num_views: int = 6
    view_size: int = 320
    rig: Literal["fixed", "free"] = "fixed"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    condition_size: int = 320
    condition_fill: float = 0.8
    projection: str = "perspective"
    commercial: bool = False
    gpu_memory_gb: float | None = None


class MultiViewGenerator(Protocol):
    """See the module docstring. ``evaluations`` counts network evaluations (one per batch item
    of the denoiser: a guided step with a conditional and an unconditional branch counts 2)."""

    info: GeneratorInfo
    schedule: NoiseSchedule
    evaluations: int

    def cameras(self) -> list[Camera]: ...

    def reference_camera(self, elevation_deg: float = 0.0) -> Camera:
        """The condition image's camera, ``elevation_deg`` above the object."""
        ...

    def condition(self, image: ConditionImage, seed: int = 0) -> Any:
        """Encode ``image`` once per job; ``seed`` (the sampler's) seeds any noise it draws."""
        ...

    def initial_noise(self, seed: int) -> "torch.Tensor": ...

    def denoise(self, x_t: "torch.Tensor", t: int, cond: Any) -> "torch.Tensor": ...

    def decode(self, x0: "torch.Tensor") -> list[np.ndarray]:
        """(H, W, 4) float32 RGBA views in [0, 1], one per rig camera."""
        ...

    def encode(self, views: Sequence[np.ndarray]) -> "torch.Tensor":
        """Views ((H, W, 4) RGBA or (H, W, 3) RGB on the generator's background) -> a sample."""
        ...


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

Loader = Callable[..., MultiViewGenerator]


@dataclass(frozen=True)
class RegistryEntry:
    """info: the generator's facts; loader: ``module:function`` called as
    ``loader(source, device=..., dtype=...)`` where source is the registry id or a local folder."""

    info: GeneratorInfo
    loader: str


#: id -> entry. Backends add themselves here (by module path, so nothing heavy is imported).
REGISTRY: dict[str, RegistryEntry] = {}

#: A local model folder names its generator in this file: {"generator": "<registry id>"}.
LOCAL_MARKER = "viewforge_generator.json"


def register(entry: RegistryEntry) -> None:
    REGISTRY[entry.info.id] = entry


def _import(path: str):
    import importlib

    mod, _, name = path.partition(":")
    if mod.startswith("."):
        mod = __package__ + mod
    return getattr(importlib.import_module(mod), name)


#: Modules whose import registers built-in generators (light: their heavy imports are inside functions).
BUILTIN_MODULES = (".zero123pp",)


def builtins() -> dict[str, RegistryEntry]:
    """The registry with the built-in backends registered."""
    import importlib

    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(__package__ + mod)
        except ModuleNotFoundError as exc:  # a backend not in this build
            if exc.name != __package__ + mod:
                raise
    return REGISTRY


def resolve(model: str) -> RegistryEntry:
    """The registry entry for an id, or for a local model folder (its ``viewforge_generator.json``
    names the id)."""
    builtins()
    if model in REGISTRY:
        return REGISTRY[model]
    path = Path(model).expanduser()
    if path.is_dir():
        marker = path / LOCAL_MARKER
        if not marker.is_file():
            raise InputError(f"model folder {path} has no {LOCAL_MARKER}",
                             f"give a registry id ({', '.join(sorted(REGISTRY))}) or a folder saved by Viewforge")
        import json

        gen_id = json.loads(marker.read_text()).get("generator")
        if gen_id not in REGISTRY:
            raise InputError(f"model folder {path} names an unknown generator {gen_id!r}",
                             f"use one of {', '.join(sorted(REGISTRY))}")
        return REGISTRY[gen_id]
    raise InputError(f"unknown model {model!r}: not a generator id and not a folder",
                     f"use one of {', '.join(sorted(REGISTRY))} or a local model folder")


def load_generator(model: str, *, device: str = "auto", **kwargs: Any) -> MultiViewGenerator:
    """Load a generator by registry id or local folder (see :func:`resolve`)."""
    entry = resolve(model)
    return _import(entry.loader)(model, device=device, **kwargs)

