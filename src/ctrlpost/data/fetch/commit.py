"""Turning produced files into dataset clips, and recognising clips that are already done.

A clip enters the dataset only after it decodes, has at least ``[data].num_frames`` frames and
has been hashed; its video is moved into ``videos/`` with one atomic rename. A clip whose
manifest record is usable and whose file still has the recorded sha256 is kept as it is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctrlpost.data.fetch.failures import ClipError, FailureKind
from ctrlpost.data.fetch.ffmpeg import probe
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.fetch.plan import ClipSpec
from ctrlpost.data.layout import DatasetLayout, sha256_of
from ctrlpost.files import commit_file, write_text_atomic


def commit(clip: ClipSpec, produced: Path, *, layout: DatasetLayout, num_frames: int,
           stream: Mapping[str, Any] | None, attempts: int) -> ClipRecord:
    """Verify ``produced`` and move it into the dataset with its metas; return its record."""
    info = probe(produced)
    if info.frames < num_frames:
        raise ClipError(FailureKind.TOO_SHORT,
                        f"{info.frames} frames after cutting; [data].num_frames is {num_frames}")
    record = ClipRecord(
        id=clip.id, status="ok", source=clip.source, span=clip.span,
        stream=dict(stream) if stream else None, width=info.width, height=info.height,
        fps=info.fps, frames=info.frames, sha256=sha256_of(produced), attempts=attempts,
    )
    commit_file(produced, layout.video(clip.id))
    write_metas(clip, record, layout)
    return record


def failed(clip: ClipSpec, kind: FailureKind, message: str, *, layout: DatasetLayout,
           attempts: int, stream: Mapping[str, Any] | None = None) -> ClipRecord:
    """The record of a failed clip; any old files of it leave the dataset (unverified now)."""
    layout.remove_clip(clip.id)
    return ClipRecord(id=clip.id, status="failed", source=clip.source, span=clip.span,
                      stream=dict(stream) if stream else None, error_class=kind.value,
                      error_message=message, attempts=attempts)


def reusable(clip: ClipSpec, old: ClipRecord | None, *, layout: DatasetLayout,
             num_frames: int) -> ClipRecord | None:
    """The ``skipped`` record of a clip done by an earlier run, or None if it must be made.

    The file must still hash to the recorded sha256 (a partial or edited file does not), come
    from the same span, and be long enough for the current ``[data].num_frames``.
    """
    path = layout.video(clip.id)
    if old is None or not old.usable or old.span != clip.span or not path.is_file():
        return None
    if (old.frames or 0) < num_frames or sha256_of(path) != old.sha256:
        return None
    record = dataclasses.replace(old, status="skipped", source=clip.source,
                                 updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_metas(clip, record, layout)  # cheap; repairs deleted metas and updated captions
    return record


def write_metas(clip: ClipSpec, record: ClipRecord, layout: DatasetLayout) -> None:
    """``metas/<id>.txt`` (the caption only) and ``metas/<id>.json`` (source + measured)."""
    meta = {
        "id": clip.id,
        "caption": clip.caption,
        "source": dict(clip.record),
        "stream": dict(record.stream) if record.stream else None,
        "measured": {"width": record.width, "height": record.height, "fps": record.fps,
                     "frames": record.frames, "sha256": record.sha256},
    }
    _write_if_changed(layout.caption(clip.id), clip.caption)  # no newline, as the reference
    _write_if_changed(layout.meta(clip.id), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)
