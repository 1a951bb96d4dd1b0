"""Fitted Gaussians (+ the posed photos) -> a clean, UV-textured mesh in the cameras' frame."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import MeshError
from ..io.types import Mesh, PosedSet
from ..progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)

#: Texture sizes outside this range are capped (with a warning).
MIN_TEXTURE, MAX_TEXTURE = 64, 8192


def median_depth(splats, camera, front_sigmas: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Median depth (H, W) and alpha (H, W) of the splats at ``camera`` (CPU kernels)."""
    import torch

    from ..splat.rasterize import render_median_depth

    p = splats.as_dict()
    return render_median_depth(
        p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]).reshape(-1),
        torch.tensor(camera.world_to_camera, dtype=torch.float32), torch.tensor(camera.K, dtype=torch.float32),
        camera.width, camera.height, front_sigmas=front_sigmas,
    )


@dataclass(frozen=True)
class MeshConfig:
    """Settings of :func:`splats_to_mesh`.

    faces: face budget after simplification (default 50k; capped to [500, 2M]).
    texture_size: side of the square base-colour texture in pixels (default 2048; [64, 8192]).
    grid: TSDF voxels along the longest side of the object's box (default 192; [32, 512]).
    fuse_views: virtual views rendered from the splats for fusion (default 48).
    fuse_size: their image size in pixels (default 256).
    alpha_threshold: rendered alpha above which a pixel is solid, below which its ray is carved
        (default 0.2: the Gaussians' soft silhouette edge; 0.5 shrinks the mesh, docs/mesh.md).
    truncation_voxels: TSDF truncation in voxels (default 3).
    depth_mode: "ray" (default): each Gaussian's depth at a pixel is where the pixel's ray meets
        it, ``ray_sigmas`` of its standard deviations along the ray in front of its peak
        (engine/mesh/depth.py); "centre": its centre's depth, ``depth_sigmas`` in front.
    ray_sigmas: see depth_mode (default 2.5: unbiased on Duck and Avocado, docs/mesh.md).
    depth_sigmas: each Gaussian's depth is taken this many standard deviations (along the view
        ray) in front of its centre for the median depth in "centre" mode (default 2: the
        centres lie inside the surface; 1.5 is unbiased in depth on the demo object, 2 matches
        its silhouettes and held-out renders best; docs/mesh.md has the measurements).
    calibrate_silhouette: move the surface along its normals by the one offset (within 1.5
        voxels) that best matches the photos' masks (default True; photos with masks only).
    silhouette_refine_iterations: then move each vertex along its normal so the mesh's outline
        follows the masks where it is an outline (engine/mesh/silhouette.py
        ``silhouette_refine``; offsets smoothed over the mesh, at most
        ``silhouette_refine_voxels`` voxels); rounds (default 3; 0 = off).
    silhouette_refine_voxels: see above (default 2.5).
    min_component: components with less than this fraction of the largest's area are dropped.
    smooth_iterations: Taubin smoothing passes after marching cubes (default 5).
    bake_render_views: splat renders used for texels no photo sees (default 24; 0 = none).
    bake_power: exponent of cos(viewing angle) in the bake's weights (default 4).
    texture_refine_iterations: conjugate-gradient steps of the least-squares texture refinement
        against the photos (default 30; 0 = the averaging bake only; docs/mesh.md).
    texture_refine_damping: its pull towards the averaging bake, relative to the data term
        (default 3).
    texture_refine_resolution: the photos are reduced to this longer side for the refinement
        (default 512; its cost grows with the photos' pixels).
    device: compute device for splat rendering ("auto", "cpu", "cuda", "mps").
    """

    faces: int = 50000
    texture_size: int = 2048
    grid: int = 192
    fuse_views: int = 48
    fuse_size: int = 256
    alpha_threshold: float = 0.2
    truncation_voxels: float = 3.0
    depth_mode: str = "ray"
    ray_sigmas: float = 2.5
    depth_sigmas: float = 2.0
    calibrate_silhouette: bool = True
    silhouette_refine_iterations: int = 3
    silhouette_refine_voxels: float = 2.5
    min_component: float = 0.05
    smooth_iterations: int = 5
    bake_render_views: int = 24
    bake_power: float = 4.0
    texture_refine_iterations: int = 30
    texture_refine_damping: float = 3.0
    texture_refine_resolution: int = 512
    device: str = "auto"


