"""Numba kernels of the CPU rasterizer: tile binning, forward and backward compositing.

The compositing rule is gsplat's (``rasterize_to_pixels`` CUDA kernel, classic mode): pixel
centres at (x + 0.5, y + 0.5); for each Gaussian in depth order within the pixel's tile,
``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` with ``d = mean2d - pixel``; skip if sigma < 0;
``alpha = min(0.999, opacity * exp(-sigma))``; skip if alpha < 1/255; stop *before* a Gaussian
that would bring the transmittance to <= 1e-4. The backward pass walks each pixel's list from
its last contributing Gaussian to the front, as gsplat's does, accumulating per-Gaussian
gradients in per-thread buffers (no atomics on the CPU) that are summed afterwards.

Imported lazily (numba compiles on first use and caches to __pycache__).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

ALPHA_MIN = np.float32(1.0 / 255.0)
ALPHA_MAX = np.float32(0.999)
T_MIN = np.float32(1e-4)

_JIT = dict(nogil=True, cache=True, error_model="numpy", fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})


@numba.njit(**_JIT)
def bin_tiles(means2d, radii, order, tile_size, tiles_x, tiles_y):
    """Per-tile lists of Gaussian ids in depth order, for one camera.

    means2d (N, 2) f32, radii (N, 2) i32, order (N,) Gaussian ids sorted by depth.
    Returns offsets (tiles_x * tiles_y + 1,) i64 and ids (M,) i32, tiles row-major.
    """
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    n = order.shape[0]
    rect = np.empty((n, 4), dtype=np.int32)
    for k in range(n):
        g = order[k]
        rx, ry = radii[g, 0], radii[g, 1]
        if rx <= 0 or ry <= 0:
            rect[k, 0] = 0
            rect[k, 1] = 0
            rect[k, 2] = 0
            rect[k, 3] = 0
            continue
        mx = means2d[g, 0] / tile_size
        my = means2d[g, 1] / tile_size
        tx0 = min(max(np.int32(np.floor(mx - rx / tile_size)), 0), tiles_x)
        tx1 = min(max(np.int32(np.ceil(mx + rx / tile_size)), 0), tiles_x)
        ty0 = min(max(np.int32(np.floor(my - ry / tile_size)), 0), tiles_y)
        ty1 = min(max(np.int32(np.ceil(my + ry / tile_size)), 0), tiles_y)
        rect[k, 0] = tx0
        rect[k, 1] = tx1
        rect[k, 2] = ty0
        rect[k, 3] = ty1
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                counts[ty * tiles_x + tx + 1] += 1
    for i in range(n_tiles):
        counts[i + 1] += counts[i]
    ids = np.empty(counts[n_tiles], dtype=np.int32)
    fill = counts[:n_tiles].copy()
    for k in range(n):
        g = order[k]
        for ty in range(rect[k, 2], rect[k, 3]):
            for tx in range(rect[k, 0], rect[k, 1]):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return counts, ids


@numba.njit(inline="always", **_JIT)
def _tile_rect(t, tiles_x, tile_size, width, height):
    """Pixel rectangle [x0, x1) x [y0, y1) of tile ``t`` (row-major), clipped to the image."""
    x0 = (t % tiles_x) * tile_size
    y0 = (t // tiles_x) * tile_size
    return x0, min(x0 + tile_size, width), y0, min(y0 + tile_size, height)


@numba.njit(inline="always", **_JIT)
def _sigma_cut(op):
    """Beyond this sigma, alpha = op exp(-sigma) < 1/255 for sure (a small margin keeps the exact
    test authoritative): forward and backward skip exp there, and must use the same cut."""
    return np.log(op * np.float32(255.0)) + np.float32(1e-3)


@numba.njit(inline="always", **_JIT)
def _alpha(dx, dy, ca, cb, cc, op, s_cut):
    """A Gaussian's alpha at a pixel (d = mean2d - pixel centre), or 0 where gsplat skips it
    (sigma < 0, beyond the cut, alpha < 1/255). Forward and median depth; the backward pass
    needs the intermediate values and spells it out."""
    sigma = np.float32(0.5) * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    if sigma < 0.0 or sigma > s_cut:
        return np.float32(0.0)
    alpha = min(ALPHA_MAX, op * np.exp(-sigma))
    if alpha < ALPHA_MIN:
        return np.float32(0.0)
    return alpha


@numba.njit(inline="always", **_JIT)
def _pixel_span(m, r, lo, hi):
    """Pixels [a, b) of [lo, hi) whose centres (p + 0.5) lie within [m - r, m + r]."""
    a = max(lo, np.int32(np.ceil(m - r - np.float32(0.5))))
    b = min(hi, np.int32(np.floor(m + r - np.float32(0.5))) + 1)
    return a, b


@numba.njit(parallel=True, **_JIT)
def forward(means2d, conics, colors, opacities, radii, offsets, ids, bg, width, height, tile_size, tiles_x,
            out_color, out_t, out_last):
    """Composite one camera. means2d (N,2), conics (N,3), colors (N,D), opacities (N,) f32,
    radii (N,2) i32, bg (D,) f32. Writes out_color (H,W,D), out_t (H,W) final transmittance and
    out_last (H,W) i32 = one past the position (in ``ids``) of the last contributing Gaussian.

    Gaussian-major within a tile: each Gaussian visits only the pixels of its per-axis radius box
    (outside it, alpha < 1/255 is guaranteed since sigma >= dx^2 / (2 cov_xx) > 0.5 * 3.33^2), so
    the result equals the pixel-major loop of gsplat exactly.
    """
    d = colors.shape[1]
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        x0, x1, y0, y1 = _tile_rect(t, tiles_x, tile_size, width, height)
        tw = x1 - x0
        npix = tw * (y1 - y0)
        T = np.ones(npix, dtype=np.float32)
        acc = np.zeros((npix, d), dtype=np.float32)
        last = np.full(npix, offsets[t], dtype=np.int32)
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
            for py in range(by0, by1):
                dy = my - (np.float32(py) + np.float32(0.5))
                row = (py - y0) * tw - x0
                for px in range(bx0, bx1):
                    p = row + px
                    if done[p]:
                        continue
                    alpha = _alpha(mx - (np.float32(px) + np.float32(0.5)), dy, ca, cb, cc, op, s_cut)
                    if alpha == 0.0:
                        continue
                    next_t = T[p] * (np.float32(1.0) - alpha)
                    if next_t <= T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    w = alpha * T[p]
                    for k in range(d):
                        acc[p, k] += colors[g, k] * w
                    T[p] = next_t
                    last[p] = j + 1
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * tw + (px - x0)
                for k in range(d):
                    out_color[py, px, k] = acc[p, k] + T[p] * bg[k]
                out_t[py, px] = T[p]
                out_last[py, px] = last[p]


@numba.njit(parallel=True, **_JIT)
def backward(means2d, conics, colors, opacities, radii, offsets, ids, bg, width, height, tile_size, tiles_x,
             out_t, out_last, g_color, g_alpha,
             gb_means2d, gb_conics, gb_colors, gb_opac, gb_bg):
    """Gradients for one camera. g_color (H,W,D), g_alpha (H,W) are dL/d(rendered colour/alpha).
    Walks each tile's list back to front (per pixel, only Gaussians before its ``out_last``),
    accumulating into per-thread buffers gb_* (threads, N, ...) and gb_bg (threads, D)."""
    d = colors.shape[1]
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        tid = numba.get_thread_id()
        x0, x1, y0, y1 = _tile_rect(t, tiles_x, tile_size, width, height)
        tw = x1 - x0
        npix = tw * (y1 - y0)
        T = np.empty(npix, dtype=np.float32)
        t_fin = np.empty(npix, dtype=np.float32)
        last = np.empty(npix, dtype=np.int32)
        extra = np.empty(npix, dtype=np.float32)  # g_alpha - bg . g_color
        gc = np.empty((npix, d), dtype=np.float32)
        buf = np.zeros((npix, d), dtype=np.float32)
        max_last = offsets[t]
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * tw + (px - x0)
                T[p] = out_t[py, px]
                t_fin[p] = out_t[py, px]
                last[p] = out_last[py, px]
                max_last = max(max_last, last[p])
                s = np.float32(0.0)
                for k in range(d):
                    gc[p, k] = g_color[py, px, k]
                    s += bg[k] * gc[p, k]
                    gb_bg[tid, k] += t_fin[p] * gc[p, k]
                extra[p] = g_alpha[py, px] - s
        for j in range(max_last - 1, offsets[t] - 1, -1):
            g = ids[j]
            mx, my = means2d[g, 0], means2d[g, 1]
            ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
            op = opacities[g]
            if op < ALPHA_MIN:
                continue
            s_cut = _sigma_cut(op)
            bx0, bx1 = _pixel_span(mx, radii[g, 0], x0, x1)
            by0, by1 = _pixel_span(my, radii[g, 1], y0, y1)
            v_mx = np.float32(0.0)
            v_my = np.float32(0.0)
            v_ca = np.float32(0.0)
            v_cb = np.float32(0.0)
            v_cc = np.float32(0.0)
            v_op = np.float32(0.0)
            touched = False
            for py in range(by0, by1):
                dy = my - (np.float32(py) + np.float32(0.5))
                row = (py - y0) * tw - x0
                for px in range(bx0, bx1):
                    p = row + px
                    if j >= last[p]:
                        continue
                    dx = mx - (np.float32(px) + np.float32(0.5))
                    sigma = np.float32(0.5) * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < 0.0 or sigma > s_cut:
                        continue
                    vis = np.exp(-sigma)
                    raw = op * vis
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    touched = True
                    ra = np.float32(1.0) / (np.float32(1.0) - alpha)
                    T[p] = T[p] * ra  # transmittance in front of this Gaussian
                    w = alpha * T[p]
                    v_alpha = t_fin[p] * ra * extra[p]
                    for k in range(d):
                        gb_colors[tid, g, k] += w * gc[p, k]
                        v_alpha += (colors[g, k] * T[p] - buf[p, k] * ra) * gc[p, k]
                        buf[p, k] += colors[g, k] * w
                    if raw <= ALPHA_MAX:
                        v_sigma = -raw * v_alpha
                        v_ca += np.float32(0.5) * v_sigma * dx * dx
                        v_cb += v_sigma * dx * dy
                        v_cc += np.float32(0.5) * v_sigma * dy * dy
                        v_mx += v_sigma * (ca * dx + cb * dy)
                        v_my += v_sigma * (cb * dx + cc * dy)
                        v_op += vis * v_alpha
            if touched:
                gb_means2d[tid, g, 0] += v_mx
                gb_means2d[tid, g, 1] += v_my
                gb_conics[tid, g, 0] += v_ca
                gb_conics[tid, g, 1] += v_cb
                gb_conics[tid, g, 2] += v_cc
                gb_opac[tid, g] += v_op


def num_threads() -> int:
    return int(numba.get_num_threads())


@numba.njit(parallel=True, **_JIT)
def median_depth(means2d, conics, opacities, radii, depths, offsets, ids, width, height, tile_size, tiles_x,
                 out_depth, out_t):
    """Median depth of one camera: per pixel, the depth of the Gaussian at which the
    transmittance first drops below 0.5 (inf where it never does), compositing exactly as
    :func:`forward`. Unlike the alpha-weighted mean ("ED"), it is not pulled behind the surface
    by the semi-transparent Gaussians there, so it suits surface extraction. out_t: final
    transmittance."""
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
            for py in range(by0, by1):
                dy = my - (np.float32(py) + np.float32(0.5))
                row = (py - y0) * tw - x0
                for px in range(bx0, bx1):
                    p = row + px
                    if done[p]:
                        continue
                    alpha = _alpha(mx - (np.float32(px) + np.float32(0.5)), dy, ca, cb, cc, op, s_cut)
                    if alpha == 0.0:
                        continue
                    next_t = T[p] * (np.float32(1.0) - alpha)
                    if next_t <= T_MIN:
                        if T[p] >= half:
                            med[p] = depths[g]
                        done[p] = True
                        n_done += 1
                        continue
                    if T[p] >= half and next_t < half:
                        med[p] = depths[g]
                    T[p] = next_t
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * tw + (px - x0)
                out_depth[py, px] = med[p]
                out_t[py, px] = T[p]
