"""Progress reporting and cancellation for long engine work.

Every long function takes ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``
and calls :func:`report` / ``cancel.check()`` often (at least once per iteration or frame), so a
cancel is honoured within a fraction of a second and the UI can show stage and percent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Protocol

from .errors import Cancelled


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    stage:    machine-friendly stage name ("load", "render", "fit", "mesh", ...).
    fraction: progress of that stage in [0, 1].
    message:  short human-readable text for a status bar ("view 3/24").
    step, total: optional counters behind ``fraction``.
    """

    stage: str
    fraction: float
    message: str = ""
    step: int | None = None
    total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class ProgressLines:
    """A progress callback for logs (a pipe, a batch log, ``blender -b`` output): one line when a
    stage starts and then at most one every ``interval_s`` seconds, each with the stage, its
    percentage and message, e.g. ``viewforge: fit 42% (step 1260/3000, 20000 Gaussians)``, so a long
    job is never silent and a log is never flooded. ``stream``: where lines go (None: the
    process's stdout at the time of the call); ``clock``: seconds (tests pass a fake clock)."""

    stream: IO[str] | None = None
    interval_s: float = 10.0
    prefix: str = "viewforge"
    clock: Callable[[], float] = time.monotonic
    _stage: str | None = field(default=None, init=False)
    _last: float = field(default=float("-inf"), init=False)

    def __call__(self, event: ProgressEvent) -> None:
        now = self.clock()
        if event.stage == self._stage and now - self._last < self.interval_s:
            return
        self._stage, self._last = event.stage, now
        self.write(f"{event.stage} {round(100 * event.fraction):d}%" + (f" ({event.message})" if event.message else ""))

    def write(self, text: str) -> None:
        """One line ``<prefix>: <text>``, flushed at once (logs are read while the job runs)."""
        import sys

        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(f"{self.prefix}: {text}\n")
        stream.flush()


class _EventLike(Protocol):
    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class CancelToken:
    """A cancel flag shared between the caller and the work.

    Wraps any event-like object with ``is_set``/``set`` (a ``threading.Event`` by default, or a
    ``multiprocessing.Event`` so a worker process can be cancelled from Blender's main thread).
    """

    def __init__(self, event: _EventLike | None = None) -> None:
        self._event: _EventLike = event if event is not None else threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return bool(self._event.is_set())

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


def report(
    progress: ProgressCallback | None,
    stage: str,
    step: int,
    total: int,
    message: str = "",
) -> None:
    """Send a :class:`ProgressEvent` for ``step`` of ``total`` in ``stage`` (no-op without a callback)."""
    if progress is None:
        return
    total = max(int(total), 1)
    progress(ProgressEvent(stage, min(max(step / total, 0.0), 1.0), message, step, total))


def check(cancel: CancelToken | None) -> None:
    """``cancel.check()`` that accepts ``None``."""
    if cancel is not None:
        cancel.check()


def poll_until_done(poll: Callable[[], bool], timeout: float | None = None, interval: float = 0.05,
                    on_tick: Callable[[], None] | None = None) -> bool:
    """Call ``poll()`` (True while the work runs) every ``interval`` seconds, ``on_tick()`` after
    each poll that found it running, until it ends (returns True) or ``timeout`` seconds pass
    (returns False). For callers without an event loop: batch jobs, blocking Blender runs."""
    import time

    end = None if timeout is None else time.monotonic() + timeout
    while poll():
        if on_tick is not None:
            on_tick()
        if end is not None and time.monotonic() > end:
            return False
        time.sleep(interval)
    return True
