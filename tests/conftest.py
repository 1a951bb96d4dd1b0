"""Shared test set-up.

Before anything imports bpy or huggingface-hub: point HOME and the caches at a throw-away folder
(bpy writes caches and user resources under HOME) and force the hub offline (a hub call would
otherwise hang for 20+ s before failing). CI sets these too; here they are a safety net for a
plain ``pytest`` run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

_TMP_HOME = Path(tempfile.mkdtemp(prefix="viewforge-test-home-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cli.main(): no spinning OpenMP threads (cli._quiet_openmp)
os.environ.setdefault("VIEWFORGE_TEST", "1")
if os.environ.get("CI") != "true" or "BLENDER_USER_RESOURCES" not in os.environ:
    os.environ["HOME"] = str(_TMP_HOME)
    os.environ["XDG_CACHE_HOME"] = str(_TMP_HOME / "cache")
    os.environ["XDG_CONFIG_HOME"] = str(_TMP_HOME / "config")
    os.environ["BLENDER_USER_RESOURCES"] = str(_TMP_HOME / "blender")
    os.environ["HF_HOME"] = str(_TMP_HOME / "hf")

REPO = Path(__file__).resolve().parents[1]
#: Real third-party evaluation data; never required by unit tests (a user's clone lacks it).
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason=f"needs {SHARED_DATA} (evaluation data, not in a user's clone)")
    for item in items:
        if "shared_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def bpy_module():
    """The bpy module (Blender as a Python module); skips when it is not installed."""
    return pytest.importorskip("bpy")


@pytest.fixture
def blender(bpy_module):
    """bpy after a factory reset to an empty scene: every Blender test starts from the same state."""
    bpy_module.ops.wm.read_factory_settings(use_empty=True)
    yield bpy_module


@pytest.fixture
def registered(blender):
    """bpy (an empty scene) with the extension registered and no last job outcome; unregisters
    after the test, and no job may be left running."""
    import viewforge
    from viewforge.bridge import jobs

    viewforge.register()
    jobs.LAST = None
    yield blender
    viewforge.unregister()
    assert jobs.ACTIVE is None


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised Zero123++ checkpoint saved like the real one (loads through the
    real loading code as ``model=str(path)``)."""
    from tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_zero123pp"), seed=0)


@pytest.fixture
def disc_png(tmp_path):
    """An orange disc on white, 160 px: an input image for generate."""
    import numpy as np

    from viewforge.engine.images import save_png

    img = np.ones((160, 160, 3), np.float32)
    yy, xx = np.mgrid[:160, :160]
    img[(xx - 80) ** 2 + (yy - 80) ** 2 < 50**2] = [0.8, 0.3, 0.1]
    return save_png(tmp_path / "disc.png", img)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """Photos WITHOUT cameras for structure from motion: the demo object with a multi-scale noise
    texture (unique detail for SIFT) rendered by the engine's mesh rasterizer from 16 cameras on
    two rings, 256 px RGBA. Returns (true cameras, folder holding only the photos)."""
    import math
    from dataclasses import replace

    import numpy as np

    from viewforge.engine.cameras import Camera, look_at
    from viewforge.engine.demo import DemoConfig, demo_mesh, noise_texture
    from viewforge.engine.images import save_png
    from viewforge.engine.mesh.raster import render_textured

    mesh = replace(demo_mesh(DemoConfig(segments=64, rings=40, texture_size=64)), texture=noise_texture())
    folder = tmp_path_factory.mktemp("photos_without_cameras")
    px, f = 256, 0.5 * 256 / math.tan(math.radians(20.0))
    cams = []
    for k in range(16):
        az, el = 2 * math.pi * k / 16, math.radians((15.0, 35.0)[k % 2])
        eye = np.array([3.4 * math.cos(el) * math.cos(az), 3.4 * math.cos(el) * math.sin(az), 1.0 + 3.4 * math.sin(el)])
        cam = Camera(f, f, px / 2, px / 2, px, px, look_at(eye, (0, 0, 1.0)), name=f"v{k:02d}")
        rgb, alpha = render_textured(mesh, cam, supersample=2)
        save_png(folder / f"{cam.name}.png", rgb, alpha)
        cams.append(cam)
    return cams, folder
