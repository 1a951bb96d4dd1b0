"""Atomic output: write to a temporary sibling, rename into place only on success.

A failed or cancelled job therefore never leaves a half-written file or folder at the path the
user asked for, and an existing file there is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputError


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Validate an output path before any work starts; returns it as an absolute Path.

    Raises :class:`OutputError` when the folder does not exist or is not writable, the path is an
    existing folder where a file is expected, or the suffix is not one of ``suffixes``.
    """
    p = Path(path).expanduser().absolute()
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise OutputError(
            f"output {p.name} has an unsupported extension '{p.suffix}'",
            f"use one of {', '.join(suffixes)}",
        )
    parent = p.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist", f"create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable", "choose a folder you can write to")
    if suffixes is not None and p.is_dir():
        raise OutputError(f"output {p} is a folder", "give a file name")
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_permissions(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create owner-only entries; give the final output the usual umask mode."""
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it."""
    p = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part" + p.suffix, dir=p.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _normal_permissions(tmp_path, 0o666)
    try:
        yield tmp_path
        os.replace(tmp_path, p)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path``.

    An existing ``path`` is replaced only after the new content is complete (it is moved aside,
    the new folder renamed in, then the old one deleted).
    """
    p = check_output_path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"output {p} exists and is a file", "give a folder path")
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent))
    _normal_permissions(tmp_path, 0o777)
    try:
        yield tmp_path
        old = None
        if p.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".old", dir=p.parent))
            os.rmdir(old)
            os.replace(p, old)
        os.replace(tmp_path, p)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
