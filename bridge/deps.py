"""Engine dependencies inside Blender: detection, and installing them into the extension's user folder.

The extension zip bundles only light pure-Python wheels (blender_manifest.toml). The heavy engine
dependencies (torch, gsplat, numba, OpenCV, SciPy, scikit-image, the mesh tools, Pillow,
diffusers) are installed from the add-on preferences with pip, *into the extension's user
directory* (``<Blender user folder>/extensions/.user/<repo>/viewforge/site-packages``), which is
added to ``sys.path`` when the extension registers. Nothing is installed into Blender's own Python.

* :func:`missing` / :func:`check` -- which import names a job kind needs and which cannot be
  found (``importlib.util.find_spec``; nothing is imported). The run buttons are disabled with the
  fix while something is missing.
* :func:`install_command` -- the pip command line: ``python -m pip install --target DIR -r REQ
  [-c constraints.txt] [--no-index --find-links WHEELS] [--extra-index-url URL]``. The
  requirements are the pinned engine requirements (``engine-requirements.txt``, a copy of the
  repository's requirements.txt, with ``engine-constraints.txt`` as constraints) for the
  platform: torch from the default index (CUDA on Linux, MPS on Apple silicon, CPU elsewhere; a
  CUDA build on Windows needs the PyTorch wheel index as "extra index URL").
* :class:`PipInstall` -- runs that command in a subprocess with the same polling interface as a
  job worker (:class:`viewforge.engine.jobs.JobProcess`): ``poll()``, ``cancel()``, ``state``,
  ``stage``, ``fraction``, ``message``, ``error``. Progress comes from pip's output.

Network: an install that would use the network is refused while Blender's "Allow Online Access"
(``bpy.app.online_access``) is off; a local wheel folder (``--no-index --find-links``) needs no
network and is always allowed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine.errors import Cancelled, DependencyError, InputError
from ..engine.progress import poll_until_done

log = logging.getLogger(__name__)

#: The extension's root folder.
ROOT = Path(__file__).resolve().parents[1]
#: Copies of the repository's requirements.txt and constraints.txt that ship inside the extension
#: (scripts/build_extension.py refreshes them; a test checks they are identical).
ENGINE_REQUIREMENTS = Path(__file__).with_name("engine-requirements.txt")
ENGINE_CONSTRAINTS = Path(__file__).with_name("engine-constraints.txt")
#: The extension's package name: "viewforge", or "bl_ext.<repo>.viewforge" inside Blender.
PACKAGE = __name__.rsplit(".", 2)[0]

#: import name -> distribution name, per job kind (what the job's code imports).
REQUIRED: dict[str, dict[str, str]] = {
    "reconstruct": {
        "torch": "torch",
        "numba": "numba",
        "cv2": "opencv-python-headless",
        "scipy": "scipy",
        "pytorch_msssim": "pytorch-msssim",
        "skimage": "scikit-image",
        "fast_simplification": "fast-simplification",
        "xatlas": "xatlas",
        "plyfile": "plyfile",
        "trimesh": "trimesh",
        "PIL": "pillow",
        "gsplat": "gsplat",  # its densification strategy is used on every device
    },
    "generate": {"torch": "torch", "diffusers": "diffusers", "transformers": "transformers", "safetensors": "safetensors"},
    # photos without cameras: structure from motion
    "poses": {"pycolmap": "pycolmap"},
}

#: Distributions not installed by the dependency installer: bundled as wheels (trimesh, plyfile),
#: shipped with Blender (numpy), or for development only.
NOT_INSTALLED = {"trimesh", "plyfile", "numpy", "bpy", "pytest", "pygltflib"}
#: Distributions installed only for the CUDA platform (none today: gsplat's densification
#: strategy runs on every device; its CUDA kernels are compiled only when used on CUDA).
CUDA_ONLY: set[str] = set()
PLATFORMS = ("cuda", "cpu", "mps")

#: Used by tests to simulate missing dependencies (``monkeypatch.setattr(deps, "find_spec", ...)``).
find_spec = importlib.util.find_spec


def missing(kind: str = "reconstruct") -> list[str]:
    """Distribution names of the dependencies of job ``kind`` that cannot be imported."""
    out = []
    for module, dist in REQUIRED.get(kind, {}).items():
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(dist)
    return out


def missing_message(names: list[str]) -> DependencyError:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return DependencyError(
        f"missing engine dependencies: {shown}",
        "install them in Edit > Preferences > Add-ons > Viewforge > Install Dependencies",
    )


def check(kind: str = "reconstruct") -> None:
    """Raise a :class:`DependencyError` naming what is missing for job ``kind``."""
    names = missing(kind)
    if names:
        raise missing_message(names)


# ---------------------------------------------------------------------------------------------
# Where dependencies go
# ---------------------------------------------------------------------------------------------


def user_site_packages(create: bool = False) -> Path:
    """The extension's private ``site-packages`` folder in Blender's user directory."""
    import bpy

    try:
        base = Path(bpy.utils.extension_path_user(PACKAGE, path="", create=create))
    except ValueError:  # not installed as an extension (development checkout, tests)
        base = Path(bpy.utils.user_resource("DATAFILES", path="viewforge", create=create))
    path = base / "site-packages"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def add_to_path(path: Path | None = None) -> str | None:
    """Append the user site-packages to ``sys.path`` (after Blender's own, so Blender's numpy wins);
    returns the entry added, or None when the folder does not exist or is already there."""
    try:
        p = str(path or user_site_packages())
    except Exception:  # noqa: BLE001  (no user directory: nothing installed there)
        return None
    if not os.path.isdir(p) or p in sys.path:
        return None
    sys.path.append(p)
    importlib.invalidate_caches()
    return p


def remove_from_path(entry: str | None) -> None:
    if entry and entry in sys.path:
        sys.path.remove(entry)


def online_access() -> bool:
    """Blender's "Allow Online Access" (False outside Blender)."""
    try:
        import bpy

        return bool(bpy.app.online_access)
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------------------------
# What to install and the pip command
# ---------------------------------------------------------------------------------------------


