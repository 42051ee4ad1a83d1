"""``manifest.jsonl``: one JSON record per clip, rewritten atomically as clips finish.

A record's ``status`` is what the latest run did with that clip:

* ``ok``: fetched, verified and committed by that run;
* ``skipped``: a verified copy from an earlier run was kept (same sha256), nothing fetched;
* ``failed``: ``error_class`` (a :class:`~.failures.FailureKind`) and ``error_message`` say why;
  the clip has no files in ``videos/`` or ``metas/``.

``ok`` and ``skipped`` both mean "this file is in the dataset and has this sha256". A run keeps
the verified records of clips it did not consider (e.g. after a smaller ``--num-videos``) and
drops their old failures: the manifest lists the dataset plus the failures of the latest run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctrlpost.files import write_text_atomic

Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class ClipRecord:
    """What the manifest knows about one clip."""

    id: str
    status: Status
    source: str
    """The URL, file path or generator the clip came from."""
    span: tuple[float, float] | None = None
    """Start and end in seconds within the source, when the clip was cut."""
    stream: Mapping[str, Any] | None = None
    """The downloaded YouTube stream: itag, mime, resolution, fps, codec, adaptive, filesize."""
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None
    sha256: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    attempts: int = 0
    updated: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def usable(self) -> bool:
        """Whether the manifest vouches for a committed file."""
        return self.status in ("ok", "skipped") and self.sha256 is not None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["span"] = list(self.span) if self.span else None
        data["stream"] = dict(self.stream) if self.stream else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClipRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("span") is not None:
            start, end = values["span"]
            values["span"] = (float(start), float(end))
        record = cls(**values)
        if record.status not in ("ok", "skipped", "failed") or not isinstance(record.id, str):
            raise ValueError(f"bad manifest record {data!r}")
        return record


def load(path: Path) -> dict[str, ClipRecord]:
    """Records by clip id. Unreadable lines are ignored: their clips are simply fetched again."""
    records: dict[str, ClipRecord] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return records
    except (OSError, UnicodeDecodeError):
        return records
    for line in lines:
        try:
            record = ClipRecord.from_json(json.loads(line))
        except (ValueError, TypeError, KeyError):
            continue
        records[record.id] = record
    return records


def save(path: Path, records: Iterable[ClipRecord]) -> None:
    """Rewrite the whole manifest atomically, sorted by clip id."""
    ordered = sorted(records, key=lambda r: r.id)
    text = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in ordered)
    write_text_atomic(path, text)
