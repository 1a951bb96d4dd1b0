"""Photo poses refined by silhouette coherence against a reference frame (docs/poses.md section 4).

For photos that share no features (flat, unlit objects), completion has another consistent set of
views: the reference photo plus the generated views, which the generator drew relative to the
reference photo (so they carry the reference camera's pose error, and nobody else's). This module
builds a smooth visual-hull field from that set and moves each other photo so that its mask's
outline rays touch the hull (the silhouette coherence of Hernandez, Schmitt and Cipolla 2007, in a
least-squares form):

- **Per view** a signed distance ``s_v(u)`` (pixels, positive outside) to the mask outline at
  ``threshold``, computed on the alpha upsampled ``supersample`` times (sub-pixel).
- **Hull field** on a ``grid``^3 lattice around the object centre:
  ``F(x) = max_v s_v(pi_v(x)) * z_v(x) / f_v`` (world units; <= 0 inside every cone, so inside
  the visual hull; about the distance to the hull outside it), read trilinearly.
- **Residual** of photo j at a trial pose, for each of ``outline_points`` sub-pixel outline points
  ``u_k`` of its mask: the ray ``C + t d_k`` sampled at ``ray_samples`` depths through the grid,
  ``r_k = min_t F(C + t d_k) * f / t*`` (pixels at the depth of the minimum): > 0 where the mask
  sticks out of the hull's projection (the ray misses the hull: strong evidence, weight 1),
  < 0 where the hull reaches beyond the outline (the visual hull is larger than the object
  between the views: weight ``inside_weight``).
- **Stage 1: the views' frame against the reference photo** (``fit_frame``). Completion places
  the rig from the unrefined cameras (the object centre ``O`` is triangulated from all photos'
  rays), so the views may sit turned about the reference centre and, where the generator drew
  them for another crop, zoomed, relative to the reference photo. The reference photo's outline
  against the hull of the views alone: its rotation about its centre ``Q_0`` (3) and the hull's
  scale ``z`` about ``O`` (1; the reference camera moved to ``O + (C_ref - O) / z``). Accepted
  when the cost drops by ``min_gain``: the views' frame is then ``x' = B (z (x - O) + O - C_ref) +
  C_ref`` with ``B = Q_0^T`` (the reference stays where it is). A scale about ``C_ref`` (the
  object's depth along the reference ray) is invisible to the reference photo; silhouettes of the
  other photos hardly see it either (their rotations absorb it), so it is left (measured: fitting
  it, or triangulating it from the refined photos' centroid rays, made things worse).
- **Stage 2: the other photos** against the hull of the reference mask and the (moved) views.
  Photo j's pose: ``R_j' = R_j Q_j^T A^T``, ``C_j' = A (C_j - C_ref) + C_ref``: ``Q_j`` turns the
  photo about its own centre (its own error) and ``A``, shared by all photos (``move_centres``),
  turns the set about the reference centre (the reference camera's error, which the generated
  frame carries: in that frame the true relative geometry is the scene's turned by A, so photo
  j's centre moves too). Rotation vectors with Gaussian priors (``prior_deg`` per rotation,
  ``prior_px`` pixels per sigma per outline point); scipy ``least_squares`` (Huber, ``huber_px``)
  from the best start of a coarse search over each ``Q_j``'s pan and tilt.
- **Acceptance**: photo j moves only where its robust outline cost drops by ``min_gain`` (share)
  and its rotation changes by less than ``max_step_deg``; the views' frame moves only when some
  photo moves.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..cameras import Camera, rotation_angle_deg
from ..images import mask_signed_distance
from ..progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SilhouetteConfig:
    """Settings of :func:`refine_by_silhouettes` (module docstring for the math).

    grid: hull field lattice per side (default 96). supersample: mask upsampling for the distance
    fields (4). threshold: mask level of the outline (0.5). outline_points: outline samples per
    photo (300). ray_samples: depths per outline ray (80). inside_weight: weight of outline rays
    that enter the hull (0.5). move_centres: estimate the shared frame rotation about the
    reference centre (default True). fit_frame: stage 1, the views' frame against the reference
    photo (default True). prior_deg, prior_px: the rotations' prior (3 degrees, 1 px per outline
    point per sigma; 0.2 and 0.5 measured slightly worse on bench/sparse.py's Duck). huber_px: robust loss scale (1.5 px). coarse_deg, coarse_step_deg:
    the coarse search over each photo's tilt/pan (+-6 degrees, step 2). min_gain: the cost drop a
    photo needs to move (0.2). max_step_deg: largest accepted rotation change (10).
    """

    grid: int = 96
    supersample: int = 4
    threshold: float = 0.5
    outline_points: int = 300
    ray_samples: int = 80
    inside_weight: float = 0.5
    move_centres: bool = True
    fit_frame: bool = True
    prior_deg: float = 3.0
    prior_px: float = 1.0
    huber_px: float = 1.5
    coarse_deg: float = 6.0
    coarse_step_deg: float = 2.0
    min_gain: float = 0.2
    max_step_deg: float = 10.0


@dataclass
class SilhouetteResult:
    """cameras: the photos' cameras (input order; moved where ``refined``). cost_before/after:
    robust mean outline residual (pixels) per photo at the input / final pose (None for photos
    not refined: the reference and the ones not asked). frame_deg: the shared rotation A's angle.
    frame_moved: whether the views' frame moved (only when some photo moved); frame_cameras: the
    views' cameras in the result's frame; frame_rotation (B), frame_zoom (z), frame_cost (the
    reference outline cost before / after stage 1): module docstring. steps_deg: each asked
    photo's rotation change at the solution (accepted or not). seconds, note: for logs."""

    cameras: list[Camera]
    refined: list[bool]
    cost_before: list[float | None]
    cost_after: list[float | None]
    frame_deg: float = 0.0
    seconds: float = 0.0
    note: str = ""
    steps_deg: list[float] = field(default_factory=list)
    frame_cameras: list[Camera] = field(default_factory=list)
    frame_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    frame_moved: bool = False
    frame_cost: tuple[float, float] | None = None
    frame_zoom: float = 1.0


