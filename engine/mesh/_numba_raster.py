"""numba kernel of engine/mesh/raster.py (imported on first use: compiling costs ~1 s, cached)."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def raster(xy, z, faces, height, width, eps, face_id, bary, depth):  # pragma: no cover - numba
    for f in range(faces.shape[0]):
        a = faces[f, 0]
        b = faces[f, 1]
        c = faces[f, 2]
        za = z[a]
        zb = z[b]
        zc = z[c]
        if za <= 1e-6 or zb <= 1e-6 or zc <= 1e-6:
            continue
        x0 = xy[a, 0]
        y0 = xy[a, 1]
        x1 = xy[b, 0]
        y1 = xy[b, 1]
        x2 = xy[c, 0]
        y2 = xy[c, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        lo_x = min(x0, min(x1, x2))
        hi_x = max(x0, max(x1, x2))
        lo_y = min(y0, min(y1, y2))
        hi_y = max(y0, max(y1, y2))
        i0 = max(int(np.ceil(lo_x - 0.5 - eps)), 0)
        i1 = min(int(np.floor(hi_x - 0.5 + eps)), width - 1)
        j0 = max(int(np.ceil(lo_y - 0.5 - eps)), 0)
        j1 = min(int(np.floor(hi_y - 0.5 + eps)), height - 1)
        if i0 > i1 or j0 > j1:
            continue
        # edge tolerance in barycentric units: eps pixels over the triangle's size
        tol = eps * 2.0 / max(hi_x - lo_x + hi_y - lo_y, 1e-12)
        inv = 1.0 / area
        for j in range(j0, j1 + 1):
            py = j + 0.5
            for i in range(i0, i1 + 1):
                px = i + 0.5
                w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) * inv
                w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) * inv
                w2 = 1.0 - w0 - w1
                if w0 < -tol or w1 < -tol or w2 < -tol:
                    continue
                w0 = max(w0, 0.0)
                w1 = max(w1, 0.0)
                w2 = max(w2, 0.0)
                s = w0 + w1 + w2
                q0 = w0 / (s * za)
                q1 = w1 / (s * zb)
                q2 = w2 / (s * zc)
                iz = q0 + q1 + q2
                zz = 1.0 / iz
                if zz < depth[j, i]:
                    depth[j, i] = zz
                    face_id[j, i] = f
                    bary[j, i, 0] = q0 * zz
                    bary[j, i, 1] = q1 * zz
                    bary[j, i, 2] = q2 * zz
