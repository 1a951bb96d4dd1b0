"""numba kernel of engine/mesh/depth.py: the median depth of the splats with each Gaussian's
depth taken where the pixel's ray meets it (imported on first use; compiled once, cached)."""

import numba
import numpy as np
from numba import prange

from ..splat._numba_kernels import ALPHA_MIN, T_MIN, _alpha, _pixel_span, _sigma_cut, _tile_rect

_JIT = dict(nogil=True, cache=True, error_model="numpy")


@numba.njit(parallel=True, **_JIT)
def ray_median_depth(means2d, conics, opacities, radii, prec, pmu, zc, zr, fx, fy, cx, cy, front, offsets, ids,
                     width, height, tile_size, tiles_x, out_depth, out_t):  # pragma: no cover - numba
    """As the splat kernels' median depth (compositing order and alpha exactly as the forward
    pass), but Gaussian g's depth at pixel (px, py) is where the ray d = ((u - cx) / fx,
    (v - cy) / fy, 1) meets it: t* = d^T P mu / d^T P d (P = prec[g], the camera-space inverse
    covariance as (xx, xy, xz, yy, yz, zz); pmu = P mu), moved ``front`` standard deviations of
    the Gaussian along the ray (1 / sqrt(d^T P d)) towards the camera and clamped to
    zc[g] +- zr[g]."""
    n_tiles = offsets.shape[0] - 1
    half = np.float32(0.5)
    for t in prange(n_tiles):
        x0, x1, y0, y1 = _tile_rect(t, tiles_x, tile_size, width, height)
        tw = x1 - x0
        npix = tw * (y1 - y0)
        T = np.ones(npix, dtype=np.float32)
        med = np.full(npix, np.inf, dtype=np.float32)
        done = np.zeros(npix, dtype=np.bool_)
        n_done = 0
        for j in range(offsets[t], offsets[t + 1]):
            if n_done == npix:
                break
            g = ids[j]
            mx, my = means2d[g, 0], means2d[g, 1]
            ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
            op = opacities[g]
            if op < ALPHA_MIN:
                continue
            s_cut = _sigma_cut(op)
            bx0, bx1 = _pixel_span(mx, radii[g, 0], x0, x1)
            by0, by1 = _pixel_span(my, radii[g, 1], y0, y1)
            pxx, pxy, pxz, pyy, pyz, pzz = prec[g, 0], prec[g, 1], prec[g, 2], prec[g, 3], prec[g, 4], prec[g, 5]
            m0, m1, m2 = pmu[g, 0], pmu[g, 1], pmu[g, 2]
            for py in range(by0, by1):
                dy = my - (np.float32(py) + np.float32(0.5))
                b = (py + 0.5 - cy) / fy
                row = (py - y0) * tw - x0
                for px in range(bx0, bx1):
                    p = row + px
                    if done[p]:
                        continue
                    alpha = _alpha(mx - (np.float32(px) + np.float32(0.5)), dy, ca, cb, cc, op, s_cut)
                    if alpha == 0.0:
                        continue
                    next_t = T[p] * (np.float32(1.0) - alpha)
                    crossing = T[p] >= half and (next_t < half or next_t <= T_MIN)
                    if crossing:
                        a = (px + 0.5 - cx) / fx
                        dpd = pxx * a * a + 2.0 * pxy * a * b + 2.0 * pxz * a + pyy * b * b + 2.0 * pyz * b + pzz
                        if dpd > 1e-20:
                            ts = (a * m0 + b * m1 + m2) / dpd - front / np.sqrt(dpd)
                        else:
                            ts = zc[g]
                        med[p] = min(max(ts, zc[g] - zr[g]), zc[g] + zr[g])
                    if next_t <= T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    T[p] = next_t
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * tw + (px - x0)
                out_depth[py, px] = med[p]
                out_t[py, px] = T[p]