# ---------------------------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------------------------


def _sample_sdf(sdf: np.ndarray, s: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear read of a :func:`~viewforge.engine.images.mask_signed_distance` field at
    continuous pixel coordinates (original image);
    outside the image: the border value plus the distance beyond it."""
    from scipy.ndimage import map_coordinates

    h, w = sdf.shape
    x = u * s - 0.5
    y = v * s - 0.5
    xc = np.clip(x, 0, w - 1)
    yc = np.clip(y, 0, h - 1)
    val = map_coordinates(sdf, [yc.ravel(), xc.ravel()], order=1, mode="nearest").reshape(x.shape)
    beyond = np.hypot(x - xc, y - yc) / s
    return val + beyond


@dataclass
class HullField:
    """``values[i, j, k]`` = F at ``origin + step * (i, j, k)`` (world units, module docstring)."""

    origin: np.ndarray
    step: float
    values: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        g = (np.asarray(points, np.float64) - self.origin) / self.step
        flat = g.reshape(-1, 3).T
        out = map_coordinates(self.values, flat, order=1, mode="constant", cval=float(self.values.max()))
        return out.reshape(g.shape[:-1])


def hull_field(cameras: Sequence[Camera], masks: Sequence[np.ndarray], centre: np.ndarray, half: float,
               grid: int = 96, threshold: float = 0.5, supersample: int = 4) -> HullField:
    """The hull field ``F`` of ``masks`` at ``cameras`` on a cube of half side ``half`` around ``centre``."""
    centre = np.asarray(centre, np.float64)
    step = 2.0 * half / (grid - 1)
    origin = centre - half
    axis = np.arange(grid) * step
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + origin
    f = np.full(len(pts), -np.inf)
    for cam, m in zip(cameras, masks):
        sdf = mask_signed_distance(m, threshold, supersample)
        pc = pts @ cam.R.T + cam.t
        z = pc[:, 2]
        ok = z > 1e-6
        zz = np.where(ok, z, 1.0)
        u = cam.fx * pc[:, 0] / zz + cam.cx
        v = cam.fy * pc[:, 1] / zz + cam.cy
        d = _sample_sdf(sdf, supersample, u, v) * zz / cam.fx
        d = np.where(ok, d, 10.0 * half)
        f = np.maximum(f, d)
    return HullField(origin, step, f.reshape(grid, grid, grid).astype(np.float32))


def outline_points(alpha: np.ndarray, n: int, threshold: float = 0.5) -> np.ndarray:
    """(<= n, 2) sub-pixel points (continuous (u, v)) spread evenly along the mask's outlines."""
    from skimage.measure import find_contours

    a = np.pad(np.asarray(alpha, np.float64), 1)  # closed contours at the image border
    cs = [c for c in find_contours(a, threshold) if len(c) >= 8]
    if not cs:
        return np.zeros((0, 2))
    pts = np.concatenate(cs, 0)
    seg = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    take = np.searchsorted(seg, np.linspace(0, seg[-1], min(n, len(pts)), endpoint=False))
    p = pts[np.clip(take, 0, len(pts) - 1)]
    return np.stack([p[:, 1] - 1 + 0.5, p[:, 0] - 1 + 0.5], 1)  # rows/cols (padded) -> continuous u, v


# ---------------------------------------------------------------------------------------------
# Poses
# ---------------------------------------------------------------------------------------------


def _rotvec(w: np.ndarray) -> np.ndarray:
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3)
    k = np.asarray(w) / th
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * kx + (1 - math.cos(th)) * (kx @ kx)


