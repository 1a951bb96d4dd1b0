"""The ``viewforge`` command line (cli.py) and the procedural demo object (engine/demo.py).

Exit codes: 0 success, 2 bad input with one line ``viewforge: error: <what>. Fix: <how>.``,
1 unexpected error (traceback only with --debug), 130 on Ctrl-C; nothing is left at the output
path when a command fails.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from viewforge import cli
from viewforge.engine.demo import DemoConfig, demo_mesh, demo_texture

COMMANDS = [c.name for c in cli.COMMANDS]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "viewforge", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout, **kwargs
    )


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("viewforge: error: ") and ". Fix: " in lines[0] and lines[0].endswith("."), lines[0]
    return lines[0]


def _small_glb(tmp_path: Path) -> Path:
    from viewforge.engine.io.mesh import write_glb

    path = tmp_path / "small.glb"
    write_glb(demo_mesh(DemoConfig(segments=24, rings=14, texture_size=64)), path)
    return path


# ---------------------------------------------------------------------------------------------
# help and argument errors (no bpy)
# ---------------------------------------------------------------------------------------------


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert {"render-views", "demo"} <= set(COMMANDS)
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: viewforge {command}" in out
    if command not in ("generate", "poses"):  # generate's views are the generator's rig; poses takes all photos
        assert "--views" in out
    # every command writes an output (-o) except eval, which writes its --metrics
    assert ("--metrics" if command == "eval" else "-o") in out


def test_reconstruct_and_generate_defaults_are_the_config_defaults():
    from viewforge.engine.generate import GenerateConfig
    from viewforge.engine.mesh.pipeline import MeshConfig
    from viewforge.engine.recon import ReconConfig

    parser = cli.build_parser()
    r = parser.parse_args(["reconstruct", "in", "-o", "out.glb"])
    d = ReconConfig()
    assert (r.resolution, r.iterations, r.faces, r.texture_size, r.holdout, r.device, r.seed, r.complete, r.model) == (
        d.resolution, d.iterations, d.faces, d.texture_size, d.holdout, d.device, d.seed, d.complete, d.model)
    g = parser.parse_args(["generate", "img.png", "-o", "out.glb"])
    d = GenerateConfig()
    assert (g.model, g.steps, g.method, g.seed, g.faces, g.texture_size, g.size, g.iterations) == (
        d.model, d.steps, d.method, d.seed, d.faces, d.texture_size, d.size, d.fit_iterations)
    assert r.grid == g.grid == MeshConfig().grid


def test_python_dash_m_help_does_not_import_bpy():
    code = (
        "import sys\n"
        "from viewforge import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "for c in cli.COMMANDS:\n"
        "    try:\n"
        "        cli.main([c.name, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "assert 'bpy' not in sys.modules, 'bpy imported by --help'\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("--help")
    assert proc.returncode == 0 and "render-views" in proc.stdout and "demo" in proc.stdout
    script = Path(sys.executable).with_name("viewforge")
    if script.is_file():  # the console script installed by the set-up
        proc = subprocess.run([str(script), "render-views", "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "MESH" in proc.stdout


def test_no_command_prints_usage_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: viewforge" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, words",
    [
        (["render-views", "m.glb", "-o", "x", "--views", "zero"], "--views: invalid whole number"),
        (["render-views", "m.glb", "-o", "x", "--views", "0"], "--views: must be at least 1"),
        (["render-views", "m.glb"], "required: -o/--output"),
        (["demo"], "required: -o/--output"),
        (["generate", "cat.png"], "required: -o/--output"),
        (["generate", "cat.png", "-o", "c.glb", "--steps", "0"], "--steps: must be at least 1"),
        (["generate", "cat.png", "-o", "c.glb", "--size", "-1"], "--size: must be a positive length"),
        (["generate", "cat.png", "-o", "c.glb", "--method", "magic"], "--method: invalid choice"),
        (["generate", "cat.png", "-o", "c.glb", "--input-elevation", "95"], "--input-elevation: must be an elevation"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_argument_errors_are_one_line_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert words in line


def test_bad_input_errors_are_one_line_exit_2(tmp_path, capsys):
    glb = tmp_path / "m.glb"
    glb.write_bytes(b"x")
    (tmp_path / "m.stl").write_bytes(b"solid")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"keep")
    cases = [
        (["render-views", str(tmp_path / "missing.glb"), "-o", str(tmp_path / "o")], "does not exist"),
        (["render-views", str(tmp_path / "m.stl"), "-o", str(tmp_path / "o")], "not supported"),
        (["render-views", str(glb), "-o", str(tmp_path / "nowhere" / "o")], "output folder"),
        (["render-views", str(glb), "-o", str(foreign)], "not empty"),
        (["render-views", str(glb), "-o", str(tmp_path / "o"), "--elevation", "1", "2", "3"], "elevation"),
        (["render-views", str(glb), "-o", str(tmp_path / "o"), "--elevation", "95"], "elevation"),
        (["demo", "-o", str(tmp_path / "nowhere" / "demo")], "output folder"),
        (["demo", "-o", str(foreign)], "not empty"),
        (["demo", "-o", str(tmp_path / "d"), "--resolution", "2"], "resolution"),
    ]
    for args, words in cases:
        assert cli.main(args) == 2, args
        line = one_line_error(capsys.readouterr().err)
        assert words in line, (args, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.glb", "m.stl", "photos"]
    assert (foreign / "keep.jpg").read_bytes() == b"keep"


def test_missing_mesh_from_a_real_process(tmp_path):
    proc = run_cli("render-views", str(tmp_path / "nope.glb"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "nope.glb does not exist" in one_line_error(proc.stderr)
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_unexpected_errors_exit_1_traceback_only_with_debug(tmp_path, monkeypatch, capsys):
    import viewforge.bridge.render as render

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(render, "render_views", boom)
    glb = tmp_path / "m.glb"
    glb.write_bytes(b"x")
    assert cli.main(["render-views", str(glb), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unexpected error: RuntimeError: kaboom second line" in lines[0] and "--debug" in lines[0]
    assert cli.main(["render-views", str(glb), "-o", str(tmp_path / "o"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "kaboom" in err
    assert cli.main(["--debug", "render-views", str(glb), "-o", str(tmp_path / "o")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import viewforge.bridge.render as render
    from viewforge.engine.io.atomic import atomic_dir

    def interrupted(mesh, out, **kwargs):
        with atomic_dir(out) as tmp:
            (tmp / "transforms.json").write_text("{}")
            raise KeyboardInterrupt

    monkeypatch.setattr(render, "render_views", interrupted)
    glb = tmp_path / "m.glb"
    glb.write_bytes(b"x")
    assert cli.main(["render-views", str(glb), "-o", str(tmp_path / "o")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.glb"]


def test_progress_bar_follows_events(capsys):
    from viewforge.engine.progress import ProgressEvent

    bar = cli.ProgressBar(enabled=True)
    for i in range(4):
        bar(ProgressEvent("render", i / 3, f"view {i}/3", i, 3))
    bar(ProgressEvent("mesh", 0.5, "half"))
    bar.close()
    err = capsys.readouterr().err
    assert "render" in err and "3/3" in err and "mesh" in err and "50/100" in err
    quiet = cli.ProgressBar(enabled=False)
    quiet(ProgressEvent("render", 0.5, "", 1, 2))
    quiet.close()
    assert capsys.readouterr().err == ""
    assert cli.ProgressBar().enabled is False  # stderr is not a terminal under pytest


def test_progress_lines_when_stdout_is_not_a_terminal(capsys):
    """Off a terminal (a log): one line as each stage starts, then at most one every 10 s."""
    from viewforge.engine.progress import ProgressEvent, ProgressLines

    bar = cli.ProgressBar(enabled=False)  # stdout is captured, so not a terminal: lines on
    assert bar.lines is not None
    now = [0.0]
    bar.lines.clock = lambda: now[0]
    for step in range(100):  # one step every 0.5 s: 50 s of fitting
        now[0] = step * 0.5
        bar(ProgressEvent("fit", step / 100, f"step {step}/100", step, 100))
    bar(ProgressEvent("mesh", 0.0, "surface"))
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.splitlines() == [
        "viewforge progress: fit 0% (step 0/100)", "viewforge progress: fit 20% (step 20/100)",
        "viewforge progress: fit 40% (step 40/100)", "viewforge progress: fit 60% (step 60/100)",
        "viewforge progress: fit 80% (step 80/100)", "viewforge progress: mesh 0% (surface)"]
    assert cli.ProgressBar(lines=False).lines is None
    lines = ProgressLines(stream=None, clock=lambda: 0.0)
    lines(ProgressEvent("load", 1.0))
    assert capsys.readouterr().out == "viewforge: load 100%\n"


# ---------------------------------------------------------------------------------------------
# real runs (bpy, Cycles at tiny sizes)
# ---------------------------------------------------------------------------------------------


@pytest.mark.blender
def test_unparsable_mesh_exits_2_and_writes_nothing(bpy_module, tmp_path):
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"this is not a glTF file")
    proc = run_cli("render-views", str(bad), "-o", str(tmp_path / "out"), "--views", "2", "--resolution", "32")
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert "broken.glb could not be read" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.glb"]


@pytest.mark.blender
def test_render_views_cli_success(bpy_module, tmp_path):
    glb = _small_glb(tmp_path)
    proc = run_cli(
        "render-views", str(glb), "-o", str(tmp_path / "posed"), "--views", "2", "--resolution", "32",
        "--samples", "1", "--elevation", "10", "--fov", "30", "--seed", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # quiet off a terminal: no progress bar, no Blender chatter
    assert "wrote 2 RGBA views" in proc.stdout and str(tmp_path / "posed") in proc.stdout
    meta = json.loads((tmp_path / "posed" / "transforms.json").read_text())
    assert [f["elevation_deg"] for f in meta["frames"]] == [10.0, 10.0]
    assert meta["renderer"]["seed"] == 3 and meta["w"] == 32
    assert meta["camera_angle_x"] == pytest.approx(np.radians(30.0))


@pytest.mark.blender
def test_ctrl_c_during_render_exits_130_and_leaves_nothing(bpy_module, tmp_path):
    glb = _small_glb(tmp_path)
    out = tmp_path / "posed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "viewforge", "render-views", str(glb), "-o", str(out),
         "--views", "500", "--resolution", "32", "--samples", "1"],  # fmt: skip
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".posed.*.part/images/0001.png")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert list(tmp_path.glob(".posed.*.part/images/0001.png")), "rendering never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.glb"]


@pytest.mark.blender
def test_demo_end_to_end(bpy_module, tmp_path):
    from PIL import Image

    from viewforge.engine.io.mesh import read_mesh

    out = tmp_path / "demo.glb"
    folder = tmp_path / "demo"
    proc = run_cli("demo", "-o", str(out), "--views", "6", "--resolution", "64", "--samples", "4",
                   "--iterations", "60", "--fit-resolution", "48", "--faces", "2000", "--texture-size", "128",
                   "--grid", "48")
    assert proc.returncode == 0, proc.stderr
    for word in ("object.glb", "posed/transforms.json", "posed/images/", "reconstruction.glb", str(out), str(folder)):
        assert word in proc.stdout
    # stdout is a pipe (a log): progress as lines, one as each stage starts (render, fit, mesh, ...)
    progress = [ln for ln in proc.stdout.splitlines() if ln.startswith("viewforge progress: ")]
    stages = [ln.split()[2] for ln in progress]
    assert "render" in stages and "fit" in stages, progress
    assert len(progress) < 60, progress  # a 10 s throttle per stage, not a line per step
    mesh = read_mesh(folder / "object.glb")
    ref = demo_mesh()
    assert mesh.num_faces == ref.num_faces
    assert np.allclose(mesh.vertices, ref.vertices, atol=1e-6)
    assert mesh.texture is not None and mesh.texture.shape[:2] == (1024, 1024)
    meta = json.loads((folder / "posed" / "transforms.json").read_text())
    assert len(meta["frames"]) == 6 and meta["source_mesh"] == "object.glb"
    for f in meta["frames"]:
        img = np.asarray(Image.open(folder / "posed" / f["file_path"]))
        assert img.shape == (64, 64, 4)
        assert (img[..., 3] > 127).mean() > 0.05
        # the textured object is colourful, not a flat grey
        fg = img[..., :3][img[..., 3] == 255].astype(int)
        assert len(np.unique(fg // 32, axis=0)) >= 8
    assert sorted(p.name for p in folder.iterdir()) == [
        "metrics.json", "object.glb", "posed", "reconstruction.glb", "splats.ply"]
    recon = read_mesh(out)
    assert recon.num_faces <= 2000 and recon.texture.shape[:2] == (128, 128)
    assert np.array_equal(recon.faces, read_mesh(folder / "reconstruction.glb").faces)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["views"] == 5 and metrics["holdout"] == 1 and metrics["psnr"] > 10.0
    assert metrics["num_faces"] == recon.num_faces and 0 < metrics["fscore"] <= 1 and metrics["chamfer"] > 0
    assert "held-out PSNR" in proc.stdout and "F-score" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo.glb"]
    # a folder output works too, and running again replaces the earlier demo output
    proc = run_cli("demo", "-o", str(folder), "--views", "2", "--resolution", "32", "--samples", "1", "--iterations", "0")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((folder / "posed" / "transforms.json").read_text())["frames"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["object.glb", "posed"]


# ---------------------------------------------------------------------------------------------
# the demo object
# ---------------------------------------------------------------------------------------------


def _merged_edges(mesh) -> np.ndarray:
    """Undirected edges with vertices merged by position (UV seams closed)."""
    _, inv = np.unique(np.round(mesh.vertices / 1e-6).astype(np.int64), axis=0, return_inverse=True)
    f = inv.ravel()[mesh.faces]
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return e


def test_demo_mesh_is_deterministic_closed_and_outward():
    m = demo_mesh()
    again = demo_mesh()
    for key in ("vertices", "faces", "normals", "uvs", "texture"):
        assert np.array_equal(getattr(m, key), getattr(again, key)), key
    assert 5000 <= m.num_faces <= 20000
    assert m.normals is not None and m.uvs is not None and m.texture is not None
    # closed: every (position-merged) edge is used by exactly two faces, once in each direction
    e = _merged_edges(m)
    directed, counts = np.unique(e, axis=0, return_counts=True)
    assert counts.max() == 1, "an edge is used twice in the same direction (inconsistent winding)"
    undirected, counts = np.unique(np.sort(e, axis=1), axis=0, return_counts=True)
    assert np.all(counts == 2), "open boundary or non-manifold edge"
    # outward: positive enclosed volume, normals agree with face orientation
    tri = m.vertices[m.faces].astype(np.float64)
    assert np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6 > 0.5
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = m.normals[m.faces].mean(axis=1)
    assert (np.einsum("ij,ij->i", fn, vn) > 0).mean() > 0.99
    assert np.allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-5)
    assert m.uvs.min() >= 0.0 and m.uvs.max() <= 1.0


def test_demo_mesh_has_no_symmetry_that_hides_the_pose():
    m = demo_mesh()
    v = m.vertices
    lo, hi = v.min(0), v.max(0)
    # the handle sticks out on +X, the nose on +Y: neither axis is mirror-symmetric
    assert hi[0] > -lo[0] + 0.2
    head = v[(v[:, 2] > 1.55) & (v[:, 2] < 1.85)]  # the nose sits on the head
    assert head[:, 1].max() > -head[:, 1].min() + 0.15
    assert lo[2] == pytest.approx(0.0, abs=0.01)


def test_demo_texture_has_detail_everywhere():
    t = demo_texture(512)
    assert t.shape == (512, 512, 3) and t.dtype == np.uint8
    assert np.array_equal(t, demo_texture(512))
    assert len(np.unique(t.reshape(-1, 3) // 16, axis=0)) > 200  # colourful
    g = np.abs(np.diff(t.astype(int), axis=1)).sum(-1)
    # every 64 px tile has edges (checker, rings, stripes): reconstruction has texture to match
    tiles = g[:, :504].reshape(8, 64, 8, 63)
    assert np.all((tiles > 30).sum(axis=(1, 3)) > 20)


# ---------------------------------------------------------------------------------------------
# generate (a tiny randomly initialised Zero123++ saved to a temp folder; no weights needed)
# ---------------------------------------------------------------------------------------------

#: Small settings: the run takes ~20 s on a 2-core CPU.
GENERATE_FAST = ["--device", "cpu", "--iterations", "60", "--grid", "48", "--faces", "1500", "--texture-size", "128"]


def test_generate_tiny_model_end_to_end(tiny_model, disc_png, tmp_path, capsys):
    import re

    import trimesh

    from viewforge.engine.io.mesh import read_mesh

    out, metrics = tmp_path / "disc.glb", tmp_path / "m.json"
    code = cli.main(["generate", str(disc_png), "-o", str(out), "--model", str(tiny_model), "--size", "2",
                     "--seed", "3", "--metrics", str(metrics), "--no-rvc", *GENERATE_FAST])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = "\n".join(ln for ln in captured.out.strip().splitlines() if not ln.startswith("viewforge progress: "))
    match = re.fullmatch(rf"viewforge generate: wrote {re.escape(str(out))} \((\d+) faces, (\d+) generator evaluations, (\d+) s\)", line)
    assert match, line
    m = json.loads(metrics.read_text())
    assert int(match.group(1)) == m["num_faces"] and 100 < m["num_faces"] <= 1500
    assert int(match.group(2)) == m["generator_evals"] == 8  # 4 guided steps
    assert m["generator"] == "zero123pp-v1.2" and m["steps"] == 4 and m["method"] == "aware"
    mesh = read_mesh(out)  # back in Blender's frame (Z up)
    lo, hi = mesh.bounds()
    assert abs(float((hi - lo).max()) - 2.0) < 1e-3 and abs(float(lo[2])) < 1e-4  # --size 2, standing on z = 0
    assert np.allclose((lo[:2] + hi[:2]) / 2, 0, atol=1e-3)
    geom = next(iter(trimesh.load(out).geometry.values()))
    assert geom.visual.material.baseColorTexture.size == (128, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.glb", "disc.png", "m.json"]


def test_generate_bad_inputs_exit_2_and_write_nothing(tiny_model, disc_png, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    model = ["--model", str(tiny_model)]
    cases = [
        (["generate", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "a.glb"), *model], "notes.txt"),
        (["generate", str(tmp_path / "missing.png"), "-o", str(tmp_path / "a.glb"), *model], "missing.png"),
        (["generate", str(disc_png), "-o", str(tmp_path / "a.obj"), *model], "not an output format"),
        (["generate", str(disc_png), "-o", str(tmp_path / "nowhere" / "a.glb"), *model], "nowhere"),
        (["generate", str(disc_png), "-o", str(tmp_path / "a.glb"), "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["generate", str(disc_png), "-o", str(tmp_path / "a.glb"), "--model", str(tmp_path)], "has no viewforge_generator.json"),
    ]
    for args, words in cases:
        t = time.perf_counter()
        assert cli.main(args) == 2, args
        line = one_line_error(capsys.readouterr().err)
        assert words in line, (args, line)
        assert time.perf_counter() - t < 10, args  # checked before any model is loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.png", "notes.txt"]


def test_generate_missing_weights_offline(disc_png, tmp_path, monkeypatch, capsys):
    """The registry id with an empty model cache and no download allowed: one line that names the
    model and its download size and says how to allow the download; exit 2; nothing written."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "disc.glb"
    assert cli.main(["generate", str(disc_png), "-o", str(out), "--device", "cpu"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "Zero123++ v1.2 weights" in line and "sudo-ai/zero123plus-v1.2" in line and "3.9 GB" in line, line
    assert "--allow-download" in line and "not in the local model cache" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.png"]


@pytest.mark.blender
def test_generate_to_blend(bpy_module, disc_png, tmp_path, monkeypatch, capsys):
    """``-o OUT.blend``: the generated mesh (a stand-in here) becomes the only object of a .blend."""
    import viewforge.engine.generate as gen
    from viewforge.engine.io.mesh import write_mesh

    seen = {}

    def fake_generate(image, output, config, metrics_path=None, progress=None, cancel=None):
        seen.update(output=Path(output), config=config)
        mesh = demo_mesh(DemoConfig(segments=12, rings=8, texture_size=32))
        write_mesh(mesh, output)
        return gen.GenerateResult(Path(output), mesh, [], {"num_faces": mesh.num_faces, "generator_evals": 8})

    monkeypatch.setattr(gen, "generate", fake_generate)
    out = tmp_path / "disc.blend"
    assert cli.main(["generate", str(disc_png), "-o", str(out), "--steps", "2", "--seed", "5", "--faces", "900"]) == 0
    assert f"wrote {out} (" in capsys.readouterr().out
    assert seen["output"].suffix == ".glb" and seen["output"].parent != tmp_path  # a temporary .glb
    cfg = seen["config"]
    assert (cfg.steps, cfg.seed, cfg.faces, cfg.model, cfg.allow_download) == (2, 5, 900, "zero123pp-v1.2", False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.blend", "disc.png"]
    bpy_module.ops.wm.open_mainfile(filepath=str(out))
    objs = [o for o in bpy_module.data.objects if o.type == "MESH"]
    assert len(objs) == 1 and len(objs[0].data.polygons) == demo_mesh(DemoConfig(segments=12, rings=8, texture_size=32)).num_faces


def test_generate_help_states_the_cpu_time_and_recommends_a_gpu(capsys):
    from viewforge.engine.speed import CPU_MINUTES

    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"On a CPU one generation takes about {CPU_MINUTES} minutes at full size" in text
    assert "NVIDIA GPU" in text and "Apple silicon" in text and "--input-elevation DEG" in text
