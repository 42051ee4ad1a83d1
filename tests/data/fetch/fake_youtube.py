"""A stand-in for ``pytubefix.YouTube`` that serves local mp4 files, for `fetch-data` tests.

Failures are injected where the real network would fail them: at ``.streams`` (the first
request pytubefix makes) and inside ``Stream.download``. A *catalog* says what each URL serves:

    {"https://www.youtube.com/watch?v=aaaaaaaaaaa": {
        "streams": [{"itag": 137, "height": 1080, "adaptive": true, "file": "/tmp/a.mp4"}, ...],
        "fail": ["network"],            # the n-th YouTube(url) fails with fail[n]; then success
        "always": "bot",                # or: every call fails ("bot", "unavailable", "private")
        "sleep_s": 0.0,                 # pause halfway through each download
        "truncate": false               # return normally after half the bytes (like a 404)
    }}

In-process, pass ``FakeYouTube(catalog, log=path)`` as ``youtube_factory``. In a subprocess, set
``CTRLPOST_YOUTUBE_FACTORY=fake_youtube:from_env`` with this folder on ``PYTHONPATH``,
``FAKE_YOUTUBE_CATALOG`` to a JSON file holding the catalog, and ``FAKE_YOUTUBE_LOG`` to a file
that receives one line per download (``<url>``), so tests can count downloads across runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytubefix import exceptions


class FakeStream:
    """The attributes of ``pytubefix.Stream`` that a downloader reads, over a local file."""

    def __init__(self, spec: dict[str, Any], *, url: str, entry: dict[str, Any],
                 log: Path | None) -> None:
        self.itag = int(spec["itag"])
        self.height = int(spec["height"])
        self.width = int(spec.get("width", self.height * 16 // 9))
        self.resolution = f"{self.height}p"
        self.fps = int(spec.get("fps", 24))
        self.mime_type = spec.get("mime_type", "video/mp4")
        self.type, self.subtype = self.mime_type.split("/")
        self.video_codec = spec.get("codec", "avc1.640028")
        self.is_adaptive = bool(spec.get("adaptive", True))
        self.is_progressive = not self.is_adaptive
        self.includes_video_track = self.type == "video"
        self.includes_audio_track = self.is_progressive
        self.bitrate = int(spec.get("bitrate", self.height * 1000))
        self._file = Path(spec["file"])
        self._url, self._entry, self._log = url, entry, log
        self.filesize = self._file.stat().st_size
        self.calls: list[dict[str, Any]] = []

    def download(self, output_path: str | None = None, filename: str | None = None,
                 filename_prefix: str | None = None, skip_existing: bool = True,
                 timeout: int | None = None, max_retries: int = 0,
                 interrupt_checker: Callable[[], bool] | None = None) -> str | None:
        self.calls.append({"skip_existing": skip_existing, "filename": filename})
        target = Path(output_path or ".") / (filename or f"{self.itag}.mp4")
        if self._log is not None:
            with open(self._log, "a") as handle:
                handle.write(self._url + "\n")
        data = self._file.read_bytes()
        half = len(data) // 2
        with open(target, "wb") as handle:
            for piece in (data[:half], data[half:]):
                if interrupt_checker is not None and interrupt_checker():
                    return None
                handle.write(piece)
                handle.flush()
                if self._entry.get("truncate"):
                    return str(target)  # pytubefix swallows a 404 mid-file the same way
                if self._entry.get("sleep_s"):
                    _sleep(float(self._entry["sleep_s"]), interrupt_checker)
                    self._entry = {**self._entry, "sleep_s": 0}
        return str(target)


def _sleep(seconds: float, interrupted: Callable[[], bool] | None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (interrupted and interrupted()):
        time.sleep(0.02)


class FakeVideo:
    """One ``YouTube(url)`` object."""

    def __init__(self, url: str, entry: dict[str, Any], calls: int, log: Path | None) -> None:
        self.url, self._entry, self._calls, self._log = url, entry, calls, log
        self.video_id = url.rsplit("=", 1)[-1]

    @property
    def streams(self) -> list[FakeStream]:
        fails = list(self._entry.get("fail", []))
        failure = self._entry.get("always") or (
            fails[self._calls] if self._calls < len(fails) else None)
        if failure:
            raise _exception(failure, self.video_id)
        return [FakeStream(spec, url=self.url, entry=self._entry, log=self._log)
                for spec in self._entry["streams"]]


def _exception(kind: str, video_id: str) -> Exception:
    if kind == "network":
        return urllib.error.URLError("[Errno -2] Name or service not known")
    if kind == "bot":
        return exceptions.BotDetection(video_id)
    if kind == "private":
        return exceptions.VideoPrivate(video_id)
    if kind == "unavailable":
        return exceptions.VideoUnavailable(video_id)
    raise ValueError(f"unknown failure {kind!r}")


class FakeYouTube:
    """A ``youtube_factory``: ``FakeYouTube(catalog)(url)`` behaves like ``YouTube(url)``."""

    def __init__(self, catalog: dict[str, dict[str, Any]], log: Path | None = None) -> None:
        self.catalog, self.log = catalog, log
        self.constructed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str, **_: Any) -> FakeVideo:
        if "watch?v=" not in url:
            raise exceptions.RegexMatchError("video_id", r"(?:v=|\/)([0-9A-Za-z_-]{11}).*")
        with self._lock:
            calls = self.constructed.get(url, 0)
            self.constructed[url] = calls + 1
        entry = self.catalog.get(url)
        if entry is None:
            return FakeVideo(url, {"always": "unavailable"}, calls, self.log)
        return FakeVideo(url, entry, calls, self.log)

    def downloads(self) -> list[str]:
        """URLs downloaded so far, one per download, from the log file."""
        return self.log.read_text().split() if self.log and self.log.exists() else []


_FROM_ENV: FakeYouTube | None = None


def from_env(url: str, **kwargs: Any) -> FakeVideo:
    """The factory a subprocess loads: catalog and log from the environment."""
    global _FROM_ENV
    if _FROM_ENV is None:
        catalog = json.loads(Path(os.environ["FAKE_YOUTUBE_CATALOG"]).read_text())
        log = os.environ.get("FAKE_YOUTUBE_LOG")
        _FROM_ENV = FakeYouTube(catalog, Path(log) if log else None)
    return _FROM_ENV(url, **kwargs)
