"""The views a sampler's fits must honour (:class:`Anchor`): the condition image at the
generator's reference camera by default, or photos at their own cameras (engine/complete.py).
Used by the sampler (engine/sampling/aware.py) and by RVC (engine/sampling/rvc.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cameras import Camera
from ..errors import InputError


@dataclass(frozen=True, eq=False)
class Anchor:
    """A view the sampler's fits must honour: (H, W, 4) straight RGBA ``rgba`` at ``camera``
    (any size; the camera's size must match), visited ``weight`` times as often as a generated
    view (None: the config's ``reference_weight``). name: for messages and RVC reports."""

    rgba: np.ndarray
    camera: Camera
    weight: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        a = np.asarray(self.rgba)
        if a.ndim != 3 or a.shape[2] != 4 or a.shape[:2] != (self.camera.height, self.camera.width):
            raise InputError(f"anchor {self.name or ''} has shape {a.shape} for a {self.camera.width}x"
                             f"{self.camera.height} camera", "give (H, W, 4) RGBA at the camera's size")
