"""Rigid-transform helpers in torch shared by the fit and the pose refinement."""

from __future__ import annotations


def se3_exp(delta):
    """(C, 6) axis-angle + translation -> (C, 4, 4) rigid transforms (Rodrigues, differentiable)."""
    import torch

    w, t = delta[:, :3], delta[:, 3:]
    theta = torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-12)  # (C, 1)
    k = w / theta
    kx = torch.zeros(delta.shape[0], 3, 3, dtype=delta.dtype, device=delta.device)
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=delta.dtype, device=delta.device)
    r = eye + s * kx + (1 - c) * (kx @ kx)
    out = torch.eye(4, dtype=delta.dtype, device=delta.device).repeat(delta.shape[0], 1, 1)
    out[:, :3, :3] = r
    out[:, :3, 3] = t
    return out
