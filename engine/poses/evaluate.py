"""Pose perturbation and pose error, shared by tests and benchmarks."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..cameras import Camera, rotation_angle_deg


def perturb_cameras(cameras: Sequence[Camera], degrees: float, fraction: float, seed: int = 0) -> list[Camera]:
    """Each camera rotated by ``degrees`` about a random axis and translated by ``fraction`` of its
    distance from the world origin in a random direction (in camera coordinates: the correction
    ``[R t; 0 1]`` is applied on the left of world-to-camera, as the fit's pose corrections are)."""
    rng = np.random.default_rng(seed)
    out = []
    for cam in cameras:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        direction = rng.normal(size=3)
        theta = math.radians(degrees)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        delta = np.eye(4)
        delta[:3, :3] = np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)
        delta[:3, 3] = direction / np.linalg.norm(direction) * fraction * np.linalg.norm(cam.center)
        out.append(cam.with_pose(delta @ cam.world_to_camera))
    return out


def rotation_errors(estimated: Sequence[Camera], reference: Sequence[Camera]) -> tuple[float, float]:
    """Median rotation error in degrees: absolute, and after the best global rotation (a fit fixes
    the world frame only up to a similarity)."""
    u, _, vt = np.linalg.svd(sum(a.R.T @ b.R for a, b in zip(estimated, reference)))
    g = u @ vt
    if np.linalg.det(g) < 0:
        u[:, -1] *= -1
        g = u @ vt
    return (
        float(np.median([rotation_angle_deg(a.R, b.R) for a, b in zip(estimated, reference)])),
        float(np.median([rotation_angle_deg(a.R @ g, b.R) for a, b in zip(estimated, reference)])),
    )
