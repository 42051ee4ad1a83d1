"""The ``local`` source: a folder of videos plus a captions file.

Captions file, matched to videos by file name (or stem), never by order:

* csv with a header ``file,caption[,start,end]``;
* jsonl with ``file`` (or ``video``), ``caption`` and optional ``span_start``/``span_end``.

Times are ``[[HH:]MM:]SS[.fff]`` or plain seconds. The clip id is the file stem. A clip with a
span, or a file that is not mp4, is cut/re-encoded to H.264 with ffmpeg; an mp4 without a span
is copied as it is. A video without a caption fails (``missing_caption``) while the others go on;
a malformed captions file is an input error listing every bad row at once.
"""

from __future__ import annotations

import csv
import json
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrlpost.data.fetch import ffmpeg
from ctrlpost.data.fetch.failures import ClipError, FailureKind
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.fetch.plan import ClipSpec, Plan, Unit, UnitOutput, check_clip_id
from ctrlpost.errors import DataError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})


@dataclass(frozen=True)
class CaptionRow:
    """One row of the captions file."""

    file: str
    caption: str
    span: tuple[float, float] | None
    where: str
    """``captions.csv:3``: for messages."""


def plan(videos: str | None, captions: str | None, *, num_videos: int | None) -> Plan:
    """One unit per video file of the folder (sorted by name, the first ``num_videos``)."""
    folder, captions_file = _require(videos, captions)
    rows = read_captions(captions_file)
    by_name = {Path(row.file).name: row for row in rows}
    by_stem = {Path(row.file).stem: row for row in rows}
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DataError(f"no videos in {folder}",
                        hint=f"put {', '.join(sorted(VIDEO_SUFFIXES))} files there")
    units: list[Unit] = []
    rejected: list[ClipRecord] = []
    taken: dict[str, Path] = {}
    for path in files[:num_videos]:
        row = by_name.get(path.name) or by_stem.get(path.stem)
        failure = _reject(path, row, taken, captions_file)
        if failure is not None:
            rejected.append(failure)
            continue
        assert row is not None
        taken[path.stem] = path
        clip = ClipSpec(id=path.stem, caption=row.caption, source=str(path), span=row.span,
                        record={"file": path.name, "caption": row.caption,
                                "span": list(row.span) if row.span else None,
                                "captions": row.where})
        units.append(Unit(name=path.name, clips=(clip,), produce=_produce))
    return Plan(units=tuple(units), rejected=tuple(rejected))


def _reject(path: Path, row: CaptionRow | None, taken: dict[str, Path],
            captions: Path) -> ClipRecord | None:
    """The failed record of a video that cannot become a clip, or None."""
    kind, message = None, ""
    try:
        check_clip_id(path.stem)
    except ValueError as exc:
        kind, message = FailureKind.BAD_RECORD, str(exc)
    if path.stem in taken:
        kind = FailureKind.BAD_RECORD
        message = f"{path.name} has the same clip id as {taken[path.stem].name}; rename one"
    elif row is None:
        kind = FailureKind.MISSING_CAPTION
        message = f"no caption for {path.name} in {captions}; add a row for it"
    if kind is None:
        return None
    # A bad or taken stem cannot name the record: `local:<file>` has no files to clean up.
    clip_id = path.stem if kind is FailureKind.MISSING_CAPTION else f"local:{path.name}"
    return ClipRecord(id=clip_id, status="failed", source=str(path), error_class=kind.value,
                      error_message=message)


def _require(videos: str | None, captions: str | None) -> tuple[Path, Path]:
    if not videos or not captions:
        raise DataError("the local source needs [data.local].videos and [data.local].captions",
                        hint="e.g. --set data.local.videos=my_videos "
                        "--set 'data.local.captions=\"my_videos/captions.csv\"'")
    folder, file = Path(videos), Path(captions)
    if not folder.is_dir():
        raise DataError(f"videos folder not found: {folder}", hint="set [data.local].videos")
    if not file.is_file():
        raise DataError(f"captions file not found: {file}", hint="set [data.local].captions")
    return folder, file


def read_captions(path: Path) -> list[CaptionRow]:
    """Every row of a csv or jsonl captions file; one DataError lists all bad rows."""
    reader = _jsonl_rows if path.suffix.lower() in (".jsonl", ".json") else _csv_rows
    rows: list[CaptionRow] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    try:
        for where, raw in reader(path):
            try:
                row = _row(raw, where)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            name = Path(row.file).name
            if name in seen:
                problems.append(f"{where}: {name} is listed again (first at {seen[name]}); "
                                "one clip per file")
                continue
            seen[name] = where
            rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read captions file {path}: {exc}") from None
    if problems:
        if len(problems) > 20:
            problems = [*problems[:20], f"... and {len(problems) - 20} more"]
        raise DataError("\n".join(problems),
                        hint=f"fix {path}: csv `file,caption[,start,end]` or jsonl "
                        "{file, caption[, span_start, span_end]}")
    return rows


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        if "file" not in header or "caption" not in header:
            raise DataError(f"{path}: the csv header must be file,caption[,start,end] "
                            f"(got {','.join(header) or 'nothing'})")
        for raw in reader:
            clean = {(k or "").strip(): v for k, v in raw.items()}
            yield f"{path.name}:{reader.line_num}", clean


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raw = {"__error__": f"not JSON: {exc.msg}"}
            yield where, raw if isinstance(raw, dict) else {"__error__": "not a JSON object"}


def _row(raw: dict[str, Any], where: str) -> CaptionRow:
    if "__error__" in raw:
        raise ValueError(raw["__error__"])
    file = raw.get("file") or raw.get("video")
    caption = raw.get("caption")
    if not isinstance(file, str) or not file.strip():
        raise ValueError("no file name ('file' or 'video')")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"empty caption for {file}")
    start = raw.get("span_start", raw.get("start"))
    end = raw.get("span_end", raw.get("end"))
    span = None
    if start not in (None, "") or end not in (None, ""):
        if start in (None, "") or end in (None, ""):
            raise ValueError("give both start and end, or neither")
        span = ffmpeg.parse_span(str(start), str(end))
    return CaptionRow(file=file.strip(), caption=caption.strip(), span=span, where=where)


def _produce(clips: Sequence[ClipSpec], workdir: Path, stop: threading.Event) -> UnitOutput:
    """Copy an mp4 as it is; cut (or re-encode a non-mp4) with ffmpeg otherwise."""
    files: dict[str, Path | ClipError] = {}
    for clip in clips:
        src, out = Path(clip.source), workdir / f"{clip.id}.mp4"
        try:
            if clip.span is None and src.suffix.lower() == ".mp4":
                shutil.copyfile(src, out)
            else:
                ffmpeg.cut(src, out, clip.span)
            files[clip.id] = out
        except ClipError as exc:
            files[clip.id] = exc
    return UnitOutput(files=files)