def detect_platform() -> str:
    """"mps" on Apple silicon, "cuda" where an NVIDIA driver is present, else "cpu"."""
    import platform
    import shutil

    if sys.platform == "darwin":
        return "mps" if platform.machine() == "arm64" else "cpu"
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists():
        return "cuda"
    return "cpu"


_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(==\s*[^\s;#]+)?")


def engine_requirements(platform: str, requirements: Path | None = None) -> list[str]:
    """The pinned requirement lines to install for ``platform`` ("cuda", "cpu" or "mps"), from the
    extension's requirements.txt without what Blender or the bundled wheels already provide."""
    if platform not in PLATFORMS:
        raise InputError(f"unknown platform '{platform}'", f"use one of {', '.join(PLATFORMS)}")
    req = requirements or ENGINE_REQUIREMENTS
    if not req.is_file():
        raise DependencyError(
            f"the engine requirements list {req} is missing from the extension",
            "reinstall the Viewforge extension from its zip",
        )
    out = []
    for line in req.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line.split("#", 1)[0])
        if not m:
            continue
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        if name in NOT_INSTALLED or (name in CUDA_ONLY and platform != "cuda"):
            continue
        out.append(m.group(1) + (m.group(2) or "").replace(" ", ""))
    return out


@dataclass(frozen=True)
class InstallOptions:
    """target: the folder packages go to. requirements: requirement lines. find_links: a local
    wheel folder (then no index is used, no network). extra_index_url: another package index
    (e.g. the PyTorch CUDA wheels for Windows). constraints: a constraints file (pins for the
    dependencies of the requirements)."""

    target: Path
    requirements: tuple[str, ...]
    find_links: Path | None = None
    extra_index_url: str = ""
    constraints: Path | None = None


def install_command(opts: InstallOptions, requirements_file: Path, python: str = sys.executable) -> list[str]:
    """The pip command line for ``opts`` (``requirements_file`` holds ``opts.requirements``)."""
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--upgrade",
           "--target", str(opts.target), "-r", str(requirements_file)]  # fmt: skip
    if opts.constraints is not None and opts.constraints.is_file():
        cmd += ["-c", str(opts.constraints)]
    if opts.find_links is not None:
        cmd += ["--no-index", "--find-links", str(opts.find_links)]
    elif opts.extra_index_url:
        cmd += ["--extra-index-url", opts.extra_index_url]
    return cmd


