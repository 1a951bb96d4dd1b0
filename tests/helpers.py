"""Helpers shared by several test modules (synthetic posed sets, meshes and splats); no tests here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from viewforge.engine.cameras import Camera, look_at
from viewforge.engine.io.posed import write_posed_set
from viewforge.engine.io.types import Mesh, PosedSet
from viewforge.engine.splat.fit import render_splats
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


# The textured spheres scene of the pose tests (SIFT finds enough on it)

def textured_ring(n: int, size: int = 256, radius: float = 3.5, fov_deg: float = 50.0) -> list[Camera]:
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    cams = []
    for i in range(n):
        az = 2 * math.pi * i / n
        el = math.radians((20.0, 40.0)[i % 2])
        eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        cams.append(Camera(f, f, size / 2, size / 2, size, size, look_at(eye, (0, 0, 0)), name=f"v{i:02d}"))
    return cams


# spheres (centre, radius) of the textured test scene
TEXTURED_SPHERES = [((0.0, 0.0, 0.0), 1.0), ((0.9, 0.7, 0.5), 0.45), ((-0.8, -0.6, 0.6), 0.4), ((0.2, -0.9, -0.6), 0.35)]


def sphere_texture(points: np.ndarray, seed: int = 3) -> np.ndarray:
    """Procedural 3D colour texture: high-contrast luminance from two octaves of trilinear value
    noise on a lattice (SIFT works on grey levels), tinted by a coarse colour noise."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(seed)

    def noise(cells: int) -> np.ndarray:
        grid = rng.random((cells, cells, cells))
        return map_coordinates(grid, ((points + 1.6) / 3.2 * (cells - 1)).T, order=1, mode="nearest")

    lum = np.clip((0.6 * noise(40) + 0.4 * noise(90) - 0.5) * 4.0 + 0.5, 0.0, 1.0)
    tint = 0.5 + 0.5 * np.stack([noise(6), noise(6), noise(6)], 1)
    return np.clip(lum[:, None] * tint, 0, 1)


def render_spheres(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the spheres (nearest hit), albedo only: (H, W, 3) image and (H, W) mask."""
    ys, xs = np.mgrid[0 : cam.height, 0 : cam.width] + 0.5
    d_cam = np.stack([(xs - cam.cx) / cam.fx, (ys - cam.cy) / cam.fy, np.ones_like(xs)], -1).reshape(-1, 3)
    d = d_cam @ cam.R  # camera -> world directions (R^T d)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = cam.center
    best = np.full(len(d), np.inf)
    for centre, r in TEXTURED_SPHERES:
        oc = o - np.asarray(centre)
        b = d @ oc
        disc = b * b - (oc @ oc - r * r)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < best)
        best[hit] = t[hit]
    mask = np.isfinite(best)
    img = np.zeros((len(d), 3))
    img[mask] = sphere_texture(o + d[mask] * best[mask, None])
    return img.reshape(cam.height, cam.width, 3).astype(np.float32), mask.reshape(cam.height, cam.width).astype(np.float32)


def front_cameras(azimuths=(-40.0, 0.0, 40.0), size: int = 256, radius: float = 4.0, fov_deg: float = 40.0) -> list[Camera]:
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    cams = []
    for i, az in enumerate(azimuths):
        a, el = math.radians(az - 90.0), math.radians((15.0, 30.0)[i % 2])
        eye = radius * np.array([math.cos(el) * math.cos(a), math.cos(el) * math.sin(a), math.sin(el)])
        cams.append(Camera(f, f, size / 2, size / 2, size, size, look_at(eye, (0, 0, 0)), name=f"p{i}"))
    return cams


# Splats and their renders (the fit tests)

def ground_truth_splats(n=400, seed=0) -> Splats:
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


def splat_rig(n, radius=3.0, elev_deg=(25.0, -10.0), offset=0.0, size=40):
    cams = []
    f = size * 1.3
    for i in range(n):
        az = 2 * math.pi * i / n + offset
        el = math.radians(elev_deg[i % 2])
        eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        cams.append(Camera(f, f, size / 2, size / 2, size, size, look_at(eye, (0, 0, 0)), name=f"v{i:02d}"))
    return cams


def splat_posed(splats: Splats, cams: list[Camera]) -> PosedSet:
    outs = render_splats(splats, cams, background=(0.0, 0.0, 0.0), device="cpu")
    imgs = [np.clip(o["rgb"] / np.maximum(o["alpha"][..., None], 1e-6), 0, 1) * (o["alpha"][..., None] > 1e-6) for o in outs]
    return PosedSet(cams, [i.astype(np.float32) for i in imgs], [o["alpha"].astype(np.float32) for o in outs])
