"""The engine Python: another Python environment (a venv or conda environment, e.g. one that
already has CUDA torch) in which the job worker runs instead of Blender's Python.

Set by the add-on preference *Engine Python* or, when that is empty, the environment variable
``VIEWFORGE_ENGINE_PYTHON`` (scripts, CI): a python executable or an environment folder (its
``bin/python``). With one set, jobs run as :class:`viewforge.engine.jobs.SubprocessJob` and
nothing heavy needs installing into Blender; without, as today (:class:`JobProcess`, Blender's
Python with the dependencies from the preferences).

:func:`probe` checks it before a job (and on the *Check Engine Python* button): the file is there
and runs, ``--version`` says Python 3.11 or newer, then a short script run by it reports its
version, torch's version and whether CUDA is usable, and which engine imports are missing. Each
failure is a :class:`~viewforge.engine.errors.DependencyError` with a one-line fix. A passing
check is remembered for the session (:func:`check` reuses it; the button runs it again).

:func:`blender_version_warning` is the one warning for a Blender newer than the newest this
extension was tested with (:data:`NEWEST_TESTED_BLENDER`); it keeps working.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.errors import DependencyError

log = logging.getLogger(__name__)

#: The environment variable read when the preference is empty.
ENV_VAR = "VIEWFORGE_ENGINE_PYTHON"
#: Oldest Python the engine runs on (pyproject.toml's requires-python).
MIN_PYTHON = (3, 11)
#: Seconds each step of the check may take (a first, cold ``import torch`` can take several).
PROBE_TIMEOUT_S = 20.0
#: Newest Blender (major, minor) this extension was tested with (docs/blender.md).
NEWEST_TESTED_BLENDER = (5, 3)
#: Where to point the user in every fix.
SETTING = "Preferences > Add-ons > Viewforge > Engine Python"

_PROBE = r"""
import importlib.util, json, sys
names = json.loads(sys.argv[1])
out = {"python": list(sys.version_info[:3]), "executable": sys.executable,
       "missing": sorted(n for n in names if importlib.util.find_spec(n) is None)}
try:
    import torch
    out["torch"] = str(torch.__version__)
    out["cuda"] = bool(torch.cuda.is_available())
    out["cuda_device"] = torch.cuda.get_device_name(0) if out["cuda"] else ""
except BaseException as e:
    text = str(e).strip().splitlines()
    out["torch_error"] = type(e).__name__ + (": " + text[0][:200] if text else "")
