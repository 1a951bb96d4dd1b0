"""bridge/render.py: ``render_views`` renders a posed set of a mesh with Blender Cycles.

Checked: the files (RGBA PNGs + transforms.json), the normalisation (bounding-box centre 0, longest
side 2), that every surface point of the normalised mesh projects inside the rendered alpha
(silhouettes contain all surface points, occluded or not), deterministic cameras, the camera
placement maths, and that bad input (unparsable mesh, foreign output folder) or a cancel leaves
nothing behind. Renders are tiny (64 px, few samples).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA
from viewforge.engine.cameras import Camera, cameras_from_transforms
from viewforge.engine.errors import Cancelled, InputError, MeshError, OutputError
from viewforge.engine.progress import CancelToken

DUCK = SHARED_DATA / "meshes" / "Duck" / "glTF-Binary" / "Duck.glb"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly distributed over the triangle surface (area-weighted)."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    return np.einsum("nk,nkd->nd", w, tri[idx])


def _dilate(mask: np.ndarray, px: int = 1) -> np.ndarray:
    out = mask.copy()
    p = np.pad(mask, px)
    h, w = mask.shape
    for dy in range(2 * px + 1):
        for dx in range(2 * px + 1):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def inside_alpha(cam: Camera, alpha: np.ndarray, points: np.ndarray, tolerance_px: int = 1) -> np.ndarray:
    """Per point: does it project (in front of the camera) onto a pixel with alpha >= 0.5,
    allowing ``tolerance_px`` pixels of slack?"""
    uv, depth = cam.project(points)
    ij = np.floor(uv).astype(np.int64)
    ok = (depth > 0) & (ij[:, 0] >= 0) & (ij[:, 0] < cam.width) & (ij[:, 1] >= 0) & (ij[:, 1] < cam.height)
    mask = _dilate(alpha >= 0.5, tolerance_px)
    hit = np.zeros(len(points), dtype=bool)
    hit[ok] = mask[ij[ok, 1], ij[ok, 0]]
    return hit


def load_posed(out: Path) -> tuple[dict, list[Camera], list[np.ndarray]]:
    from PIL import Image

    meta = json.loads((out / "transforms.json").read_text())
    cams = cameras_from_transforms(meta)
    rgba = [np.asarray(Image.open(out / f["file_path"])) for f in meta["frames"]]
    return meta, cams, rgba


def normalise(points: np.ndarray, meta: dict) -> np.ndarray:
    n = meta["normalization"]
    return n["scale"] * points + np.asarray(n["offset"])


# ---------------------------------------------------------------------------------------------
# pure maths (no bpy)
# ---------------------------------------------------------------------------------------------


def test_view_angles_band_is_a_golden_spiral_covering_all_azimuths():
    from viewforge.bridge.render import view_angles

    a = view_angles(24, (-20.0, 60.0))
    assert a.shape == (24, 2)
    assert np.all(a[:, 1] > -20.0) and np.all(a[:, 1] < 60.0)
    assert np.all(np.diff(a[:, 1]) > 0)  # elevation rises along the spiral
    # azimuths cover the circle: no gap wider than 360/24 * 2
    az = np.sort(a[:, 0])
    gaps = np.diff(np.concatenate([az, [az[0] + 360.0]]))
    assert gaps.max() < 30.0
    # uniform in area: equal steps in sin(elevation)
    s = np.sin(np.radians(a[:, 1]))
    assert np.allclose(np.diff(s), np.diff(s)[0])
    assert np.array_equal(a, view_angles(24, (-20.0, 60.0)))  # deterministic


def test_view_angles_single_elevation_is_a_ring():
    from viewforge.bridge.render import view_angles

    a = view_angles(8, 15.0)
    assert np.allclose(a[:, 1], 15.0)
    assert np.allclose(a[:, 0], np.arange(8) * 45.0)
    assert np.array_equal(view_angles(8, [15.0]), a)
    assert np.array_equal(view_angles(8, (15.0, 15.0)), a)


@pytest.mark.parametrize("bad", [95.0, (-100.0, 0.0), (50.0, 10.0), (1.0, 2.0, 3.0), float("nan")])
def test_view_angles_rejects_bad_elevations(bad):
    from viewforge.bridge.render import view_angles

    with pytest.raises(InputError) as e:
        view_angles(4, bad)
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)


def test_camera_distance_fits_the_bounding_sphere():
    from viewforge.bridge.render import camera_distance, view_direction

    d = camera_distance(1.0, 40.0, margin=1.0)
    assert math.degrees(math.asin(1.0 / d)) == pytest.approx(20.0)
    assert camera_distance(1.0, 40.0) > d
    assert np.allclose(view_direction(0.0, 0.0), [0, -1, 0])  # azimuth 0: Blender's front view
    assert np.allclose(view_direction(90.0, 0.0), [1, 0, 0])
    assert np.allclose(view_direction(0.0, 90.0), [0, 0, 1], atol=1e-12)


def test_bad_arguments_fail_before_any_work(tmp_path):
    from viewforge.bridge.render import render_views

    mesh = tmp_path / "m.glb"
    mesh.write_bytes(b"x")
    (tmp_path / "m.stl").write_bytes(b"solid x")
    cases = [
        (dict(mesh_path=tmp_path / "missing.glb", out_dir=tmp_path / "o"), MeshError, "does not exist"),
        (dict(mesh_path=tmp_path, out_dir=tmp_path / "o"), MeshError, "is a folder"),
        (dict(mesh_path=tmp_path / "m.stl", out_dir=tmp_path / "o"), MeshError, "not supported"),
        (dict(mesh_path=mesh, out_dir=tmp_path / "no" / "such" / "o"), OutputError, "does not exist"),
        (dict(mesh_path=mesh, out_dir=tmp_path / "o", views=0), InputError, "views"),
        (dict(mesh_path=mesh, out_dir=tmp_path / "o", resolution=4), InputError, "resolution"),
        (dict(mesh_path=mesh, out_dir=tmp_path / "o", fov_deg=0.0), InputError, "field of view"),
        (dict(mesh_path=mesh, out_dir=tmp_path / "o", samples=0), InputError, "samples"),
    ]
    for kwargs, err, words in cases:
        with pytest.raises(err) as e:
            render_views(**kwargs)
        assert words in str(e.value), (kwargs, str(e.value))
        assert not (tmp_path / "o").exists()


def test_refuses_a_foreign_non_empty_output_folder(tmp_path):
    from viewforge.bridge.render import render_views

    mesh = tmp_path / "m.glb"
    mesh.write_bytes(b"x")
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="not empty"):
        render_views(mesh, out)
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        render_views(mesh, tmp_path / "afile")


# ---------------------------------------------------------------------------------------------
# rendering (bpy)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """A coarse demo object (engine Mesh) written as GLB."""
    from viewforge.engine.demo import DemoConfig, demo_mesh
    from viewforge.engine.io.mesh import write_glb

    mesh = demo_mesh(DemoConfig(segments=32, rings=20, texture_size=128))
    path = tmp_path_factory.mktemp("mesh") / "demo.glb"
    write_glb(mesh, path)
    return mesh, path


@pytest.fixture(scope="module")
def rendered(bpy_module, small_demo, tmp_path_factory):
    from viewforge.bridge.render import render_views

    _, path = small_demo
    out = tmp_path_factory.mktemp("render") / "posed"
    events = []
    result = render_views(path, out, views=6, resolution=64, samples=4, progress=events.append)
    return out, result, events


@pytest.mark.blender
def test_render_views_writes_rgba_pngs_and_transforms(rendered):
    out, result, events = rendered
    assert result == out.absolute()
    meta, cams, rgba = load_posed(out)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:04d}.png" for i in range(6)]
    assert [f["file_path"] for f in meta["frames"]] == [f"images/{i:04d}.png" for i in range(6)]
    assert len(cams) == 6
    for cam, img in zip(cams, rgba):
        assert img.shape == (64, 64, 4) and img.dtype == np.uint8
        assert (cam.width, cam.height) == (64, 64)
        assert cam.fov_x == pytest.approx(math.radians(40.0))
        a = img[..., 3]
        assert a.max() == 255 and a.min() == 0  # object on a transparent background
        coverage = (a > 127).mean()
        assert 0.05 < coverage < 0.6
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        assert border.max() < 128  # the framing margin keeps the object inside the image
        # the camera looks at the origin from outside the unit bounding sphere
        assert np.linalg.norm(cam.center) > 2.0
        assert cam.project(np.zeros((1, 3)))[0][0] == pytest.approx([32.0, 32.0], abs=1e-4)  # float32 matrix_world
    n = meta["normalization"]
    assert set(n) >= {"scale", "offset"} and len(n["offset"]) == 3
    assert meta["source_mesh"] == "demo.glb"
    assert meta["renderer"]["engine"] == "CYCLES" and meta["renderer"]["view_transform"] == "Standard"
    # the pixel filter the mesh evaluation reproduces (engine/mesh/evaluate.py image_formation)
    assert meta["renderer"]["pixel_filter"] == {"type": "BLACKMAN_HARRIS", "width": 1.5}
    assert [e.step for e in events if e.stage == "render"][-1] == 6
    assert events[-1].fraction == 1.0
    # no temporary siblings left next to the output
    assert sorted(p.name for p in out.parent.iterdir()) == ["posed"]


@pytest.mark.blender
def test_normalisation_and_silhouettes(rendered, small_demo):
    mesh, _ = small_demo
    out, _, _ = rendered
    meta, cams, rgba = load_posed(out)
    # write_glb + Blender's glTF import return the engine frame (Z up), so the recorded
    # normalisation applies to the engine vertices directly.
    v = normalise(mesh.vertices.astype(np.float64), meta)
    lo, hi = v.min(0), v.max(0)
    assert np.allclose(0.5 * (lo + hi), 0.0, atol=1e-5)
    assert (hi - lo).max() == pytest.approx(2.0, abs=1e-5)
    pts = normalise(sample_surface(mesh.vertices, mesh.faces, 5000), meta)
    fractions = [inside_alpha(c, img[..., 3] / 255.0, pts).mean() for c, img in zip(cams, rgba)]
    assert min(fractions) >= 0.99, fractions
    # The check can fail: the same points in a wrong frame (glTF's Y up taken as Z up) miss.
    wrong = normalise(sample_surface(mesh.vertices, mesh.faces, 5000)[:, [0, 2, 1]] * [1, -1, 1], meta)
    wrong_fr = [inside_alpha(c, img[..., 3] / 255.0, wrong).mean() for c, img in zip(cams, rgba)]
    assert min(wrong_fr) < 0.9, wrong_fr


@pytest.mark.blender
def test_camera_placement_is_deterministic(bpy_module, small_demo, tmp_path):
    from viewforge.bridge.render import render_views, view_angles

    _, path = small_demo
    a = render_views(path, tmp_path / "a", views=3, resolution=32, samples=1, elevation=(0.0, 30.0))
    text_a = (a / "transforms.json").read_text()
    b = render_views(path, tmp_path / "b", views=3, resolution=32, samples=1, elevation=(0.0, 30.0))
    assert (b / "transforms.json").read_text() == text_a
    # rendering again into an existing posed set replaces it
    render_views(path, a, views=3, resolution=32, samples=1, elevation=(0.0, 30.0))
    assert (a / "transforms.json").read_text() == text_a
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    # the cameras sit where view_angles says, looking at the origin
    meta = json.loads(text_a)
    cams = cameras_from_transforms(meta)
    for cam, (az, el), frame in zip(cams, view_angles(3, (0.0, 30.0)), meta["frames"]):
        c = cam.center / np.linalg.norm(cam.center)
        assert math.degrees(math.asin(c[2])) == pytest.approx(el, abs=1e-4)
        assert math.degrees(math.atan2(c[0], -c[1])) % 360.0 == pytest.approx(az, abs=1e-4)
        assert frame["azimuth_deg"] == pytest.approx(az) and frame["elevation_deg"] == pytest.approx(el)
        # optical axis through the origin; image up = world +Z (no roll)
        assert cam.world_to_camera[:3, :3][2] @ -c == pytest.approx(1.0, abs=1e-6)
        assert cam.world_to_camera[:3, :3][1][2] < 0


@pytest.mark.blender
def test_unparsable_mesh_gives_mesh_error_and_no_output(bpy_module, tmp_path):
    from viewforge.bridge.render import render_views

    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"glTF\x02\x00\x00\x00 definitely not a mesh")
    with pytest.raises(MeshError) as e:
        render_views(bad, tmp_path / "out", views=2, resolution=32, samples=1)
    assert "broken.glb" in str(e.value) and "Fix:" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.glb"]
    # a file that parses but holds no faces is refused too
    empty = tmp_path / "points.obj"
    empty.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="no (faces|mesh objects)"):
        render_views(empty, tmp_path / "out", views=2, resolution=32, samples=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.blender
def test_obj_import_and_cancel(bpy_module, tmp_path):
    from viewforge.bridge.render import render_views

    # A 2 x 4 x 6 box in OBJ's Y-up convention: Blender imports it as 2 (x) x 6 (y) x 4 (z).
    lo, hi = np.array([1.0, -1.0, 0.0]), np.array([3.0, 3.0, 6.0])
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    quads = [(1, 2, 4, 3), (5, 6, 8, 7), (1, 2, 6, 5), (3, 4, 8, 7), (1, 3, 7, 5), (2, 4, 8, 6)]
    obj = tmp_path / "box.obj"
    lines = [f"v {x} {y} {z}" for x, y, z in corners] + [f"f {a} {b} {c} {d}" for a, b, c, d in quads]
    obj.write_text("\n".join(lines) + "\n")
    out = render_views(obj, tmp_path / "box", views=2, resolution=32, samples=1)
    meta = json.loads((out / "transforms.json").read_text())
    n = meta["normalization"]
    assert n["scale"] == pytest.approx(2.0 / 6.0)
    imported_centre = np.array([2.0, -3.0, 1.0])  # (x, -z, y) of the OBJ box centre (2, 1, 3)
    assert np.allclose(n["scale"] * imported_centre + np.array(n["offset"]), 0.0, atol=1e-6)

    # Colours are not tone-mapped: the box has no material, so Cycles shades it diffuse grey 0.8;
    # a convex diffuse surface under the uniform white world (strength 1) reflects exactly its
    # albedo, and the "Standard" view transform stores 0.8 linear as sRGB 0.906 = 231 (Filmic/AgX
    # would give other values).
    from PIL import Image

    img = np.asarray(Image.open(out / "images" / "0000.png")).astype(float)
    solid = img[..., 3] == 255
    assert solid.sum() > 50
    assert np.allclose(np.median(img[..., :3][solid], axis=0), 231.0, atol=2.0)

    token = CancelToken()

    def cancel_after_first_view(event):
        if event.step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        render_views(
            obj, tmp_path / "cancelled", views=4, resolution=32, samples=1, progress=cancel_after_first_view, cancel=token
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "box.obj"]


@pytest.mark.blender
@pytest.mark.shared_data
def test_duck_cli_silhouettes_contain_the_surface(bpy_module, tmp_path):
    """The CLI renders 24 views at 256 px of the Duck; >= 99 % of surface points
    of the normalised mesh project inside the alpha of every view."""
    from viewforge.engine.io.mesh import read_mesh

    out = tmp_path / "duck"
    proc = subprocess.run(
        [sys.executable, "-m", "viewforge", "render-views", str(DUCK), "-o", str(out),
         "--views", "24", "--resolution", "256"],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    meta, cams, rgba = load_posed(out)
    assert len(cams) == 24 and all(img.shape == (256, 256, 4) for img in rgba)
    # read_mesh converts glTF's +Y up to the engine's +Z up, exactly as Blender's importer does
    duck = read_mesh(DUCK)
    v = normalise(duck.vertices.astype(np.float64), meta)
    assert np.allclose(0.5 * (v.min(0) + v.max(0)), 0.0, atol=1e-5)
    assert (v.max(0) - v.min(0)).max() == pytest.approx(2.0, abs=1e-5)
    pts = normalise(sample_surface(duck.vertices, duck.faces, 20000), meta)
    fractions = [inside_alpha(c, img[..., 3] / 255.0, pts).mean() for c, img in zip(cams, rgba)]
    assert min(fractions) >= 0.99, fractions
