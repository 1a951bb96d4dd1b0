"""Depth of fitted Gaussians for surface extraction (docs/mesh.md): per pixel, the depth at which
the transmittance first drops below 0.5, with each Gaussian's depth taken where the pixel's ray
meets it (not at its centre)."""

from __future__ import annotations

import numpy as np

from ..cameras import Camera


def ray_median_depth(splats, camera: Camera, front_sigmas: float = 1.0, clamp_sigmas: float = 3.0,
                     tile_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Median depth (H, W) float32 (inf where the transmittance stays above 0.5) and alpha (H, W)
    of the splats at ``camera`` (CPU, no gradients). Gaussian g meets the ray d of a pixel (camera
    frame, d_z = 1) at its peak density t* = d^T P mu / d^T P d (P its inverse covariance); its
    depth there is t* - ``front_sigmas`` / sqrt(d^T P d) (that many standard deviations of the
    Gaussian *along the ray* in front of the peak), clamped to within ``clamp_sigmas`` times its
    largest scale of its centre's depth. A flat Gaussian seen at an angle thus draws a tilted
    plane, not a disc at one depth."""
    import torch

    from ..splat import _numba_kernels as Kn
    from ..splat.project import covariances, project_gaussians, quat_to_rotmat
    from ._numba_depth import ray_median_depth as kernel

    p = splats.as_dict()
    cam = camera.without_distortion()
    with torch.no_grad():
        means = p["means"].detach().cpu().float()
        quats = p["quats"].detach().cpu().float()
        scales = torch.exp(p["scales"].detach().cpu().float())
        opac = torch.sigmoid(p["opacities"].detach().cpu().float()).reshape(-1)
        vm = torch.tensor(cam.world_to_camera, dtype=torch.float32)
        K = torch.tensor(cam.K, dtype=torch.float32)
        proj = project_gaussians(means, covariances(quats, scales), vm[None], K[None], cam.width, cam.height)
    w2c = np.asarray(cam.world_to_camera, dtype=np.float64)
    rot = quat_to_rotmat(quats).double().numpy()  # (N, 3, 3)
    s = np.maximum(scales.double().numpy(), 1e-8 * float(scales.max()) + 1e-12)
    rc = np.einsum("ij,njk->nik", w2c[:3, :3], rot)  # Gaussian axes in the camera frame
    prec_full = np.einsum("nik,nk,njk->nij", rc, 1.0 / (s * s), rc)
    mu = means.double().numpy() @ w2c[:3, :3].T + w2c[:3, 3]
    pmu = np.einsum("nij,nj->ni", prec_full, mu)
    prec = prec_full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    zc = mu[:, 2]
    zr = clamp_sigmas * s.max(axis=1)
    width, height = cam.width, cam.height
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    m2 = proj.means2d[0].numpy()
    dep = proj.depths[0].numpy()
    rad = proj.radii[0].to(torch.int32).numpy()
    order = np.argsort(dep, kind="stable").astype(np.int32)
    offsets, ids = Kn.bin_tiles(m2, rad, order, tile_size, tiles_x, tiles_y)
    out_d = np.empty((height, width), np.float32)
    out_t = np.empty((height, width), np.float32)
    kernel(m2, proj.conics[0].numpy(), opac.numpy(), rad, np.ascontiguousarray(prec), np.ascontiguousarray(pmu),
           zc, zr, float(cam.fx), float(cam.fy), float(cam.cx), float(cam.cy), float(front_sigmas), offsets, ids,
           width, height, tile_size, tiles_x, out_d, out_t)
    return out_d, 1.0 - out_t
