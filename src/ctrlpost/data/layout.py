"""The dataset folder: every name in it, in one place (`fetch-data` writes it, `embed` adds the
embeddings, the dataset, `verify` and `embed` read it).

```
<root>/videos/<clip>.mp4   the clip (H.264 for cut clips)
<root>/metas/<clip>.txt    its caption, nothing else (what `embed` reads)
<root>/metas/<clip>.json   the source record plus what was measured
<root>/t5_xxl/<clip>.pickle  its T5 embedding (`embed`; the reference's name and format)
<root>/manifest.jsonl      one record per clip: status, source, stream, size, sha256, error
<root>/.tmp/               work files of a running fetch; anything left here is never trusted
<root>/.fetch.lock         held while a fetch runs, so two runs never write the same folder
```

Every file appears under its final name only when complete: it is written with
:mod:`ctrlpost.files` (a temp name in the same folder, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ctrlpost.errors import DataError
from ctrlpost.files import exclusive_lock, remove_temps

VIDEOS = "videos"
METAS = "metas"
EMBEDDINGS = "t5_xxl"
MANIFEST = "manifest.jsonl"
WORK = ".tmp"
LOCK = ".fetch.lock"
VIDEO_SUFFIX = ".mp4"  # the only clips listed (the reference lists only .mp4)
CAPTION_SUFFIX = ".txt"
META_SUFFIX = ".json"
EMBEDDING_SUFFIX = ".pickle"


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of the dataset folder rooted at ``root``."""

    root: Path

    @property
    def videos(self) -> Path:
        return self.root / VIDEOS

    @property
    def metas(self) -> Path:
        return self.root / METAS

    @property
    def embeddings(self) -> Path:
        return self.root / EMBEDDINGS

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def tmp(self) -> Path:
        return self.root / WORK

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def video(self, clip_id: str) -> Path:
        return self.videos / f"{clip_id}{VIDEO_SUFFIX}"

    def caption(self, clip_id: str) -> Path:
        return self.metas / f"{clip_id}{CAPTION_SUFFIX}"

    def meta(self, clip_id: str) -> Path:
        return self.metas / f"{clip_id}{META_SUFFIX}"

    def embedding(self, clip_id: str) -> Path:
        return self.embeddings / f"{clip_id}{EMBEDDING_SUFFIX}"

    def clips(self) -> list[str]:
        """Sorted names of the clips: the stems of ``videos/*.mp4``."""
        return sorted(p.stem for p in self.videos.glob(f"*{VIDEO_SUFFIX}") if p.is_file())

    def captions(self) -> list[Path]:
        """Every ``metas/*.txt``, sorted."""
        return sorted(self.metas.glob(f"*{CAPTION_SUFFIX}")) if self.metas.is_dir() else []

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, as reports name files (``videos/a.mp4``)."""
        return path.relative_to(self.root).as_posix()

    def prepare(self) -> None:
        """Create the folders and drop work files a killed run left behind (the work folder,
        and the temp files of writes it never finished)."""
        try:
            for folder in (self.videos, self.metas):
                folder.mkdir(parents=True, exist_ok=True)
            for folder in (self.root, self.videos, self.metas):
                remove_temps(folder)
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
    """Hold ``<root>/.fetch.lock`` so that a second fetch (or `annotate`, which writes hint
    files) on the same folder fails at once.

    The OS releases the lock when the process dies, so a killed run never blocks the next one.
    """
    return exclusive_lock(
        DatasetLayout(root).lock,
        busy=lambda: DataError(f"another `ctrlpost fetch-data` or `annotate` is writing to "
                               f"{root}",
                               hint="wait for it to finish, or use another [data].root"),
        unwritable=lambda exc: DataError(f"cannot write the dataset folder {root}: "
                                         f"{exc.strerror}",
                                         hint="set [data].root to a writable folder"))


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
