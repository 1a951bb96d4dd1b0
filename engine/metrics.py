"""Image and geometry metrics with the protocol of DESIGN.md.

PSNR/SSIM are computed on images composited on white (held-out views); SSIM is pytorch-msssim's
Gaussian-window SSIM (11 px, sigma 1.5). LPIPS is None unless its weights are installed
(no download at run time).
"""

from __future__ import annotations

import math

import numpy as np


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) image over a white background; returns rgb unchanged when alpha is None."""
    if alpha is None:
        return rgb
    return rgb * alpha[..., None] + (1.0 - alpha[..., None])


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = float(np.mean((np.clip(pred, 0, 1).astype(np.float64) - gt.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM of (H, W, 3) images in [0, 1] (pytorch-msssim, data range 1)."""
    import torch
    from pytorch_msssim import ssim as _ssim

    a = torch.from_numpy(np.clip(pred, 0, 1).astype(np.float32)).permute(2, 0, 1)[None]
    b = torch.from_numpy(gt.astype(np.float32)).permute(2, 0, 1)[None]
    win = 11 if min(a.shape[-2:]) > 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    return float(_ssim(a, b, data_range=1.0, size_average=True, win_size=max(win, 3)))


def lpips(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """LPIPS, or None: its network weights are not shipped and never downloaded at run time."""
    return None


def view_scores(preds, images, masks=None) -> dict[str, float | None]:
    """Mean PSNR/SSIM (and LPIPS of the first view) of renders already on white, ``preds``
    (list of (H, W, 3)), against ``images`` composited on white with their ``masks`` (None: no
    alpha). All None for no views."""
    preds = list(preds)
    if not preds:
        return {"psnr": None, "ssim": None, "lpips": None}
    masks = list(masks) if masks is not None else [None] * len(preds)
    gts = [composite_on_white(img, m) for img, m in zip(images, masks)]
    return {
        "psnr": float(np.mean([psnr(p, g) for p, g in zip(preds, gts)])),
        "ssim": float(np.mean([ssim(p, g) for p, g in zip(preds, gts)])),
        "lpips": lpips(preds[0], gts[0]),
    }
