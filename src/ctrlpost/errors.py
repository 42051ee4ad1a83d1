"""Typed user-facing errors: one line plus an optional hint, rendered once by the CLI."""

from __future__ import annotations

import errno
import os


class CtrlpostError(Exception):
    """An error the user can fix. ``exit_code`` 2 means bad input, 1 a failed run."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RecipeError(CtrlpostError):
    """The recipe file is missing, unparsable or invalid."""


class PluginError(CtrlpostError):
    """A modality plugin is unknown, duplicated or rejects its parameters."""


class WeightsError(CtrlpostError):
    """A checkpoint is missing, has the wrong keys or shapes, or cannot be fetched."""


class DataError(CtrlpostError):
    """A dataset file is missing, unreadable or malformed."""


class LaunchError(CtrlpostError):
    """A training run failed after it started."""

    exit_code = 1


class Stopped(Exception):
    """A run stopped on request (SIGINT, SIGTERM) after saving its checkpoint: not an error.

    The CLI prints ``message`` as it is and exits with ``128 + signum``, the shell's code for
    a process ended by that signal.
    """

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = 128 + signum


class StorageError(CtrlpostError):
    """A file or folder cannot be read or written: missing, permission denied, read-only or full
    file system. Made from the :class:`OSError` that escaped a command by :func:`from_os_error`."""


# errno → (what was done to the path, what went wrong, the fix). In the fix, "{mount}" is the file
# system holding the path and "{folders}" the options that choose the command's folders.
_OS_ERRORS: dict[int, tuple[str, str, str]] = {
    errno.EROFS: ("cannot write {where}", "read-only file system",
                  "choose a folder on a writable file system{folders}"),
    errno.EACCES: ("cannot access {where}", "permission denied",
                   "give this user access to it (chmod, chown) or choose another folder{folders}"),
    errno.EPERM: ("cannot change {where}", "operation not permitted",
                  "check its owner and attributes (ls -l, lsattr) or choose another "
                  "folder{folders}"),
    errno.ENOSPC: ("cannot write {where}", "no space left on the device",
                   "free space on {mount} (see df -h) or choose a folder on another "
                   "disk{folders}"),
    errno.EDQUOT: ("cannot write {where}", "disk quota exceeded",
                   "free space within your quota on {mount} (see quota -s) or choose a folder "
                   "on another disk{folders}"),
    errno.ENOENT: ("{where}", "no such file or folder",
                   "check the path, or run the command that makes it (fetch-weights, "
                   "fetch-data, embed)"),
    errno.ENOTDIR: ("{where}", "a part of this path is a file, not a folder",
                    "choose a path whose parents are folders{folders}"),
    errno.EISDIR: ("{where}", "is a folder where a file is expected", "name a file instead"),
    errno.EEXIST: ("{where}", "already exists", "remove it or choose another name"),
    errno.ENAMETOOLONG: ("{where}", "name too long", "choose a shorter name or path"),
    errno.EMFILE: ("cannot open {where}", "too many open files",
                   "raise the limit (ulimit -n 65536) and run it again"),
    errno.ENFILE: ("cannot open {where}", "the system ran out of file handles",
                   "close other programs or raise fs.file-max, then run it again"),
}


# The recipe keys that choose where each command (by its function's name) writes.
_FOLDERS_OF_COMMAND = {"fetch_weights": "--set weights.dir=DIR",
                       "fetch_data": "--set data.root=DIR", "embed": "--set data.root=DIR",
                       "train": "--set job.output_root=DIR"}


def from_os_error(exc: OSError, *, command: str = "") -> StorageError:
    """One line for an :class:`OSError`: the path(s) it names (``filename``, ``filename2``), what
    went wrong (by ``errno``) and the fix, which names the keys that choose where ``command``
    (e.g. ``fetch_weights``) writes."""
    folders = _FOLDERS_OF_COMMAND.get(command, "")
    path, other = exc.filename, exc.filename2
    where = _name(path) if path is not None else None
    if where is not None and other is not None:
        where += f" (to {_name(other)})"
    known = _OS_ERRORS.get(exc.errno) if exc.errno is not None else None
    if known is None:
        reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        found = f"{where}: {reason}" if where is not None else reason
        return StorageError(f"{found}; rerun with CTRLPOST_DEBUG=1 to see where it happened")
    action, reason, fix = known
    mount = _mount_of(path) if path is not None else "the disk being written"
    options = f" ({folders})" if folders else ""
    what = f"{action.format(where=where)}: {reason}" if where is not None else reason
    return StorageError(f"{what}; {fix.format(mount=mount, folders=options)}")


def _name(path: str | bytes | os.PathLike[str] | int) -> str:
    return f"file descriptor {path}" if isinstance(path, int) else os.fsdecode(path)


def _mount_of(path: str | bytes | os.PathLike[str] | int) -> str:
    """The mount point of the file system that holds (or would hold) ``path``."""
    if isinstance(path, int):
        return "the disk being written"
    current = os.path.abspath(os.fsdecode(path))
    while not (os.path.exists(current) and os.path.ismount(current)):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current
