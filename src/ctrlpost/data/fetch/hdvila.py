"""The ``hdvila`` source: HD-VILA-100M records → YouTube downloads → exact clips.

Which clips: the first ``num_videos`` distinct videos of the jsonl, with **all** of their clips
(the reference kept only the first clip of each video, wasting most of every download). Reading
stops at the first record of the next video, so the multi-gigabyte file is never read whole;
HD-VILA lists the clips of a video together, so no clip of a taken video is missed.

Each clip keeps its own record, so captions pair with clips by id, never by sort order.
Spans are parsed as decimal seconds ("00:00:12.5" is 12.5 s).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctrlpost.data.fetch import ffmpeg, youtube
from ctrlpost.data.fetch.failures import ClipError, FailureKind
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.fetch.plan import ClipSpec, Plan, Unit, UnitOutput, check_clip_id
from ctrlpost.errors import DataError

JSONL_URL = "https://huggingface.co/datasets/TempoFunk/hdvila-100M/resolve/main/hdvila-100M.jsonl"


@dataclass
class Video:
    """One YouTube video to download and the clips to cut from it."""

    key: str
    """``video_id`` of the records (their URL when they have none)."""
    url: str
    clips: list[ClipSpec] = field(default_factory=list)


def plan(jsonl: Path, *, num_videos: int, min_height: int,
         factory: youtube.YouTubeFactory) -> Plan:
    """One unit per video: download once, cut every clip of it."""
    videos, rejected = read_videos(jsonl, num_videos)
    units = tuple(
        Unit(name=video.key, clips=tuple(video.clips),
             produce=functools.partial(_produce, url=video.url, factory=factory,
                                       min_height=min_height))
        for video in videos
    )
    return Plan(units=units, rejected=tuple(rejected))


def read_videos(jsonl: Path, num_videos: int) -> tuple[list[Video], list[ClipRecord]]:
    """The first ``num_videos`` videos with their clips, and a failed record per bad line."""
    videos: dict[str, Video] = {}
    rejected: list[ClipRecord] = []
    seen: set[str] = set()
    for number, line in _lines(jsonl):
        where = f"{jsonl.name}:{number}"
        try:
            clip, key = _parse(line)
        except ValueError as exc:
            rejected.append(_bad(where, line, str(exc)))
            continue
        if key not in videos and len(videos) == num_videos:
            break
        if clip.id in seen:
            rejected.append(_bad(where, line, f"duplicate clip_id {clip.id!r}", unique=False))
            continue
        seen.add(clip.id)
        videos.setdefault(key, Video(key=key, url=clip.source)).clips.append(clip)
    return list(videos.values()), rejected


def _lines(jsonl: Path) -> Iterator[tuple[int, str]]:
    if not jsonl.is_file():
        raise DataError(f"HD-VILA metadata not found: {jsonl}",
                        hint=f"download it with `wget -O {jsonl} {JSONL_URL}`, "
                        "or set [data.hdvila].jsonl")
    try:
        with open(jsonl, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {jsonl}: {exc}",
                        hint="it must be the UTF-8 jsonl of HD-VILA-100M") from None


def _parse(line: str) -> tuple[ClipSpec, str]:
    """A clip and its video key from one jsonl line; ValueError names what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for name in ("url", "clip_id", "caption", "span_start", "span_end"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise ValueError(f"field {name!r} is missing or not a non-empty string")
    clip_id = check_clip_id(record["clip_id"].strip().removesuffix(".mp4"))
    span = ffmpeg.parse_span(record["span_start"], record["span_end"])
    key = str(record.get("video_id") or record["url"]).strip()
    clip = ClipSpec(id=clip_id, caption=record["caption"].strip(), source=record["url"],
                    record=record, span=span)
    return clip, key


def _bad(where: str, line: str, message: str, *, unique: bool = True) -> ClipRecord:
    # Name the record by its clip_id when it can be read (and is not taken by a good record),
    # so that the record of a fixed line replaces it; else by file and line number.
    clip_id = where
    if unique:
        try:
            record = json.loads(line)
            clip_id = check_clip_id(str(record["clip_id"]).strip().removesuffix(".mp4"))
        except (ValueError, TypeError, KeyError):
            pass
    return ClipRecord(id=clip_id, status="failed", source=where,
                      error_class=FailureKind.BAD_RECORD.value, error_message=message)


def _produce(clips: Sequence[ClipSpec], workdir: Path, stop: threading.Event, *, url: str,
             factory: youtube.YouTubeFactory, min_height: int) -> UnitOutput:
    """Download the video once, then cut each clip; a failed cut fails only its clip."""
    source, stream = youtube.download(factory, url, workdir, min_height=min_height, stop=stop)
    files: dict[str, Path | ClipError] = {}
    for clip in clips:
        if stop.is_set():
            raise ClipError(FailureKind.NETWORK, "interrupted")
        out = workdir / f"{clip.id}.mp4"
        try:
            ffmpeg.cut(source, out, clip.span)
            files[clip.id] = out
        except ClipError as exc:
            files[clip.id] = exc
    return UnitOutput(files=files, stream=stream)

