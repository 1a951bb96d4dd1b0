"""Model weights of the multi-view generator: licence, download size, in the cache or not.

:func:`weights_status` tells the panel, from the file system only (never the network), whether the
chosen generator's weights are in the model cache, and its licence and download size.
:func:`check_weights` runs before a job that needs the generator (generate, reconstruct with
completion): a download happens only when ``allow_download`` is set (Blender's "Allow Online
Access" on and the add-on's Offline preference off); otherwise missing weights are refused before
a worker starts, with the engine's message (model, download size, how to allow it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.errors import InputError, ViewforgeError


@dataclass(frozen=True)
class WeightsStatus:
    """What the panel shows about a model. info: the registry's GeneratorInfo (None when the model
    is unknown); cached: its weights are on disk (a local folder, or the hub cache holds every
    file of the pinned snapshot); folder: where they are (or would be); error: why the model
    cannot be used ("" when it can)."""

    info: Any = None
    cached: bool = False
    folder: Path | None = None
    error: str = ""

    @property
    def download_gb(self) -> float | None:
        mb = getattr(self.info, "download_mb", None)
        return None if mb is None else mb / 1000.0


def hub_cache_dir(model_cache: str = "") -> Path:
    """The model hub's cache folder the worker will use: ``HF_HUB_CACHE`` if set, else
    ``<model_cache>/hub`` (the worker's ``HF_HOME``), else the hub library's default."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    if model_cache:
        return Path(_abspath(model_cache)).expanduser() / "hub"
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _abspath(path: str) -> str:
    try:
        import bpy

        return bpy.path.abspath(path)
    except Exception:  # noqa: BLE001  (outside Blender)
        return path


def _model_spec(entry) -> Any:
    """The backend's ModelSpec (the files it loads), when its module has one."""
    import importlib

    from ..engine.mvgen import base

    mod = entry.loader.partition(":")[0]
    if mod.startswith("."):
        mod = base.__package__ + mod
    try:
        return getattr(importlib.import_module(mod), "SPEC", None)
    except ImportError:
        return None


def weights_status(model: str, model_cache: str = "") -> WeightsStatus:
    """Where the weights of ``model`` (registry id or local folder) are, from the file system only."""
    from ..engine.mvgen.base import resolve

    model = (model or "").strip()
    if not model:
        return WeightsStatus(error="no model is chosen")
    local = Path(_abspath(model)).expanduser()
    try:
        entry = resolve(str(local) if local.is_dir() else model)
    except ViewforgeError as e:
        return WeightsStatus(error=e.message)
    if local.is_dir():
        return WeightsStatus(entry.info, True, local)
    info = entry.info
    if not info.repo_id or not info.revision:
        return WeightsStatus(info, True, None)
    snapshot = hub_cache_dir(model_cache) / f"models--{info.repo_id.replace('/', '--')}" / "snapshots" / info.revision
    spec = _model_spec(entry)
    files = spec.files() if spec is not None else []
    cached = snapshot.is_dir() and all((snapshot / f).is_file() for f in files)
    return WeightsStatus(info, cached, snapshot)


def check_weights(model: str, model_cache: str, allow_download: bool) -> list[str]:
    """Refuse a model that is unknown or whose weights are missing and may not be downloaded
    (the engine's messages); returns warnings (a download about to happen, with the licence)."""
    from ..engine.mvgen.base import resolve

    status = weights_status(model, model_cache)
    if status.error:
        local = Path(_abspath(model)).expanduser()
        resolve(str(local) if local.is_dir() else model)  # raises the engine's InputError
        raise InputError(status.error, "choose a registry id or a model folder in the Viewforge panel")
    if status.cached:
        return []
    info = status.info
    if not allow_download:
        spec = _model_spec(resolve(model))
        if spec is not None:
            from ..engine.mvgen.weights import _missing_error

            raise _missing_error(spec, "online access is not allowed")
        return []
    return [f"downloading the {info.name} weights (about {status.download_gb:.1f} GB, licence {info.licence}) "
            "before the first generation"]


__all__ = ["WeightsStatus", "check_weights", "hub_cache_dir", "weights_status"]