def _posed(cam: Camera, q: np.ndarray, a: np.ndarray, c_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R', C') of ``cam`` turned by ``q`` about its centre, then by ``a`` about ``c_ref``."""
    rq, ra = _rotvec(q), _rotvec(a)
    r = cam.R @ rq.T @ ra.T
    c = ra @ (cam.center - c_ref) + c_ref
    return r, c


def _rotlog(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_rotvec()


def _frame_map(r: np.ndarray, c: np.ndarray, b: np.ndarray, c_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pose (R, C) of the views' frame in the corrected frame: ``x' = B (x - C_ref) + C_ref``."""
    return r @ b.T, b @ (c - c_ref) + c_ref


def _with(cam: Camera, r: np.ndarray, c: np.ndarray) -> Camera:
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = -r @ c
    return cam.with_pose(m)


def frame_move(cam: Camera, rotation: np.ndarray, zoom: float, centre: np.ndarray, pivot: np.ndarray) -> Camera:
    """A camera of the views' frame moved by stage 1's correction (module docstring): scaled by
    ``zoom`` about ``centre`` (O), then ``x' = B (x - C_ref) + C_ref`` with ``B`` = ``rotation``
    and ``C_ref`` = ``pivot`` (the result's ``frame_rotation`` / ``frame_zoom``; completion moves
    the rig's reference camera with it)."""
    zoomed = centre + zoom * (cam.center - centre)
    return _with(cam, *_frame_map(cam.R, zoomed, rotation, pivot))


