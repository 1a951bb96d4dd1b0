"""Generate from one image, end to end on CPU: a tiny Zero123++ checkpoint saved to a temp folder
and loaded through the real loading code -> 3D-aware 4-step sampling -> a textured GLB."""

from __future__ import annotations

import numpy as np
import pytest

from viewforge.engine.errors import Cancelled, ImageError, InputError, OutputError
from viewforge.engine.progress import CancelToken

FAST = dict(device="cpu", fit_iterations=60, warm_iterations=20, faces=1500, texture_size=128,
            mesh={"fuse_views": 12, "fuse_size": 64, "grid": 48, "bake_render_views": 4},
            fit={"init_points": 1500, "refine_start": 30, "refine_every": 15})


def test_generate_tiny_model_to_textured_glb(tiny_model, disc_png, tmp_path):
    import trimesh

    from viewforge.engine.generate import GenerateConfig, generate

    events = []
    out = tmp_path / "disc.glb"
    res = generate(disc_png, out, GenerateConfig(model=str(tiny_model), size=2.0, **FAST),
                   metrics_path=tmp_path / "m.json", progress=events.append)
    assert out.is_file() and (tmp_path / "m.json").is_file()
    assert res.metrics["generator_evals"] == 8  # 4 guided steps: conditional + unconditional each
    assert res.metrics["generator"] == "zero123pp-v1.2" and res.metrics["num_faces"] > 100
    lo, hi = res.mesh.bounds()
    assert abs(float((hi - lo).max()) - 2.0) < 1e-4 and abs(float(lo[2])) < 1e-5  # standing on z = 0
    assert np.allclose((lo[:2] + hi[:2]) / 2, 0, atol=1e-4)
    scene = trimesh.load(out)
    geom = next(iter(scene.geometry.values()))
    assert geom.visual.material.baseColorTexture.size == (128, 128)
    assert {"sample", "bake"} <= {e.stage for e in events}


def test_generate_bad_inputs_write_nothing(tiny_model, disc_png, tmp_path):
    from viewforge.engine.generate import GenerateConfig, generate

    cfg = GenerateConfig(model=str(tiny_model), **FAST)
    with pytest.raises(OutputError, match="not an output format"):
        generate(disc_png, tmp_path / "x.obj", cfg)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError):
        generate(tmp_path / "notes.txt", tmp_path / "a.glb", cfg)
    with pytest.raises(InputError, match="unknown model"):
        generate(disc_png, tmp_path / "a.glb", GenerateConfig(model="no-such-model", **{**FAST}))
    token = CancelToken()

    def cancel_on_sample(ev):
        if ev.stage == "sample":
            token.cancel()

    with pytest.raises(Cancelled):
        generate(disc_png, tmp_path / "a.glb", cfg, progress=cancel_on_sample, cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.png", "notes.txt"]