print("VIEWFORGE_PROBE " + json.dumps(out), flush=True)
"""


@dataclass(frozen=True)
class EngineInfo:
    """What the check found. python: the executable checked; version: (major, minor, micro);
    torch: torch's version; cuda: whether torch sees a CUDA GPU (cuda_device: its name);
    missing: engine import names (of every job kind) it lacks."""

    python: str
    version: tuple[int, int, int]
    torch: str
    cuda: bool = False
    cuda_device: str = ""
    missing: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        gpu = f"CUDA ({self.cuda_device})" if self.cuda else "no CUDA (CPU)"
        extra = f"; lacks {', '.join(self.missing)}" if self.missing else ""
        return f"Python {'.'.join(map(str, self.version))}, torch {self.torch}, {gpu}{extra}"


_PASSED: dict[str, EngineInfo] = {}
_WARNED_BLENDER: list[tuple] = []


def configured(prefs: Any = None) -> str:
    """The engine Python set in the preferences (``engine_python``), else in ``$VIEWFORGE_ENGINE_PYTHON``;
    "" when none is (jobs then run in Blender's Python)."""
    value = str(getattr(prefs, "engine_python", "") or "").strip()
    if not value:
        value = os.environ.get(ENV_VAR, "").strip()
    if value:
        try:
            import bpy

            value = bpy.path.abspath(value)
        except ImportError:
            pass
    return value


def _executable(path: str) -> Path:
    """``path``, or the interpreter inside it when it is an environment folder."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        for rel in ("bin/python3", "bin/python", "python.exe", "Scripts/python.exe"):
            if (p / rel).is_file():
                return p / rel
    return p


def requirements_hint() -> str:
    """The engine requirements file shipped with the extension (for the pip command in fixes)."""
    return str(Path(__file__).with_name("engine-requirements.txt"))


def _required_names() -> dict[str, list[str]]:
    from .deps import REQUIRED

    # numpy: every job (Blender ships its own, the deps table leaves it out)
    return {kind: sorted({"numpy", *names}) for kind, names in REQUIRED.items()}


def _run(cmd: list[str], env: dict[str, str] | None, what: str, python: str) -> subprocess.CompletedProcess:
    from ..engine.jobs import engine_python_env

    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              env=engine_python_env("", env), stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DependencyError(
            f"engine Python {python} did not finish {what} within {PROBE_TIMEOUT_S:.0f} s",
            f"check that `{python} -c \"import torch\"` works in a terminal, or set {SETTING} to another python",
        ) from None
    except PermissionError:
        raise DependencyError(
            f"engine Python {python} is not an executable program",
            f"set {SETTING} to a python executable (venv/bin/python)",
        ) from None
    except OSError as e:
        raise DependencyError(
            f"engine Python {python} cannot be run ({e.strerror or e})",
            f"set {SETTING} to a python executable (venv/bin/python)",
        ) from None


def probe(python: str, env: dict[str, str] | None = None) -> EngineInfo:
    """Check the engine Python ``python`` (an executable or an environment folder) and return
    what it has; raises :class:`DependencyError` with a one-line fix when it cannot run the
    engine (missing, not Python, too old, no torch, torch broken). ``env``: extra environment
    variables for it. Missing engine imports other than torch are reported in ``missing``
    (:func:`check` turns those of the job's kind into an error)."""
    exe = _executable(python)
    shown = str(exe)
    if not exe.exists():
        raise DependencyError(f"engine Python {shown} does not exist",
                              f"set {SETTING} to a python executable (venv/bin/python)")  # fmt: skip
    if exe.is_dir():
        raise DependencyError(f"engine Python {shown} is a folder without bin/python",
                              f"set {SETTING} to a python executable (venv/bin/python)")  # fmt: skip
    if not os.access(exe, os.X_OK):
        raise DependencyError(f"engine Python {shown} is not an executable program",
                              f"set {SETTING} to a python executable (venv/bin/python)")  # fmt: skip
    out = _run([shown, "--version"], env, "`--version`", shown)
    text = (out.stdout + " " + out.stderr).strip()
    m = re.search(r"\bPython (\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        said = f"printed '{' '.join(text.split())[:40]}'" if text else "printed nothing"
        raise DependencyError(f"engine Python {shown} is not Python (`--version` {said})",
                              f"set {SETTING} to a python executable (venv/bin/python)")  # fmt: skip
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if version[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        raise DependencyError(
            f"engine Python {shown} is Python {version[0]}.{version[1]}; the engine needs Python {need} or newer",
            f"make an environment with Python {need}+ (python3 -m venv DIR) and set {SETTING} to DIR/bin/python",
        )
    names = sorted({n for kind in _required_names().values() for n in kind})
    res = _run([shown, "-c", _PROBE, json.dumps(names)], env, "its check", shown)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("VIEWFORGE_PROBE ")), None)
    if line is None:
        tail = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        raise DependencyError(f"engine Python {shown} failed its check ({tail[:200]})",
                              f"check that `{shown} -c \"import sys\"` works in a terminal")  # fmt: skip
    info = json.loads(line.split(" ", 1)[1])
    pip = f"run `{shown} -m pip install -r {requirements_hint()}`"
    if "torch" in info["missing"]:
        raise DependencyError(f"engine Python {shown} has no torch", pip)
    if info.get("torch_error"):
        raise DependencyError(f"engine Python {shown}: torch cannot import ({info['torch_error']})",
                              "reinstall torch in that environment (pip install --force-reinstall torch)")  # fmt: skip
    result = EngineInfo(shown, tuple(info["python"]), info["torch"], bool(info.get("cuda")),
                        str(info.get("cuda_device") or ""), tuple(info["missing"]))  # fmt: skip
    return result


def check(python: str, kind: str = "reconstruct", env: dict[str, str] | None = None, fresh: bool = False) -> EngineInfo:
    """:func:`probe`, remembered for the session once it passed (``fresh``: run it again), and
    an error when imports that jobs of ``kind`` need are missing."""
    key = str(_executable(python))
    info = None if fresh else _PASSED.get(key)
    if info is None:
        info = probe(python, env)
        _PASSED[key] = info
        log.info("engine Python %s: %s", key, info.summary())
    need = set(_required_names().get(kind, []))
    if kind == "reconstruct_photos":
        need = set(_required_names()["reconstruct"]) | set(_required_names()["poses"])
    lacking = sorted(need & set(info.missing))
    if lacking:
        _PASSED.pop(key, None)  # check again after the user installed them
        raise DependencyError(f"engine Python {key} lacks {', '.join(lacking)}",
                              f"run `{key} -m pip install -r {requirements_hint()}`")  # fmt: skip
    return info


def last_check(python: str) -> EngineInfo | None:
    """The remembered passing check of ``python`` (the panel shows it), or None."""
    return _PASSED.get(str(_executable(python))) if python else None


def forget() -> None:
    _PASSED.clear()


def start_job(spec, python: str, kind: str, env: dict[str, str] | None = None, nice: int = 0):
    """Check ``python`` for jobs of ``kind`` and start ``spec`` in it (a :class:`SubprocessJob`)."""
    from ..engine.jobs import SubprocessJob

    info = check(python, kind)
    return SubprocessJob(spec, info.python, env=env, nice=nice)


def blender_version_warning(version: tuple) -> str | None:
    """The warning for a Blender newer than :data:`NEWEST_TESTED_BLENDER`, else None."""
    if tuple(version[:2]) <= NEWEST_TESTED_BLENDER:
        return None
    tested = ".".join(map(str, NEWEST_TESTED_BLENDER))
    return (f"Viewforge was tested up to Blender {tested}; this is Blender {'.'.join(map(str, version[:3]))}: "
            f"it should work, please report anything that does not")  # fmt: skip


def warn_blender_version(version: tuple | None = None) -> str | None:
    """Log :func:`blender_version_warning` once per session (register calls this); returns it."""
    if version is None:
        import bpy

        version = tuple(bpy.app.version)
    text = blender_version_warning(version)
    if text and tuple(version) not in _WARNED_BLENDER:
        _WARNED_BLENDER.append(tuple(version))
        log.warning(text)
    return text


__all__ = [
    "ENV_VAR",
    "EngineInfo",
    "MIN_PYTHON",
    "NEWEST_TESTED_BLENDER",
    "blender_version_warning",
    "check",
    "configured",
    "forget",
    "last_check",
    "probe",
    "start_job",
    "warn_blender_version",
]
