"""The mesh stage: rasterizer, TSDF fusion + marching cubes, clean-up, UV bake, metrics, and the
whole splats -> textured mesh chain (engine only, no bpy, no shared data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viewforge.engine.cameras import Camera, look_at
from viewforge.engine.errors import Cancelled, MeshError
from viewforge.engine.io.types import Mesh, PosedSet
from viewforge.engine.mesh import MeshConfig, splats_to_mesh
from viewforge.engine.mesh.cleanup import cap_face_budget, keep_main_components, signed_volume, simplify
from viewforge.engine.mesh.evaluate import chamfer_fscore, sample_surface
from viewforge.engine.mesh.extract import fibonacci_directions, fuse_tsdf, marching_cubes, virtual_cameras
from viewforge.engine.mesh.raster import interpolate, rasterize_mesh, rasterize_uv, render_textured
from viewforge.engine.mesh.texture import bake_texture, push_pull_fill, refine_texture, unwrap, BakeView
from viewforge.engine.progress import CancelToken
from viewforge.engine.splat.model import Splats

from helpers import sphere_colour, sphere_mesh, sphere_splats


def _cams(n: int, size: int, dist: float = 3.5, fov: float = 45.0) -> list[Camera]:
    f = 0.5 * size / math.tan(math.radians(fov / 2))
    return [Camera(f, f, size / 2, size / 2, size, size, look_at(dist * d, (0, 0, 0), (0, 0, 1) if abs(d[2]) < 0.95
                                                                else (0, 1, 0)), name=f"c{i}")
            for i, d in enumerate(fibonacci_directions(n))]


# --------------------------------------------------------------------------------------------
# rasterizer
# --------------------------------------------------------------------------------------------


def test_rasterized_points_reproject_to_their_pixels_with_the_zbuffer_depth():
    sphere = sphere_mesh()
    cam = _cams(1, 64)[0]
    frags = rasterize_mesh(sphere.vertices, sphere.faces, cam)
    m = frags.mask
    # the silhouette of a unit sphere seen from 3.5: radius = f * tan(asin(1 / 3.5)) pixels
    r_px = cam.fx * math.tan(math.asin(1 / 3.5))
    assert m.sum() == pytest.approx(math.pi * r_px**2, rel=0.05)
    pts = interpolate(frags, sphere.faces, sphere.vertices.astype(np.float64))
    xy, z = cam.project(pts)
    ys, xs = np.nonzero(m)
    assert np.abs(xy[:, 0] - (xs + 0.5)).max() < 1e-3 and np.abs(xy[:, 1] - (ys + 0.5)).max() < 1e-3
    assert np.allclose(z, frags.depth[m], atol=1e-4)
    # the nearest surface wins: depth within the sphere's front half
    assert frags.depth[m].max() < 3.5


def test_uv_raster_covers_the_atlas_and_render_samples_the_texture():
    quad = Mesh(np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 3]]),
                uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float),
                texture=np.zeros((8, 8, 3), np.uint8))
    frags = rasterize_uv(quad.uvs, quad.faces, 8, eps=0.0)
    assert frags.mask.all()
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:4, :, 0] = 255  # top half red: uv v > 0.5 = world +y
    quad = Mesh(quad.vertices, quad.faces, uvs=quad.uvs, texture=tex)
    f = 40.0
    cam = Camera(f, f, 16, 16, 32, 32, look_at((0, 0, 3), (0, 0, 0), (0, 1, 0)))
    rgb, alpha = render_textured(quad, cam)
    assert alpha[16, 16] == 1.0 and alpha[0, 0] == 0.0
    assert rgb[10, 16, 0] > 0.9 and rgb[22, 16, 0] < 0.1  # image up = world +y = the red half


# --------------------------------------------------------------------------------------------
# fusion, marching cubes, clean-up
# --------------------------------------------------------------------------------------------


def _depth_views(mesh: Mesh, cams: list[Camera]):
    out = []
    for c in cams:
        fr = rasterize_mesh(mesh.vertices, mesh.faces, c)
        out.append((c, fr.depth, fr.mask.astype(np.float32)))
    return out


def test_tsdf_of_true_depth_gives_the_surface_back_outward():
    sphere = sphere_mesh(4)
    lo, hi = np.full(3, -1.2), np.full(3, 1.2)
    vol = fuse_tsdf(_depth_views(sphere, _cams(24, 96)), lo, hi, 64)
    v, f = marching_cubes(vol)
    assert signed_volume(v, f) > 0  # counter-clockwise seen from outside
    r = np.linalg.norm(v, axis=1)
    assert abs(np.median(r) - 1.0) < 0.02 and r.std() < 0.02
    scores = chamfer_fscore(Mesh(v, f), sphere, samples=20000)
    assert scores["chamfer"] < 0.02 and scores["fscore"] > 0.99


def test_empty_views_give_a_clear_error():
    cams = _cams(4, 32)
    views = [(c, np.full((32, 32), np.inf, np.float32), np.zeros((32, 32), np.float32)) for c in cams]
    vol = fuse_tsdf(views, np.full(3, -1.0), np.full(3, 1.0), 32)
    with pytest.raises(MeshError, match="no surface"):
        marching_cubes(vol)


def test_components_floaters_are_dropped_and_budgets_capped(caplog):
    big, small = sphere_mesh(3), sphere_mesh(1, radius=0.05)
    v = np.concatenate([big.vertices, small.vertices + 3.0])
    f = np.concatenate([big.faces, small.faces + len(big.vertices)])
    v2, f2 = keep_main_components(v, f, 0.05)
    assert len(f2) == len(big.faces) and np.linalg.norm(v2, axis=1).max() < 1.01
    v3, f3 = simplify(v2, f2, 200)
    assert 150 <= len(f3) <= 200
    with caplog.at_level("WARNING"):
        assert cap_face_budget(10) == 500 and cap_face_budget(10**9) == 2_000_000
    assert "capped" in caplog.text


# --------------------------------------------------------------------------------------------
# texture bake
# --------------------------------------------------------------------------------------------


def test_push_pull_fills_holes_from_neighbours_and_keeps_known_texels():
    img = np.zeros((16, 16, 3), np.float32)
    valid = np.zeros((16, 16), bool)
    img[:, :8] = [1, 0, 0]
    img[:, 8:] = [0, 0, 1]
    valid[::3, ::3] = True
    out = push_pull_fill(img, valid)
    assert np.array_equal(out[valid], img[valid])
    assert out[5, 1, 0] > 0.8 and out[5, 14, 2] > 0.8


def test_bake_from_photos_reproduces_the_colours_at_a_new_view():
    sphere = sphere_mesh(4)
    cols = (sphere_colour(sphere.vertices.astype(np.float64)) * 255).astype(np.uint8)
    painted = Mesh(sphere.vertices, sphere.faces, colors=np.concatenate([cols, np.full((len(cols), 1), 255, np.uint8)], 1))
    photos = []
    for c in _cams(16, 96):
        rgb, alpha = render_textured(painted, c)
        photos.append(BakeView(c, rgb, alpha))
    vmap, faces, uvs = unwrap(sphere.vertices, sphere.faces, 256)
    verts = sphere.vertices[vmap].astype(np.float64)
    tex, cover = bake_texture(verts, faces, uvs, 256, photos, tolerance=0.02)
    assert cover["photo"] > 0.99 and cover["filled"] < 0.01
    baked = Mesh(verts, faces, uvs=uvs, texture=tex)
    new_view = _cams(23, 96)[5]
    a, _ = render_textured(baked, new_view)
    b, _ = render_textured(painted, new_view)
    err = np.sqrt(np.mean((a - b) ** 2))
    assert err < 0.03, err


def test_least_squares_texture_beats_the_averaging_bake_on_sharp_edges():
    # a sphere with a sharp 3D checker texture; photos rendered as render_textured draws them
    sphere = sphere_mesh(4)
    vmap, faces, uvs = unwrap(sphere.vertices, sphere.faces, 256)
    verts = sphere.vertices[vmap].astype(np.float64)
    frags = rasterize_uv(uvs, faces, 256)
    p = interpolate(frags, faces, verts)
    check = np.floor(p * 4 + 8).sum(1) % 2
    true = np.zeros((256, 256, 3))
    true[frags.mask] = np.stack([0.2 + 0.6 * check, 0.3 + 0.4 * check, 0.8 - 0.6 * check], 1)
    truth = Mesh(verts, faces, uvs=uvs, texture=(true * 255 + 0.5).astype(np.uint8))
    photos = [BakeView(c, *render_textured(truth, c)) for c in _cams(16, 96)]
    baked, _ = bake_texture(verts, faces, uvs, 256, photos, tolerance=0.02)
    refined = refine_texture(verts, faces, uvs, baked, photos)
    assert refined.shape == baked.shape and refined.dtype == np.uint8

    def held_out_rms(tex):
        mesh = Mesh(verts, faces, uvs=uvs, texture=tex)
        errs = [np.mean((render_textured(mesh, c)[0] - render_textured(truth, c)[0]) ** 2) for c in _cams(23, 96)[::4]]
        return float(np.sqrt(np.mean(errs)))

    e_bake, e_ref = held_out_rms(baked), held_out_rms(refined)
    # measured: bake 0.0278, least squares 0.0182
    assert e_ref < 0.75 * e_bake and e_ref < 0.022, (e_bake, e_ref)
    # no iterations: the bake unchanged
    assert np.array_equal(refine_texture(verts, faces, uvs, baked, photos, iterations=0), baked)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def test_chamfer_and_fscore_follow_the_protocol():
    gt = sphere_mesh(4)  # box longest side = 2: the normalised frame is the mesh's own
    same = chamfer_fscore(gt, gt, samples=20000)
    # independent samples of one surface: the mean nearest-neighbour gap of 20k points (~0.0125)
    assert same["chamfer"] < 0.02 and same["fscore"] == 1.0
    shifted = chamfer_fscore(Mesh(gt.vertices + [0.05, 0, 0], gt.faces), gt, samples=20000)
    assert 0.02 < shifted["chamfer"] < 0.05 and shifted["fscore"] > 0.99
    far = chamfer_fscore(Mesh(gt.vertices * 0.7, gt.faces), gt, samples=20000)
    assert far["chamfer"] == pytest.approx(0.3, abs=0.02) and far["fscore"] < 0.05
    # scaling both meshes together changes nothing: the ground truth's box defines the frame
    scaled = chamfer_fscore(Mesh(gt.vertices * 10 + [0.5, 0, 0], gt.faces), Mesh(gt.vertices * 10, gt.faces), samples=20000)
    assert scaled["chamfer"] == pytest.approx(shifted["chamfer"], rel=0.1)
    pts = sample_surface(gt, 1000, seed=3)
    assert np.allclose(np.linalg.norm(pts, axis=1), 1.0, atol=0.01)


# --------------------------------------------------------------------------------------------
# the whole chain
# --------------------------------------------------------------------------------------------


def test_ray_depth_follows_a_tilted_flat_gaussian_where_the_centre_depth_is_flat():
    from viewforge.engine.mesh.depth import ray_median_depth
    from viewforge.engine.mesh.pipeline import median_depth

    # one opaque disc (1 x 1 x 0.002) at z = 4 in front of the camera, its normal tilted 40 deg about y
    tilt = math.radians(40.0)
    q = torch.tensor([[math.cos(tilt / 2), 0.0, math.sin(tilt / 2), 0.0]])
    disc = Splats(means=torch.tensor([[0.0, 0.0, 4.0]]), scales=torch.log(torch.tensor([[0.5, 0.5, 0.002]])),
                  quats=q, opacities=torch.full((1,), 8.0), sh0=torch.zeros(1, 1, 3), shN=torch.zeros(1, 0, 3))
    cam = Camera(64.0, 64.0, 32.0, 32.0, 64, 64, np.eye(4))
    ray, alpha = ray_median_depth(disc, cam, front_sigmas=0.0)
    centre, _ = median_depth(disc, cam)
    row = 32
    cols = [c for c in range(64) if alpha[row, c] > 0.5 and np.isfinite(ray[row, c])]
    assert len(cols) > 10
    # the disc's plane: z = 4 + tan(tilt) * x, with x = (u - cx) / fx * z along the ray
    u = np.array(cols) + 0.5
    a = (u - 32.0) / 64.0
    plane = 4.0 / (1.0 + math.tan(tilt) * a)
    assert np.max(np.abs(ray[row, cols] - plane)) < 0.01
    assert np.ptp(ray[row, cols]) > 0.3 and np.ptp(centre[row, cols]) < 1e-6
    # front sigmas move it towards the camera by that many standard deviations along the ray
    front, _ = ray_median_depth(disc, cam, front_sigmas=2.0)
    assert np.all(front[row, cols] < ray[row, cols]) and np.all(ray[row, cols] - front[row, cols] < 0.02)


def test_silhouette_offset_recovers_an_inflation_of_the_surface():
    from viewforge.engine.mesh.silhouette import coverage, silhouette_offset

    sphere = sphere_mesh(4)
    cams = _cams(8, 96)
    masks = [coverage(sphere.vertices, sphere.faces, c, 4) for c in cams]
    fat = sphere.vertices * 1.03  # 0.03 too far out along the normals
    d = silhouette_offset(fat, sphere.faces, cams, masks, step=0.01, span=6)
    assert d == pytest.approx(-0.03, abs=0.004)


def test_silhouette_refine_moves_each_part_of_the_outline_onto_the_masks():
    """A sphere of radius 0.8 against the masks of an ellipsoid (1.0, 0.8, 0.65): one global
    offset cannot fit both axes, the per-vertex refinement follows each."""
    from viewforge.engine.mesh.silhouette import coverage, silhouette_refine

    sphere = sphere_mesh(4)
    axes = np.array([1.0, 0.8, 0.65])
    cams = _cams(12, 96)
    masks = [coverage(sphere.vertices * axes, sphere.faces, c, 4) for c in cams]
    start = sphere.vertices * 0.8

    def mask_error(v):
        return float(np.mean([np.abs(coverage(v, sphere.faces, c) - m).sum() for c, m in zip(cams, masks)]))

    def off_surface(v):  # relative distance from the ellipsoid along the ray from its centre
        return np.abs(np.linalg.norm(v / axes, axis=1) - 1.0)

    moved = silhouette_refine(start, sphere.faces, cams, masks, max_offset=0.3, iterations=3)
    assert np.median(off_surface(start)) > 0.08
    assert np.median(off_surface(moved)) < 0.01 and np.percentile(off_surface(moved), 90) < 0.025
    assert mask_error(moved) < 0.1 * mask_error(start)
    # offsets are capped
    capped = silhouette_refine(start, sphere.faces, cams, masks, max_offset=0.05, iterations=3)
    assert np.linalg.norm(capped - start, axis=1).max() <= 0.05 + 1e-9


def test_pixel_filters_follow_cycles_widths_and_sum_to_one():
    from viewforge.engine.mesh.raster import PixelFilter

    bh = PixelFilter("blackman_harris", 1.5)
    assert bh.weights(np.array([0.0]))[0] == pytest.approx(1.0, abs=1e-4)  # the window's peak
    assert bh.weights(np.array([1.49]))[0] < 1e-3 and bh.weights(np.array([1.6]))[0] == 0.0
    g = PixelFilter("gaussian", 2.0)  # sigma = width / 4
    assert g.weights(np.array([0.5]))[0] == pytest.approx(math.exp(-0.5), rel=1e-6)
    for filt in (bh, g, PixelFilter("box", 1.0)):
        m = filt.matrix(10, 4)
        assert m.shape == (10, 40) and np.allclose(m.sum(1), 1.0)
    # the box of width 1 over 4 samples per pixel is the plain 4-sample mean
    assert np.allclose(PixelFilter("box", 1.0).matrix(3, 4), np.kron(np.eye(3), np.full((1, 4), 0.25)))
    with pytest.raises(ValueError):
        PixelFilter("lanczos").weights(np.zeros(1))


def test_filtered_render_softens_an_edge_as_the_filter_says():
    """A quad covering exactly the left half of the image: the box-filtered render is 0/1 at the
    edge, the Blackman-Harris render ramps over +-1.5 px, symmetric about the edge."""
    from viewforge.engine.mesh.raster import PixelFilter, render_filtered

    f = 32.0
    cam = Camera(f, f, 16, 16, 32, 32, look_at((0, 0, 2), (0, 0, 0), (0, 1, 0)))
    # image x grows with world -x here? place the quad by projecting: cover x_img < 16
    half = 2.0 * 16 / f  # half the image width at depth 2
    quad = Mesh(np.array([[-half, -3, 0], [0, -3, 0], [0, 3, 0], [-half, 3, 0]], float),
                np.array([[0, 1, 2], [0, 2, 3]]))
    xy, _ = cam.project(quad.vertices[[0, 1]])
    left = xy[:, 0].min() < 1  # which side of the image the quad lands on
    _, a_box = render_textured(quad, cam)
    _, a_bh = render_filtered(quad, cam, PixelFilter("blackman_harris", 1.5))
    row_box, row = a_box[16], a_bh[16]
    inside = slice(0, 16) if left else slice(16, 32)
    assert np.all(np.isin(row_box, [0.0, 1.0])) and row_box[inside].min() == 1.0
    edge_in, edge_out = (15, 16) if left else (16, 15)
    assert 0.5 < row[edge_in] < 1.0 and 0.0 < row[edge_out] < 0.5
    assert row[edge_in] + row[edge_out] == pytest.approx(1.0, abs=1e-4)
    far_in, far_out = (12, 19) if left else (19, 12)
    assert row[far_in] == pytest.approx(1.0) and row[far_out] == pytest.approx(0.0)


def test_image_formation_reads_the_recorded_renderer():
    from viewforge.engine.mesh.evaluate import image_formation
    from viewforge.engine.mesh.raster import PixelFilter

    meta = {"renderer": {"engine": "CYCLES", "pixel_filter": {"type": "GAUSSIAN", "width": 2.0}}, "source_size": [256, 256]}
    assert image_formation(meta) == (PixelFilter("gaussian", 2.0), (256, 256))
    # render-views before it recorded its filter: Cycles' default
    assert image_formation({"renderer": {"engine": "CYCLES"}}) == (PixelFilter("blackman_harris", 1.5), None)
    # photos: no renderer, a box at the loaded size
    assert image_formation({"source_size": [4000, 3000]}) == (None, (4000, 3000))
    assert image_formation(None) == (None, None)


SMALL = MeshConfig(faces=3000, texture_size=256, grid=64, fuse_views=16, fuse_size=96, bake_render_views=6,
                   device="cpu")


def test_splats_to_textured_mesh_matches_the_sphere():
    splats = sphere_splats()
    sphere = sphere_mesh(4)
    events = []
    res = splats_to_mesh(splats, None, SMALL, progress=events.append)
    mesh = res.mesh
    assert mesh.num_faces <= 3000 and mesh.texture.shape == (256, 256, 3) and mesh.uvs is not None
    scores = chamfer_fscore(mesh, sphere, samples=20000)
    assert scores["chamfer"] < 0.08 and scores["fscore"] > 0.99, scores
    # the discs' rendered silhouette is ~4 % wider than the sphere (alpha 0.2 reaches past their
    # centres): the surface lies between the centres and that silhouette (+ a voxel of 0.04)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert 1.0 < np.median(r) < 1.09 and r.std() < 0.02
    assert signed_volume(mesh.vertices.astype(np.float64), mesh.faces) > 0
    assert res.coverage["render"] > 0.95  # no photos: coloured from the splat renders
    stages = {e.stage for e in events}
    assert {"render_depth", "fuse", "surface", "unwrap", "bake_renders"} <= stages
    cam = _cams(7, 64)[3]
    rgb, alpha = render_textured(mesh, cam)
    # the texture shows the colour field: compare with the painted sphere at the same view
    cols = (sphere_colour(sphere.vertices.astype(np.float64)) * 255).astype(np.uint8)
    ref, ref_a = render_textured(Mesh(sphere.vertices, sphere.faces,
                                      colors=np.concatenate([cols, np.full((len(cols), 1), 255, np.uint8)], 1)), cam)
    both = (alpha > 0.99) & (ref_a > 0.99)
    assert both.sum() > 0.2 * both.size
    assert np.sqrt(np.mean((rgb[both] - ref[both]) ** 2)) < 0.06


def test_photos_take_precedence_over_renders():
    splats = sphere_splats()
    cams = _cams(8, 64)
    grey = [np.full((64, 64, 3), 0.25, np.float32) for _ in cams]
    photos = PosedSet(cams, grey, None)
    res = splats_to_mesh(splats, photos, SMALL)
    assert res.coverage["photo"] > 0.9
    assert np.abs(np.median(res.mesh.texture.reshape(-1, 3), 0) / 255 - 0.25).max() < 0.02


def test_empty_or_transparent_splats_are_a_clear_error():
    s = sphere_splats(50)
    empty = Splats(s.means[:0], s.scales[:0], s.quats[:0], s.opacities[:0], s.sh0[:0], s.shN[:0])
    with pytest.raises(MeshError, match="no Gaussians"):
        splats_to_mesh(empty, None, SMALL)
    clear = Splats(s.means, s.scales, s.quats, torch.full((50,), -12.0), s.sh0, s.shN)
    with pytest.raises(MeshError):
        splats_to_mesh(clear, None, SMALL)


def test_cancel_stops_the_mesh_stage():
    token = CancelToken()
    calls = []

    def progress(event):
        calls.append(event)
        if event.stage == "fuse":
            token.cancel()

    with pytest.raises(Cancelled):
        splats_to_mesh(sphere_splats(), None, SMALL, progress=progress, cancel=token)
    assert not any(e.stage == "unwrap" for e in calls)
