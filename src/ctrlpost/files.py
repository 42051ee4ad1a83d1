"""One writer per folder: an advisory lock file that the OS drops when its holder dies, so a
killed run never blocks the next one (no stale pid files)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path, *, busy: Callable[[], Exception],
                   unwritable: Callable[[OSError], Exception]) -> Iterator[None]:
    """Hold the lock file ``path`` (its folder is created) for the body; raise ``busy()`` at once
    when another process holds it, ``unwritable(error)`` when it cannot be created."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise unwritable(exc) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