@dataclass
class MeshResult:
    """mesh: the textured mesh. seconds: wall time per stage. coverage: texel fractions coloured
    from photos / splat renders / filled."""

    mesh: Mesh
    seconds: dict[str, float] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)


def splats_to_mesh(
    splats,
    photos: PosedSet | None,
    config: MeshConfig = MeshConfig(),
    *,
    name: str = "viewforge_mesh",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> MeshResult:
    """Extract, clean, simplify, unwrap and texture a mesh from fitted splats. ``photos``: the
    posed images the texture is baked from where they see the surface (None: renders only)."""
    from ..splat.fit import render_splats
    from .cleanup import cap_face_budget, fill_small_holes, keep_main_components, signed_volume, simplify, smooth
    from .depth import ray_median_depth
    from .extract import fuse_tsdf, marching_cubes, splat_bounds, virtual_cameras
    from .texture import BakeView, bake_texture, refine_texture, unwrap

    budget = cap_face_budget(config.faces)
    tex_size = int(min(max(config.texture_size, MIN_TEXTURE), MAX_TEXTURE))
    if tex_size != config.texture_size:
        log.warning("texture size %s capped to %d (allowed: %d to %d)", config.texture_size, tex_size,
                    MIN_TEXTURE, MAX_TEXTURE)
    grid = int(min(max(config.grid, 32), 512))
    if grid != config.grid:
        log.warning("mesh grid %s capped to %d (allowed: 32 to 512)", config.grid, grid)
    if splats.num == 0:
        raise MeshError("the reconstruction has no Gaussians", "check that the photos show the object")
    if config.depth_mode not in ("ray", "centre"):
        raise MeshError(f"unknown depth_mode {config.depth_mode!r}", "use 'ray' or 'centre'")
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    lo, hi = splat_bounds(splats, photos.cameras if photos is not None else None)
    cams = virtual_cameras(lo, hi, config.fuse_views, config.fuse_size)
    views = []
    for k, cam in enumerate(cams):
        check(cancel)
        if config.depth_mode == "ray":
            views.append((cam, *ray_median_depth(splats, cam, config.ray_sigmas)))
        else:
            views.append((cam, *median_depth(splats, cam, config.depth_sigmas)))
        report(progress, "render_depth", k + 1, len(cams), f"view {k + 1}/{len(cams)}")
    seconds["render_depth"] = time.perf_counter() - t

    t = time.perf_counter()
    volume = fuse_tsdf(views, lo, hi, grid, alpha_threshold=config.alpha_threshold,
                       truncation_voxels=config.truncation_voxels, progress=progress, cancel=cancel)
    seconds["fuse"] = time.perf_counter() - t
    check(cancel)

    t = time.perf_counter()
    report(progress, "surface", 0, 4, "marching cubes")
    v, f = marching_cubes(volume)
    report(progress, "surface", 1, 4, "main components")
    v, f = keep_main_components(v, f, config.min_component)
    v, f = fill_small_holes(v, f)
    report(progress, "surface", 2, 4, "smoothing")
    v, f = smooth(v, f, config.smooth_iterations)
    check(cancel)
    report(progress, "surface", 3, 4, f"simplifying {len(f)} -> {budget} faces")
    v, f = simplify(v, f, budget)
    if len(f) < 4:
        raise MeshError("the extracted surface is degenerate (fewer than 4 faces)",
                        "check that the photos show the object and the masks are not empty")
    if signed_volume(v, f) < 0:
        f = f[:, ::-1].copy()
    report(progress, "surface", 4, 4, f"{len(f)} faces")
    seconds["surface"] = time.perf_counter() - t
    check(cancel)

    if config.calibrate_silhouette and photos is not None and photos.masks is not None:
        from .silhouette import silhouette_offset, vertex_normals as unit_normals

        t = time.perf_counter()
        pairs = [(c, m) for c, m in zip(photos.cameras, photos.masks) if m is not None]
        reduced = _reduced([BakeView(c, np.zeros((c.height, c.width, 3), np.float32), m) for c, m in pairs], 256)
        cams_256, masks_256 = [r.camera for r in reduced], [r.mask for r in reduced]
        offset = silhouette_offset(v, f, cams_256, masks_256, step=0.25 * volume.voxel, cancel=cancel)
        v = v + offset * unit_normals(v, f)
        if config.silhouette_refine_iterations > 0:
            from .silhouette import silhouette_refine

            v = silhouette_refine(v, f, cams_256, masks_256, max_offset=config.silhouette_refine_voxels * volume.voxel,
                                  iterations=config.silhouette_refine_iterations, cancel=cancel)
        seconds["silhouette"] = time.perf_counter() - t

    t = time.perf_counter()
    report(progress, "unwrap", 0, 1, "xatlas")
    from ..io.mesh import vertex_normals

    normals = vertex_normals(v.astype(np.float32), f.astype(np.int32))
    vmap, f, uv = unwrap(v, f, tex_size)
    v, normals = v[vmap], normals[vmap]
    report(progress, "unwrap", 1, 1, "")
    seconds["unwrap"] = time.perf_counter() - t
    check(cancel)

    t = time.perf_counter()
    photo_views = []
    if photos is not None:
        masks = photos.masks if photos.masks is not None else [None] * len(photos)
        photo_views = [BakeView(c, img, m) for c, img, m in zip(photos.cameras, photos.images, masks)]
    render_views = []
    if config.bake_render_views > 0:
        for cam in virtual_cameras(lo, hi, config.bake_render_views, config.fuse_size):
            check(cancel)
            out = render_splats(splats, [cam], background=(0.0, 0.0, 0.0), device=config.device)[0]
            rgb = out["rgb"] / np.maximum(out["alpha"][..., None], 1e-3)
            render_views.append(BakeView(cam, np.clip(rgb, 0, 1), out["alpha"] > config.alpha_threshold))
    tolerance = max(2.0 * volume.voxel, 1e-6)
    texture, coverage = bake_texture(v, f, uv, tex_size, photo_views, render_views, tolerance=tolerance,
                                     power=config.bake_power, progress=progress, cancel=cancel)
    seconds["bake"] = time.perf_counter() - t

    if photo_views and config.texture_refine_iterations > 0:
        t = time.perf_counter()
        texture = refine_texture(v, f, uv, texture, _reduced(photo_views, config.texture_refine_resolution),
                                 iterations=config.texture_refine_iterations,
                                 damping=config.texture_refine_damping, progress=progress, cancel=cancel)
        seconds["texture_refine"] = time.perf_counter() - t

    mesh = Mesh(v, f, normals=normals, uvs=uv, texture=texture, name=name)
    log.info("mesh: %d faces, %d vertices, texture %d px, coverage %s", mesh.num_faces, mesh.num_vertices,
             tex_size, coverage)
    return MeshResult(mesh, seconds, coverage)


def _reduced(views, long_side: int):
    """The bake views with their longer side reduced to ``long_side`` (never enlarged)."""
    from ..images import resize
    from .texture import BakeView

    out = []
    for view in views:
        cam = view.camera
        scale = long_side / max(cam.width, cam.height)
        if scale >= 1:
            out.append(view)
            continue
        w, h = max(1, round(cam.width * scale)), max(1, round(cam.height * scale))
        mask = None if view.mask is None else resize(np.asarray(view.mask, dtype=np.float32), w, h)
        out.append(BakeView(cam.resized(w, h), resize(np.asarray(view.rgb, dtype=np.float32), w, h), mask))
    return out