class _Photo:
    """One photo's outline rays (camera frame) and its residuals against a field."""

    def __init__(self, cam: Camera, alpha: np.ndarray, field_: HullField, centre: np.ndarray, half: float,
                 cfg: SilhouetteConfig):
        self.cam = cam
        self.field = field_
        self.cfg = cfg
        uv = outline_points(alpha, cfg.outline_points, cfg.threshold)
        d = np.stack([(uv[:, 0] - cam.cx) / cam.fx, (uv[:, 1] - cam.cy) / cam.fy, np.ones(len(uv))], 1)
        self.dirs_cam = d / np.linalg.norm(d, axis=1, keepdims=True)
        dist = float(np.linalg.norm(cam.center - centre))
        reach = half * math.sqrt(3.0)
        self.ts = np.linspace(max(dist - reach, 1e-3), dist + reach, cfg.ray_samples)

    def residuals(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        dirs = self.dirs_cam @ r  # rows: R^T d_cam
        pts = c + dirs[:, None, :] * self.ts[None, :, None]
        vals = self.field(pts)  # (K, T)
        i = np.argmin(vals, 1)
        m = vals[np.arange(len(vals)), i]
        t = self.ts[i] * np.abs(self.dirs_cam[:, 2])  # depth of the minimum
        px = m * self.cam.fx / np.maximum(t, 1e-6)
        return np.where(px > 0, px, self.cfg.inside_weight * px)

    def cost(self, r: np.ndarray, c: np.ndarray) -> float:
        e = np.abs(self.residuals(r, c))
        d = self.cfg.huber_px
        return float(np.mean(np.where(e <= d, 0.5 * e * e / d, e - 0.5 * d)))


def _coarse(p: "_Photo", c_ref: np.ndarray, a: np.ndarray, cfg: SilhouetteConfig) -> tuple[np.ndarray, float]:
    """The best pan/tilt (about the camera's x and y axes) of photo ``p`` on the coarse grid, the
    frame rotation ``a`` held: (world rotation vector, cost)."""
    z = np.zeros(3)
    best, arg = p.cost(*_posed(p.cam, z, a, c_ref)), z
    g = np.arange(-cfg.coarse_deg, cfg.coarse_deg + 1e-9, cfg.coarse_step_deg)
    for ax in g:
        for ay in g:
            q = p.cam.R.T @ np.radians([ax, ay, 0.0])  # camera axes -> world rotation vector
            cst = p.cost(*_posed(p.cam, q, a, c_ref))
            if cst < best:
                best, arg = cst, q
    return arg, best


def refine_by_silhouettes(
    cameras: Sequence[Camera],
    masks: Sequence[np.ndarray],
    reference: int,
    frame_cameras: Sequence[Camera],
    frame_masks: Sequence[np.ndarray],
    centre: np.ndarray,
    half: float,
    which: Sequence[int] | None = None,
    config: SilhouetteConfig = SilhouetteConfig(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SilhouetteResult:
    """Photos ``which`` (default: all but ``reference``) refined against the hull of the reference
    photo's mask plus ``frame_masks`` at ``frame_cameras`` (the generated views), on a cube of
    half side ``half`` around ``centre`` (module docstring). Photo masks are alphas in [0, 1] at
    their cameras' sizes. With ``fit_frame`` the views' frame is first turned about the reference
    centre to agree with the reference photo (``B``) and scaled about it (``sigma``, with the
    photos); the result then holds the views' cameras moved accordingly (``frame_cameras``)."""
    from scipy.optimize import least_squares

    t0 = time.perf_counter()
    cfg = config
    n = len(cameras)
    todo = [j for j in (range(n) if which is None else which) if j != reference]
    out = SilhouetteResult(list(cameras), [False] * n, [None] * n, [None] * n, frame_cameras=list(frame_cameras))
    if not todo:
        out.note = "no photo to refine"
        return out
    z = np.zeros(3)
    c_ref = cameras[reference].center
    b = np.eye(3)
    views = list(frame_cameras)  # as given; frame_cameras below: zoomed by stage 1
    report(progress, "silhouette poses", 0, 4, "frame")
    zeta = 0.0
    if cfg.fit_frame:  # stage 1: the reference photo against the views alone
        fv = hull_field(frame_cameras, frame_masks, centre, half, cfg.grid, cfg.threshold, cfg.supersample)
        pr = _Photo(cameras[reference], masks[reference], fv, centre, half, cfg)

        def ref_pose(x):  # turned about its centre; the views' hull scaled by exp(x[3]) about the centre
            r, _ = _posed(pr.cam, x[:3], z, c_ref)
            return r, centre + math.exp(-x[3]) * (c_ref - centre)

        q0, _ = _coarse(pr, c_ref, z, cfg)
        x0 = np.concatenate([q0, [0.0]])
        sol = least_squares(lambda x: pr.residuals(*ref_pose(x)), x0, loss="huber", f_scale=cfg.huber_px,
                            diff_step=1e-4, x_scale=math.radians(1.0), max_nfev=300)
        before, after = pr.cost(*ref_pose(np.zeros(4))), pr.cost(*ref_pose(sol.x))
        out.frame_cost = (round(before, 4), round(after, 4))
        if after < (1.0 - cfg.min_gain) * before and math.degrees(float(np.linalg.norm(sol.x[:3]))) < cfg.max_step_deg \
                and abs(sol.x[3]) < 0.2:
            b = _rotvec(sol.x[:3]).T  # the reference in the views' frame: R_ref B
            zeta = float(sol.x[3])
            frame_cameras = [_with(c, c.R, centre + math.exp(zeta) * (c.center - centre)) for c in frame_cameras]
    out.frame_zoom = math.exp(zeta)
    ref_in_views = _with(cameras[reference], cameras[reference].R @ b, c_ref)
    fld = hull_field([ref_in_views, *frame_cameras], [masks[reference], *frame_masks], centre, half,
                     cfg.grid, cfg.threshold, cfg.supersample)
    check(cancel)
    photos = [_Photo(cameras[j], masks[j], fld, centre, half, cfg) for j in todo]
    a0 = _rotlog(b.T)  # A' = B^T: the frame rotation A = B A' at identity
    before = [p.cost(*_posed(p.cam, z, a0, c_ref)) for p in photos]
    starts = [_coarse(p, c_ref, a0, cfg)[0] for p in photos]
    check(cancel)
    report(progress, "silhouette poses", 2, 4, "least squares")
    nf = 3 if cfg.move_centres else 0
    sigma = math.radians(cfg.prior_deg) / math.sqrt(3.0)  # per axis
    k_prior = cfg.prior_px * math.sqrt(cfg.outline_points) / sigma

    def unpack(x):
        a = x[:3] if nf else a0
        return a, [x[nf + 3 * i: nf + 3 * i + 3] for i in range(len(photos))]

    def solve(x0):
        def fun(x):
            a, qs = unpack(x)
            res = [p.residuals(*_posed(p.cam, q, a, c_ref)) for p, q in zip(photos, qs)]
            pri = [k_prior * np.concatenate(qs)] + ([k_prior * _rotlog(b @ _rotvec(a))] if nf else [])
            return np.concatenate(res + pri)

        return least_squares(fun, x0, loss="huber", f_scale=cfg.huber_px, diff_step=1e-4, x_scale=sigma,
                             max_nfev=60 * len(x0)).x

    x = solve(np.concatenate((list(a0) if nf else [], *starts)))
    a, qs = unpack(x)
    steps = []
    for j, p, q, bj in zip(todo, photos, qs, before):
        r, c = _posed(p.cam, q, a, c_ref)
        after = p.cost(r, c)
        r2, c2 = _frame_map(r, c, b, c_ref)
        step = rotation_angle_deg(r2, p.cam.R)
        steps.append(step)
        out.cost_before[j], out.cost_after[j] = round(bj, 4), round(after, 4)
        if after < (1.0 - cfg.min_gain) * bj and step < cfg.max_step_deg:
            out.cameras[j] = _with(p.cam, r2, c2)
            out.refined[j] = True
    if any(out.refined):
        out.frame_cameras = [frame_move(c, b, out.frame_zoom, centre, c_ref) for c in views]
        out.frame_rotation, out.frame_moved = b, True
    out.frame_deg = math.degrees(float(np.linalg.norm(_rotlog(b @ _rotvec(a)))))
    out.steps_deg = [round(s, 3) for s in steps]
    out.seconds = time.perf_counter() - t0
    moved = sum(out.refined)
    out.note = (f"silhouettes: {moved} of {len(todo)} photos moved (outline cost "
                + ", ".join(f"{out.cost_before[j]:.2f}->{out.cost_after[j]:.2f} px" for j in todo)
                + f"; views turned {math.degrees(float(np.linalg.norm(_rotlog(b)))):.2f} deg, scaled {out.frame_zoom:.3f}"
                + " about the centre"
                + (f" (reference outline {out.frame_cost[0]:.2f}->{out.frame_cost[1]:.2f} px)" if out.frame_cost else "")
                + f"; frame {out.frame_deg:.2f} deg; {out.seconds:.1f} s)")
    log.info("pose refinement by silhouettes: %s", out.note)
    report(progress, "silhouette poses", 4, 4, "done")
    return out
