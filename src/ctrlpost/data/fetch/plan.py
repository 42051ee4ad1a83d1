"""What a source hands to the runner: clips to make, grouped into units of work.

A *unit* is what is done (and retried) as one piece: one YouTube download cut into all the
clips of that video, one local file, one generated clip. Its producer writes finished but
unverified clip files into a private work folder; :mod:`.fetch` verifies and commits them.

``check_clip_id`` (from :mod:`.layout`) is re-exported for the sources.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ctrlpost.data.fetch.failures import ClipError
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.layout import check_clip_id


@dataclass(frozen=True)
class ClipSpec:
    """One clip a source wants: its id (file stem), caption and where it comes from."""

    id: str
    caption: str
    source: str
    """URL, file path or generator description, copied to the manifest."""
    record: Mapping[str, Any] = field(default_factory=dict)
    """The source record, written to ``metas/<id>.json``."""
    span: tuple[float, float] | None = None
    """Seconds ``[start, end)`` of the source to keep; None keeps the whole video."""


@dataclass(frozen=True)
class UnitOutput:
    """A producer's result: a file or the reason it could not make it, for each clip id."""

    files: Mapping[str, Path | ClipError]
    stream: Mapping[str, Any] | None = None
    """The downloaded stream's description, for sources that download."""


class Producer(Protocol):
    """Makes ``clips`` inside ``workdir``; checks ``stop`` between long steps.

    Raising fails every clip of the unit (and network errors are retried); a per-clip problem
    is returned as a :class:`ClipError` in :attr:`UnitOutput.files` instead.
    """

    def __call__(self, clips: Sequence[ClipSpec], workdir: Path,
                 stop: threading.Event) -> UnitOutput: ...


@dataclass(frozen=True)
class Unit:
    """One piece of work yielding one or more clips."""

    name: str
    clips: tuple[ClipSpec, ...]
    produce: Producer


@dataclass(frozen=True)
class Plan:
    """Everything a source will do, known before any work starts."""

    units: tuple[Unit, ...]
    rejected: tuple[ClipRecord, ...] = ()
    """Clips that failed at planning (bad records, missing captions): nothing to retry."""

    @property
    def num_clips(self) -> int:
        return sum(len(unit.clips) for unit in self.units) + len(self.rejected)


__all__ = ["ClipSpec", "Plan", "Producer", "Unit", "UnitOutput", "check_clip_id"]
