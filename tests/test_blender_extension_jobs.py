"""A job started from the *installed* extension (module ``bl_ext.user_default.viewforge``) runs
in a worker that imports the extension from its folder (the worker has no ``bl_ext``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.blender


def test_installed_extension_runs_jobs_in_a_worker(blender, tmp_path):
    spec = importlib.util.spec_from_file_location("build_extension", REPO / "scripts" / "build_extension.py")
    build_extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_extension)
    bpy = blender
    zip_path = build_extension.build(tmp_path / "dist")
    repos = [r.module for r in bpy.context.preferences.extensions.repos]
    module = "bl_ext.user_default.viewforge"
    try:
        assert bpy.ops.extensions.package_install_files(
            filepath=str(zip_path), repo="user_default", enable_on_install=True) == {"FINISHED"}
        jobs = importlib.import_module(module + ".engine.jobs")
        assert jobs.__name__ == module + ".engine.jobs"
        name, extra = jobs._worker_module()
        assert name == "viewforge.engine.worker"
        assert (Path(extra) / "viewforge" / "engine" / "worker.py").is_file()
        assert Path(extra) != REPO.parent
        path_before = list(sys.path)
        job = jobs.JobProcess(jobs.JobSpec("generate", str(tmp_path / "cat.png"), str(tmp_path / "cat.glb")))
        assert sys.path == path_before  # the extension's parent was on the path only while starting
        assert job.wait(timeout=60)
        # the worker ran the installed extension's generate job: it reports the missing image
        assert job.state == "failed" and "cat.png" in str(job.error)
        assert type(job.error).__name__ == "ImageError"
        # the operators of the installed extension see the dependencies installed in this venv
        assert bpy.ops.viewforge.reconstruct.poll() is True
    finally:
        bpy.ops.extensions.package_uninstall(repo_index=repos.index("user_default"), pkg_id="viewforge")
