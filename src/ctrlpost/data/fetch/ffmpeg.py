"""Timestamps, exact clip cutting with ffmpeg, and measuring a video with OpenCV.

Cuts re-encode with libx264 and seek on the input: stream copy can only start at a keyframe, so
a copied clip can start up to a GOP early; re-encoding keeps exactly the frames whose timestamps
lie in ``[start, end)``. ffmpeg comes from ``imageio-ffmpeg`` (it ships libx264; OpenCV's wheel
cannot write H.264). See docs/environment.md#video-io.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ctrlpost.data.fetch.failures import ClipError, FailureKind

# Quality over speed: these clips are training targets. CRF 18 is visually lossless for H.264.
X264_PRESET = "fast"
X264_CRF = "18"
FFMPEG_TIMEOUT_S = 1800

_TIMESTAMP = re.compile(r"^(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?|\.\d+)$")


def parse_timestamp(text: str) -> float:
    """Seconds of ``[[HH:]MM:]SS[.fff]``; the fraction is a decimal fraction.

    ``"00:01:02.5"`` is 62.5 s and ``"00:00:12.050"`` is 12.05 s (the reference read the digits
    after the dot as milliseconds, so "12.5" became 12.005 s). Raises ValueError otherwise.
    """
    match = _TIMESTAMP.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a timestamp [[HH:]MM:]SS[.fff]: {text!r}")
    first, second, secs = match.groups()
    hours, minutes = (first, second) if second is not None else (None, first)
    if minutes is not None and hours is not None and int(minutes) >= 60:
        raise ValueError(f"minutes out of range in {text!r}")
    try:
        seconds = Decimal(secs)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a timestamp: {text!r}") from None
    if (hours is not None or minutes is not None) and seconds >= 60:
        raise ValueError(f"seconds out of range in {text!r}")
    total = seconds + 60 * int(minutes or 0) + 3600 * int(hours or 0)
    return float(total)


def parse_span(start: str, end: str) -> tuple[float, float]:
    """A ``(start, end)`` span in seconds; raises ValueError unless ``0 <= start < end``."""
    span = (parse_timestamp(start), parse_timestamp(end))
    if not span[0] < span[1]:
        raise ValueError(f"span end {end!r} is not after its start {start!r}")
    return span


def ffmpeg_exe() -> str:
    """The ffmpeg binary that ships with imageio-ffmpeg (has libx264)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def cut(src: Path, dst: Path, span: tuple[float, float] | None) -> None:
    """Write the frames of ``src`` in ``span`` (all frames when None) to ``dst`` as H.264 mp4.

    Video only (``-an``): YouTube's adaptive streams carry no audio and training reads none.
    Odd sizes are rounded down to even ones, which yuv420p needs.
    """
    seek = ["-ss", f"{span[0]:.6f}"] if span else []
    duration = ["-t", f"{span[1] - span[0]:.6f}"] if span else []
    command = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "warning", "-y",
        *seek, "-i", str(src), *duration,
        "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough",
        "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
        "-c:v", "libx264", "-preset", X264_PRESET, "-crf", X264_CRF, "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-f", "mp4", str(dst),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClipError(FailureKind.BAD_VIDEO, f"ffmpeg took over {FFMPEG_TIMEOUT_S} s") from None
    if done.returncode != 0 or not dst.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClipError(FailureKind.BAD_VIDEO, f"ffmpeg failed on {src.name}: {last}")
    if "Output file is empty" in done.stderr:  # a span past the end of the video
        where = f"span [{span[0]:g}, {span[1]:g}) s" if span else "the video"
        raise ClipError(FailureKind.TOO_SHORT, f"no frames in {where} of {src.name}")


@dataclass(frozen=True)
class VideoInfo:
    """What was measured on a video file."""

    width: int
    height: int
    fps: float
    frames: int


def probe(path: Path) -> VideoInfo:
    """Measure a video by decoding it with OpenCV; raise ``bad_video`` if it does not decode.

    The frame count comes from the container (exact for mp4, docs/environment.md#video-io) and
    falls back to counting frames when the container has none.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ClipError(FailureKind.BAD_VIDEO, f"cannot open {path.name} as a video")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ClipError(FailureKind.BAD_VIDEO, f"{path.name} has no decodable frame")
        height, width = frame.shape[:2]
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if frames <= 0:
            frames = 1
            while cap.grab():
                frames += 1
    finally:
        cap.release()
    return VideoInfo(width=int(width), height=int(height), fps=round(fps, 3), frames=frames)
