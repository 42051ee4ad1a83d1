"""Stream choice, failure classes and the verified download, against the fake YouTube."""

from __future__ import annotations

import threading
import urllib.error
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pytubefix import exceptions

from ctrlpost.data.fetch import youtube
from ctrlpost.data.fetch.failures import ClipError, FailureKind, classify, is_retryable
from ctrlpost.errors import DataError

URL = "https://www.youtube.com/watch?v=aaaaaaaaaaa"


def streams(fake: ModuleType, source: Path, specs: list[dict[str, Any]]) -> list[Any]:
    return [fake.FakeStream({**spec, "file": str(source)}, url=URL, entry={}, log=None)
            for spec in specs]


LADDER = [
    {"itag": 18, "height": 360, "adaptive": False},
    {"itag": 22, "height": 720, "adaptive": False},
    {"itag": 136, "height": 720, "adaptive": True},
    {"itag": 398, "height": 720, "adaptive": True, "codec": "av01.0.05M.08"},
    {"itag": 137, "height": 1080, "adaptive": True},
    {"itag": 399, "height": 1080, "adaptive": True, "codec": "av01.0.08M.08"},
    {"itag": 248, "height": 1440, "adaptive": True, "mime_type": "video/webm", "codec": "vp9"},
    {"itag": 140, "height": 0, "adaptive": True, "mime_type": "audio/mp4", "codec": "mp4a"},
]


def test_chooses_the_best_adaptive_mp4_at_or_above_min_height(
        tmp_path: Path, fake_youtube: ModuleType) -> None:
    source = tmp_path / "s.mp4"
    source.write_bytes(b"x")
    offered = streams(fake_youtube, source, LADDER)
    # 1440p is webm, audio is audio: the best mp4 video is 1080p, H.264 before AV1.
    assert youtube.choose_stream(offered, 704).itag == 137
    assert youtube.describe(youtube.choose_stream(offered, 704)) == {
        "itag": 137, "mime": "video/mp4", "resolution": "1080p", "height": 1080, "fps": 24,
        "codec": "avc1.640028", "adaptive": True}


def test_falls_back_to_progressive_only_when_tall_enough(
        tmp_path: Path, fake_youtube: ModuleType) -> None:
    source = tmp_path / "s.mp4"
    source.write_bytes(b"x")
    progressive_only = streams(fake_youtube, source, LADDER[:2])
    assert youtube.choose_stream(progressive_only, 704).itag == 22
    with pytest.raises(ClipError) as caught:
        youtube.choose_stream(progressive_only, 1080)
    assert caught.value.kind is FailureKind.TOO_LOW_RESOLUTION
    assert "too low resolution: the best mp4 stream is 720p" in caught.value.message
    with pytest.raises(ClipError, match="there is no mp4 video stream"):
        youtube.choose_stream(streams(fake_youtube, source, LADDER[-2:]), 704)


@pytest.mark.parametrize(("exc", "kind"), [
    (exceptions.BotDetection("v"), FailureKind.BOT_DETECTION),
    (exceptions.PoTokenRequired("v", "WEB"), FailureKind.BOT_DETECTION),
    (exceptions.LoginRequired("v", "sign in"), FailureKind.BOT_DETECTION),
    (exceptions.VideoUnavailable("v"), FailureKind.UNAVAILABLE),
    (exceptions.VideoPrivate("v"), FailureKind.UNAVAILABLE),
    (exceptions.AgeRestrictedError("v"), FailureKind.UNAVAILABLE),
    (exceptions.RegexMatchError("f", "p"), FailureKind.BAD_RECORD),
    (exceptions.MaxRetriesExceeded(), FailureKind.NETWORK),
    (exceptions.HTMLParseError("x"), FailureKind.EXTRACTION),
    (urllib.error.URLError("[Errno -2] Name or service not known"), FailureKind.NETWORK),
    (urllib.error.HTTPError(URL, 503, "busy", {}, None), FailureKind.NETWORK),  # type: ignore[arg-type]
    (TimeoutError("timed out"), FailureKind.NETWORK),
    (ConnectionResetError(104, "reset"), FailureKind.NETWORK),
    (OSError(28, "No space left on device"), FailureKind.IO),
    (KeyError("x"), FailureKind.INTERNAL),
    (ClipError(FailureKind.TOO_SHORT, "3 frames"), FailureKind.TOO_SHORT),
])
def test_classify(exc: Exception, kind: FailureKind) -> None:
    got, message = classify(exc)
    assert got is kind and message
    assert is_retryable(got) == (kind is FailureKind.NETWORK)


def catalog(source: Path, **entry: Any) -> dict[str, Any]:
    specs = [{**s, "file": str(source)} for s in LADDER[:5]]
    return {URL: {"streams": specs, **entry}}


def test_download_verifies_size_and_never_skips_existing(
        tmp_path: Path, fake_youtube: ModuleType,
        indexed_video: Callable[..., Path]) -> None:
    source = indexed_video(tmp_path / "src.mp4", 24)
    work = tmp_path / "work"
    work.mkdir()
    (work / "source.mp4.part").write_bytes(b"stale partial")  # must not be taken as done
    path, stream = youtube.download(fake_youtube.FakeYouTube(catalog(source)), URL, work,
                                    min_height=704, stop=threading.Event())
    assert path == work / "source.mp4" and path.read_bytes() == source.read_bytes()
    assert stream["itag"] == 137 and stream["filesize"] == source.stat().st_size
    assert not (work / "source.mp4.part").exists()

    short = fake_youtube.FakeYouTube(catalog(source, truncate=True))
    with pytest.raises(ClipError) as caught:
        youtube.download(short, URL, work, min_height=704, stop=threading.Event())
    assert caught.value.kind is FailureKind.NETWORK
    size = source.stat().st_size
    assert caught.value.message == f"incomplete download: {size // 2} of {size} bytes"


def test_factory_from_env(fake_youtube: ModuleType) -> None:
    assert youtube.factory_from_env({}) is None
    factory = youtube.factory_from_env({youtube.FACTORY_ENV: "fake_youtube:from_env"})
    assert factory is fake_youtube.from_env
    with pytest.raises(DataError, match="CTRLPOST_YOUTUBE_FACTORY=nowhere:x"):
        youtube.factory_from_env({youtube.FACTORY_ENV: "nowhere:x"})
