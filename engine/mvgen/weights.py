"""Model weights on disk: fetch a pinned hub snapshot (safetensors only, no remote code) and check
a diffusers-layout model folder before anything is loaded.

Nothing here unpickles: a component whose folder holds only PyTorch ``.bin``/``.pt``/``.ckpt``
weights is refused with a clear error (``torch.load`` of a downloaded file can run code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import DependencyError, InputError
from ..progress import ProgressCallback, report

log = logging.getLogger(__name__)

#: Pickle-based weight files we never load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Component:
    """One sub-folder of a diffusers-layout model.

    folder: sub-folder name ("unet"). config: its config file name.
    weights: the safetensors file name, None for weight-less parts (tokenizer, scheduler).
    extra: other files it needs (tokenizer vocabulary).
    optional: files fetched when the snapshot has them but not required by the folder check
        (the tokenizer's ``special_tokens_map.json``).
    """

    folder: str
    config: str
    weights: str | None = None
    extra: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def files(self) -> list[str]:
        out = [f"{self.folder}/{self.config}"]
        if self.weights:
            out.append(f"{self.folder}/{self.weights}")
        out += [f"{self.folder}/{e}" for e in self.extra]
        return out

    def optional_files(self) -> list[str]:
        return [f"{self.folder}/{e}" for e in self.optional]


@dataclass(frozen=True)
class ModelSpec:
    """What a generator needs from its model folder (for the download and for the check).

    name: human name for messages. repo_id, revision: the pinned hub snapshot.
    download_mb: size of the files fetched. root_files: files at the folder's top level.
    """

    name: str
    repo_id: str
    revision: str
    download_mb: float
    components: tuple[Component, ...]
    root_files: tuple[str, ...] = ("model_index.json",)

    def files(self) -> list[str]:
        """The required files (the folder check)."""
        out = list(self.root_files)
        for c in self.components:
            out += c.files()
        return out

    def allow_patterns(self) -> list[str]:
        """Everything the download fetches: the required files and the optional ones."""
        out = self.files()
        for c in self.components:
            out += c.optional_files()
        return out


def offline_fix() -> str:
    return ("allow online access once to download them: from the command line run with network access and "
            "--allow-download (and HF_HUB_OFFLINE unset); in Blender tick Preferences > System > Allow Online "
            "Access and allow the download in the Viewforge preferences")


def _missing_error(spec: ModelSpec, why: str) -> DependencyError:
    return DependencyError(
        f"the {spec.name} weights ({spec.repo_id}@{spec.revision[:10]}, about {spec.download_mb / 1000:.1f} GB "
        f"download) are not in the local model cache ({why})",
        offline_fix(),
    )


def check_folder(folder: Path, spec: ModelSpec, *, local: bool) -> Path:
    """Check that ``folder`` holds every file of ``spec`` with safetensors weights.

    local: the folder was given by the user (errors are :class:`InputError`), else it is a hub
    snapshot (missing files are :class:`DependencyError`: the download is incomplete)."""
    folder = Path(folder)
    for comp in spec.components:
        if not comp.weights:
            continue
        wpath = folder / comp.folder / comp.weights
        if wpath.is_file():
            continue
        sub = folder / comp.folder
        pickles = sorted(p.name for p in sub.glob("*") if p.suffix in PICKLE_SUFFIXES) if sub.is_dir() else []
        if pickles:
            raise InputError(
                f"{spec.name}: {sub} has only PyTorch pickle weights ({', '.join(pickles)}), no {comp.weights}; "
                "Viewforge never loads pickled weights because they can run code",
                "convert them to safetensors (safetensors.torch.save_file of the state dict, in an environment "
                "you trust) or use the model's safetensors release",
            )
    missing = [f for f in spec.files() if not (folder / f).is_file()]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        if local:
            raise InputError(f"model folder {folder} is incomplete for {spec.name}: missing {shown}",
                             "copy the whole model folder (the model hub snapshot's layout)")
        raise _missing_error(spec, f"missing {shown}")
    return folder


def fetch(spec: ModelSpec, *, allow_download: bool = False, cache_dir: str | Path | None = None,
          progress: ProgressCallback | None = None) -> Path:
    """The local folder of the pinned snapshot ``spec.repo_id@spec.revision``, downloading only the
    files of ``spec`` (safetensors + json/txt configs) when ``allow_download``.

    Raises :class:`DependencyError` naming the model and its download size when the files are
    not cached and may not (or cannot) be downloaded."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface-hub is a core dependency
        raise DependencyError("huggingface-hub is not installed", None) from exc
    report(progress, "download", 0, 1, f"{spec.name} weights")
    try:
        path = snapshot_download(
            spec.repo_id,
            revision=spec.revision,
            allow_patterns=spec.allow_patterns(),
            local_files_only=not allow_download,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except Exception as exc:  # the hub raises many kinds (offline, not cached, HTTP, revision)
        name = type(exc).__name__
        if not allow_download:
            raise _missing_error(spec, "online access is not allowed") from exc
        raise DependencyError(
            f"could not download the {spec.name} weights ({spec.repo_id}@{spec.revision[:10]}, about "
            f"{spec.download_mb / 1000:.1f} GB): {name}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
            "check the network connection and that HF_HUB_OFFLINE is not set, then try again",
        ) from exc
    report(progress, "download", 1, 1, f"{spec.name} weights")
    return check_folder(Path(path), spec, local=False)


def write_marker(folder: Path, generator_id: str, **extra) -> Path:
    """Write the local-model marker (:data:`base.LOCAL_MARKER`) naming the generator."""
    import json

    from .base import LOCAL_MARKER

    path = Path(folder) / LOCAL_MARKER
    path.write_text(json.dumps({"generator": generator_id, **extra}, indent=1))
    return path


def read_marker(folder: Path) -> dict:
    import json

    from .base import LOCAL_MARKER

    path = Path(folder) / LOCAL_MARKER
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "write {\"generator\": \"<id>\"} into it") from exc