def check_install_allowed(opts: InstallOptions, online: bool | None = None) -> None:
    """Refuse an install that needs the network while online access is off, or a missing folder."""
    if opts.find_links is not None:
        if not opts.find_links.is_dir():
            raise InputError(
                f"the local wheel folder {opts.find_links} does not exist",
                "choose an existing folder of .whl files in the Viewforge preferences, or clear it to download",
            )
        return
    if not (online_access() if online is None else online):
        raise DependencyError(
            "installing the engine dependencies needs the internet, and Blender's online access is off",
            "enable Edit > Preferences > System > Network > Allow Online Access, or set a local wheel folder "
            "in the Viewforge preferences",
        )


# ---------------------------------------------------------------------------------------------
# The install process
# ---------------------------------------------------------------------------------------------


class PipInstall:
    """``pip install`` in a subprocess, polled like a job worker (see the module docstring).
    ``result`` is the list of installed distributions ("name-version") when it succeeds."""

    kind = "install"

    def __init__(self, opts: InstallOptions, python: str = sys.executable) -> None:
        import tempfile

        check_install_allowed(opts)
        opts.target.mkdir(parents=True, exist_ok=True)
        self.opts = opts
        self.state = "running"
        self.stage = "install"
        self.fraction = 0.0
        self.message = "starting pip"
        self.result: list[str] | None = None
        self.error = None
        self.started = time.monotonic()
        self.log: list[str] = []
        self._collected = 0
        self._cancelled = False
        fd, req = tempfile.mkstemp(prefix="viewforge-requirements-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(opts.requirements) + "\n")
        self._req = Path(req)
        self.command = install_command(opts, self._req, python)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_COLOR="1", PIP_PROGRESS_BAR="off")
        self._proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, bufsize=1, env=env,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def cancelling(self) -> bool:
        return self._cancelled and self.state == "running"

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip())
        self._lines.put(None)

    def _on_line(self, line: str) -> None:
        self.log.append(line)
        n = max(len(self.opts.requirements), 1)
        if line.startswith("Collecting ") or line.startswith("Processing "):
            self._collected += 1
            self.stage = "download"
            self.fraction = min(0.8 * self._collected / (2 * n), 0.8)  # dependencies roughly double the count
            self.message = line.split(" ", 1)[1][:60]
        elif line.startswith("Installing collected packages"):
            self.stage, self.fraction, self.message = "install", 0.85, "installing"
        elif line.startswith("Successfully installed"):
            self.result = line.split()[2:]
            self.fraction, self.message = 1.0, f"installed {len(self.result)} packages"

    def cancel(self) -> None:
        if self.state == "running" and not self._cancelled:
            self._cancelled = True
            self._proc.terminate()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()

    def poll(self) -> bool:
        if self.state != "running":
            return False
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = True
                break
            self._on_line(line)
        if not ended:
            return True
        code = self._proc.wait()
        self._req.unlink(missing_ok=True)
        if self._cancelled:
            self.state, self.error = "cancelled", Cancelled("the dependency install was cancelled")
        elif code != 0:
            errors = [ln for ln in self.log if ln.startswith("ERROR")] or self.log[-1:] or [f"exit code {code}"]
            self.state = "failed"
            self.error = DependencyError(
                f"installing the engine dependencies failed: {errors[-1][:300]}",
                "check the network (or the local wheel folder) and retry; the console shows pip's full output",
            )
        else:
            self.state, self.fraction = "done", 1.0
            self.result = self.result or []
            importlib.invalidate_caches()
            add_to_path(self.opts.target)
        return False

    def wait(self, timeout: float | None = None, interval: float = 0.05, on_progress=None) -> bool:
        tick = None if on_progress is None else (lambda: on_progress(self))
        return poll_until_done(self.poll, timeout, interval, tick)


__all__ = [
    "InstallOptions",
    "PipInstall",
    "REQUIRED",
    "add_to_path",
    "check",
    "check_install_allowed",
    "detect_platform",
    "engine_requirements",
    "install_command",
    "missing",
    "online_access",
    "user_site_packages",
]
