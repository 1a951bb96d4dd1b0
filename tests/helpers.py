"""Helpers shared by several test modules (synthetic posed sets, meshes and splats); no tests here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from viewforge.engine.cameras import Camera, look_at
from viewforge.engine.io.posed import write_posed_set
from viewforge.engine.io.types import Mesh, PosedSet
from viewforge.engine.splat.model import Splats

#: Small enough that a fit runs in a second or two on one CPU core.
TINY = {"resolution": 32, "iterations": 30, "device": "cpu"}


def sphere_posed_set(out_dir: Path, n: int = 8, size: int = 32, radius: float = 0.6, centre=(0.0, 0.0, 0.0)) -> Path:
    """A posed set of a coloured sphere (ray-traced analytically: RGBA, alpha = coverage) seen
    from ``n`` cameras on a ring at 30 degrees elevation; returns the transforms.json path."""
    centre = np.asarray(centre, float)
    cams, images, masks = [], [], []
    f = size / (2 * math.tan(math.radians(40) / 2))
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = centre + 3.0 * np.array([math.cos(a) * math.cos(0.5), math.sin(a) * math.cos(0.5), math.sin(0.5)])
        cam = Camera(f, f, size / 2, size / 2, size, size, look_at(eye, centre), name=f"cam{i}")
        v, u = np.mgrid[0:size, 0:size] + 0.5
        d_cam = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
        d = d_cam @ cam.R  # camera -> world directions (rows)
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        oc = eye - centre
        b = d @ oc
        disc = b * b - (oc @ oc - radius * radius)
        hit = disc > 0
        t = -b - np.sqrt(np.maximum(disc, 0))
        p = eye + t[..., None] * d
        nrm = (p - centre) / radius
        rgb = np.clip(0.5 + 0.5 * nrm, 0, 1) * hit[..., None]
        cams.append(cam)
        images.append(rgb.astype(np.float32))
        masks.append(hit.astype(np.float32))
    return write_posed_set(PosedSet(cams, images, masks, [c.name for c in cams]), out_dir) / "transforms.json"


def sphere_mesh(subdivisions: int = 3, radius: float = 1.0) -> Mesh:
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(s.vertices, s.faces)


def sphere_colour(points: np.ndarray) -> np.ndarray:
    """A smooth colour field on the unit sphere (what the 'photos' show)."""
    return np.clip(0.5 + 0.45 * np.stack([points[:, 0], np.sin(3 * points[:, 1]), points[:, 2] * points[:, 0]], 1), 0, 1)


def sphere_splats(n: int = 4000, seed: int = 0) -> Splats:
    """Flat, opaque Gaussians tiling the unit sphere, coloured by :func:`sphere_colour`."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    # flat discs: the smallest axis (z of the local frame) along the normal
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    axis = torch.cross(z, d, dim=-1)
    s = axis.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    angle = torch.atan2(s[:, 0], (z * d).sum(-1))
    q = torch.cat([torch.cos(angle / 2)[:, None], axis / s * torch.sin(angle / 2)[:, None]], -1)
    rgb = torch.from_numpy(sphere_colour(d.numpy().astype(np.float64))).float()
    return Splats(
        means=d.clone(),
        scales=torch.log(torch.tensor([0.05, 0.05, 0.005])).expand(n, 3).clone(),
        quats=q,
        opacities=torch.full((n,), 4.0),
        sh0=((rgb - 0.5) / 0.28209479177387814)[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )
