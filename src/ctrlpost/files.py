"""The one way this package writes a file other processes may read, and the one lock per folder.

Atomic writes (:func:`write_atomic` and its text and bytes forms): the content goes to a temp
name beside the target, unique to the process and the call (``.<name>.<pid>.<n>-<random>.tmp``,
so two processes or threads writing the same target never share one), the temp file is
fsynced, renamed over the target (atomic on POSIX: a reader sees the old file or the whole new
one), and the folder is fsynced (so the rename itself survives a power loss). An exception
while writing leaves the target untouched and removes the temp. :func:`commit_file` and
:func:`commit_folder` do the last steps for a file or folder written elsewhere.

Every temp name matches :data:`TEMP_GLOB`: the sweeps of leftovers from killed processes
(:func:`remove_temps`) use it.

Locks (:func:`exclusive_lock`): one writer per folder, an advisory lock file that the OS drops
when its holder dies, so a killed run never blocks the next one (no stale pid files).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"
"""What every temp name matches (``.<name>…tmp``): the pattern the leftover sweeps remove."""

_CALLS = itertools.count()  # next() on a count is atomic under the GIL: unique per thread too
_NAME_CHARS = 180  # of the target's name kept in a temp name, which stays under NAME_MAX (255)
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})  # folder fsync


def temp_path(target: Path) -> Path:
    """A fresh temp name beside ``target``, unique to this process and call."""
    unique = f"{os.getpid()}.{next(_CALLS)}-{secrets.token_hex(4)}"
    return target.with_name(f".{target.name[:_NAME_CHARS]}.{unique}{TEMP_SUFFIX}")


def shared_temp_path(target: Path) -> Path:
    """``.<name>.tmp`` beside ``target``: the temp name for several processes that must agree on
    it (the ranks of one job writing one checkpoint folder, under the run's lock)."""
    return target.with_name(f".{target.name}{TEMP_SUFFIX}")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Make ``path`` by ``write(temp)`` (``torch.save``, ``savefig``, a JSON dump...), atomically.

    ``write`` creates the file (or folder) at the temp path it is given; it is then fsynced and
    renamed over ``path``, and the folder is fsynced. If ``write`` raises, ``path`` is untouched
    and the temp is removed. Returns ``path``.
    """
    path = Path(path)
    temp = temp_path(path)
    try:
        write(temp)
        _fsync_tree(temp)
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`).

    The file is created like any new file (mode 0o666 minus the umask), not 0o600 as
    ``mkstemp`` would.
    """

    def write(temp: Path) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    return write_atomic(path, write)


def write_text_atomic(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`); no newline translation."""
    return write_bytes_atomic(path, text.encode(encoding))


def commit_file(src: Path, dst: Path) -> Path:
    """Move the finished file ``src`` (same file system) to ``dst`` atomically and durably:
    fsync it, rename it over ``dst``, fsync ``dst``'s folder. Returns ``dst``."""
    _fsync_tree(src)
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
    return Path(dst)


def commit_folder(src: Path, dst: Path) -> Path:
    """Rename the finished folder ``src`` to ``dst`` once everything in it is on disk.

    Every file and folder under ``src`` is fsynced, then ``src`` is renamed (``dst`` must not
    exist or be an empty folder: a full one raises :class:`OSError`) and the parent is fsynced.
    """
    _fsync_tree(src)
    fsync_dir(Path(src).parent)  # siblings renamed before (exports) land before the commit
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
    return Path(dst)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (creations, renames) to disk; a no-op where folders cannot be
    opened (Windows) or synced (some network file systems)."""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def remove_temps(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Delete the temp files and folders (:data:`TEMP_GLOB`) left in ``folder`` (and below it
    when ``recursive``) by killed writers; returns what was removed, sorted.

    Only for a folder no other process is writing into (one held under :func:`exclusive_lock`).
    """
    if not Path(folder).is_dir():
        return []
    found = Path(folder).rglob(TEMP_GLOB) if recursive else Path(folder).glob(TEMP_GLOB)
    removed = []
    for path in sorted(found):
        if not path.exists() and not path.is_symlink():
            continue  # inside a temp folder removed just before
        _remove(path)
        removed.append(path)
    return removed


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


def _fsync_tree(path: Path) -> None:
    """fsync a file, or a folder with everything under it (files first, then their folder)."""
    if Path(path).is_dir() and not Path(path).is_symlink():
        for root, _, names in os.walk(path, topdown=False):
            for name in names:
                _fsync_file(Path(root) / name)
            fsync_dir(Path(root))
    else:
        _fsync_file(Path(path))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # fsync flushes the file's data whatever the open mode
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
