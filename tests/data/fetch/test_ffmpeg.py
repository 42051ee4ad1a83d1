"""Timestamps, exact cuts and probing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ctrlpost.data.fetch import ffmpeg
from ctrlpost.data.fetch.failures import ClipError, FailureKind


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:01:02.5", 62.5),
    ("00:00:12.050", 12.05),
    ("00:00:12.5", 12.5),        # the reference read this as 12.005 s
    ("01:00:00.000", 3600.0),
    ("02:03.25", 123.25),
    ("7", 7.0),
    ("7.125", 7.125),
    (" 00:00:01.000 ", 1.0),
])
def test_parse_timestamp(text: str, seconds: float) -> None:
    assert ffmpeg.parse_timestamp(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text", ["", "abc", "00:00:-1", "00:61:00", "00:00:60.5", "1:2:3:4",
                                  "00:00:12,5"])
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ffmpeg.parse_timestamp(text)


def test_parse_span_needs_end_after_start() -> None:
    assert ffmpeg.parse_span("00:00:01.5", "00:00:03") == (1.5, 3.0)
    with pytest.raises(ValueError, match="not after"):
        ffmpeg.parse_span("00:00:03", "00:00:03")


@pytest.mark.parametrize(("span", "first", "last"), [
    ((0.5, 1.5), 12, 35),        # on frame boundaries at 24 fps: [12/24, 36/24)
    ((0.51, 1.49), 13, 35),      # between frames: the first frame at or after the start
    ((1.0, 2.5), 24, 59),
    (None, 0, 71),
])
def test_cut_keeps_exactly_the_frames_of_the_span(
        tmp_path: Path, indexed_video: Callable[..., Path],
        frame_indices: Callable[[Path], list[int]], span: tuple[float, float] | None,
        first: int, last: int) -> None:
    source = indexed_video(tmp_path / "src.mp4", 72)
    out = tmp_path / "clip.mp4"
    ffmpeg.cut(source, out, span)
    assert frame_indices(out) == list(range(first, last + 1))
    info = ffmpeg.probe(out)
    assert (info.width, info.height, info.fps, info.frames) == (64, 48, 24.0, last - first + 1)


def test_cut_of_an_unreadable_file_is_a_bad_video(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 10)
    with pytest.raises(ClipError) as caught:
        ffmpeg.cut(junk, tmp_path / "out.mp4", (0.0, 1.0))
    assert caught.value.kind is FailureKind.BAD_VIDEO and "junk.mp4" in caught.value.message
    with pytest.raises(ClipError) as probed:
        ffmpeg.probe(junk)
    assert probed.value.kind is FailureKind.BAD_VIDEO


def test_a_span_past_the_end_is_too_short(tmp_path: Path,
                                          indexed_video: Callable[..., Path]) -> None:
    source = indexed_video(tmp_path / "src.mp4", 24)
    with pytest.raises(ClipError) as caught:
        ffmpeg.cut(source, tmp_path / "out.mp4", (5.0, 6.0))
    assert caught.value.kind is FailureKind.TOO_SHORT
    assert caught.value.message == "no frames in span [5, 6) s of src.mp4"
