"""The dataset folder `fetch-data` writes, and the atomic file operations it writes with.

```
<root>/videos/<clip>.mp4   the clip (H.264 for cut clips)
<root>/metas/<clip>.txt    its caption, nothing else (what `embed` reads)
<root>/metas/<clip>.json   the source record plus what was measured
<root>/manifest.jsonl      one record per clip: status, source, stream, size, sha256, error
<root>/.tmp/               work files of a running fetch; anything left here is never trusted
<root>/.fetch.lock         held while a fetch runs, so two runs never write the same folder
```

Every file appears under its final name only when complete: it is written to a temporary name
in the same folder and moved into place with :func:`os.replace`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ctrlpost.errors import DataError
from ctrlpost.files import exclusive_lock


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of the dataset folder rooted at ``root``."""

    root: Path

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def metas(self) -> Path:
        return self.root / "metas"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def tmp(self) -> Path:
        return self.root / ".tmp"

    def video(self, clip_id: str) -> Path:
        return self.videos / f"{clip_id}.mp4"

    def caption(self, clip_id: str) -> Path:
        return self.metas / f"{clip_id}.txt"

    def meta(self, clip_id: str) -> Path:
        return self.metas / f"{clip_id}.json"

    def prepare(self) -> None:
        """Create the folders and drop work files a killed run left behind."""
        try:
            for folder in (self.videos, self.metas):
                folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        except OSError as exc:
            raise DataError(f"cannot write the dataset folder {self.root}: {exc.strerror}",
                            hint="set [data].root to a writable folder") from None

    def workdir(self, name: str) -> Path:
        """A fresh private folder under ``.tmp`` for one attempt of one unit of work."""
        return Path(tempfile.mkdtemp(prefix=f"{_safe(name)}.", dir=self.tmp))

    def remove_clip(self, clip_id: str) -> None:
        """Delete a clip's files: an unverified clip must not end up in training.

        Ids that are not file stems (``hdvila.jsonl:17`` for an unreadable line) have no files.
        """
        if not is_clip_id(clip_id):
            return
        for path in (self.video(clip_id), self.caption(clip_id), self.meta(clip_id)):
            path.unlink(missing_ok=True)


def exclusive(root: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``<root>/.fetch.lock`` so that a second fetch on the same folder fails at once.

    The OS releases the lock when the process dies, so a killed run never blocks the next one.
    """
    return exclusive_lock(
        root / ".fetch.lock",
        busy=lambda: DataError(f"another `ctrlpost fetch-data` is writing to {root}",
                               hint="wait for it to finish, or use another [data].root"),
        unwritable=lambda exc: DataError(f"cannot write the dataset folder {root}: "
                                         f"{exc.strerror}",
                                         hint="set [data].root to a writable folder"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_into_place(src: Path, dst: Path) -> None:
    """Move a finished file (on the same file system) to its final name atomically."""
    with open(src, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(src, dst)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_clip_id(clip_id: str) -> str:
    """``clip_id`` if it is usable as a file stem in ``videos/`` and ``metas/``; else ValueError.

    Ids come from outside (HD-VILA records, file names): a ``/`` or ``..`` must not let a record
    write outside the dataset folder. ``:`` is refused too (Windows), which leaves it free for
    the ids of records that have no clip file, such as ``hdvila.jsonl:17``.
    """
    bad = (not clip_id or clip_id.startswith(".") or len(clip_id) > 200
           or any(c in clip_id for c in "/\\:\0") or not clip_id.isprintable())
    if bad:
        raise ValueError(f"{clip_id!r} cannot be a clip file name")
    return clip_id


def is_clip_id(clip_id: str) -> bool:
    """Whether :func:`check_clip_id` accepts ``clip_id``."""
    try:
        check_clip_id(clip_id)
    except ValueError:
        return False
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "unit"
