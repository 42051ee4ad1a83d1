"""Downloading one YouTube video with pytubefix: stream choice and a verified download.

The reference took ``get_highest_resolution()``, the best *progressive* stream (video+audio),
which YouTube caps at 360p or 720p. Training wants 704+ rows, which YouTube serves only as
*adaptive* (video-only) streams, so we take the best adaptive mp4 at or above
``[data.fetch].min_height`` and fall back to a progressive one only if it is tall enough.

The ``YouTube`` class is a parameter (``factory``): tests pass a stand-in, and a user whom
YouTube asks for PO tokens can pass e.g. ``functools.partial(YouTube, use_po_token=True)``
through ``CTRLPOST_YOUTUBE_FACTORY=module:attribute``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ctrlpost.data.fetch.failures import ClipError, FailureKind
from ctrlpost.errors import DataError

YouTubeFactory = Callable[[str], Any]
"""Called with a URL; returns an object with ``.streams`` like ``pytubefix.YouTube``."""

FACTORY_ENV = "CTRLPOST_YOUTUBE_FACTORY"
DOWNLOAD_TIMEOUT_S = 60
"""Socket timeout of each download request: a stalled connection fails (and is retried)."""


def default_factory() -> YouTubeFactory:
    """``pytubefix.YouTube``, imported only when a download is about to happen."""
    try:
        from pytubefix import YouTube
    except ImportError:
        raise DataError("the hdvila source needs pytubefix",
                        hint="pip install pytubefix") from None
    return YouTube  # type: ignore[no-any-return]


def factory_from_env(environ: Mapping[str, str] | None = None) -> YouTubeFactory | None:
    """The factory named by ``$CTRLPOST_YOUTUBE_FACTORY`` (``module:attribute``), if set."""
    spec = (os.environ if environ is None else environ).get(FACTORY_ENV, "").strip()
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute or "YouTube")
    except (ImportError, AttributeError) as exc:
        raise DataError(f"{FACTORY_ENV}={spec}: {exc}",
                        hint="use module:attribute of an importable callable") from None
    if not callable(factory):
        raise DataError(f"{FACTORY_ENV}={spec} is not callable")
    return factory  # type: ignore[no-any-return]


def height_of(stream: Any) -> int:
    """Rows of a video stream, from its height or else its ``"720p"`` resolution label."""
    height = getattr(stream, "height", None)
    if height:
        return int(height)
    label = str(getattr(stream, "resolution", "") or "")
    digits = label.rstrip("p").split("p")[0]
    return int(digits) if digits.isdigit() else 0


def _is_mp4_video(stream: Any) -> bool:
    return getattr(stream, "mime_type", "") == "video/mp4" and bool(
        getattr(stream, "includes_video_track", False))


def _rank(stream: Any) -> tuple[int, bool, float, int]:
    # Taller first; at equal height H.264 (avc1) over AV1, which older decoders lack; then fps.
    codec = str(getattr(stream, "video_codec", "") or "")
    return (height_of(stream), codec.startswith("avc1"), float(getattr(stream, "fps", 0) or 0),
            int(getattr(stream, "bitrate", 0) or 0))


def choose_stream(streams: Iterable[Any], min_height: int) -> Any:
    """The best adaptive mp4 video stream with at least ``min_height`` rows.

    Falls back to the best progressive mp4 that is tall enough; raises ``too_low_resolution``
    naming the best height on offer when none is.
    """
    videos = [s for s in streams if _is_mp4_video(s)]
    for kind in ("is_adaptive", "is_progressive"):
        tall = [s for s in videos if getattr(s, kind, False) and height_of(s) >= min_height]
        if tall:
            return max(tall, key=_rank)
    best = max((height_of(s) for s in videos), default=0)
    offer = f"the best mp4 stream is {best}p" if best else "there is no mp4 video stream"
    raise ClipError(FailureKind.TOO_LOW_RESOLUTION,
                    f"too low resolution: {offer}, [data.fetch].min_height is {min_height}")


def describe(stream: Any) -> dict[str, Any]:
    """The manifest's ``stream`` field: what was downloaded."""
    return {
        "itag": getattr(stream, "itag", None),
        "mime": getattr(stream, "mime_type", None),
        "resolution": getattr(stream, "resolution", None),
        "height": height_of(stream),
        "fps": getattr(stream, "fps", None),
        "codec": getattr(stream, "video_codec", None),
        "adaptive": bool(getattr(stream, "is_adaptive", False)),
    }


def download(factory: YouTubeFactory, url: str, workdir: Path, *, min_height: int,
             stop: threading.Event) -> tuple[Path, dict[str, Any]]:
    """Download the best stream of ``url`` to ``workdir/source.mp4``; return it and its stream.

    The bytes go to ``source.mp4.part``, which becomes ``source.mp4`` only once its size
    matches the stream's: pytubefix returns normally after an HTTP 404 mid-file or an
    interrupt, leaving a short file behind.
    """
    youtube = factory(url)  # inside the caller's try: a bad URL fails this video only
    stream = choose_stream(list(youtube.streams), min_height)
    part = workdir / "source.mp4.part"
    stream.download(output_path=str(workdir), filename=part.name, skip_existing=False,
                    timeout=DOWNLOAD_TIMEOUT_S, max_retries=0, interrupt_checker=stop.is_set)
    if stop.is_set():
        raise ClipError(FailureKind.NETWORK, "interrupted")
    expected = int(getattr(stream, "filesize", 0) or 0)
    got = part.stat().st_size if part.is_file() else 0
    if got == 0 or (expected and got != expected):
        raise ClipError(FailureKind.NETWORK,
                        f"incomplete download: {got} of {expected or '?'} bytes")
    final = workdir / "source.mp4"
    os.replace(part, final)
    info = describe(stream)
    info["filesize"] = got
    return final, info
