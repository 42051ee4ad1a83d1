"""Why a clip failed: a small closed set of classes, and which of them are worth retrying.

Every failure of a clip is recorded in the manifest as one of :class:`FailureKind` plus a
message. Only ``network`` failures are retried: a bot check, a private video or a clip that is
too short will fail the same way again, and retrying them only hammers YouTube.
"""

from __future__ import annotations

import enum
import http.client
import urllib.error


class FailureKind(str, enum.Enum):
    """The class of a clip failure, as written to the manifest's ``error_class``."""

    BOT_DETECTION = "bot_detection"
    """YouTube asked for a login or a PO token (pytubefix BotDetection/PoTokenRequired/...)."""
    UNAVAILABLE = "unavailable"
    """The video is gone, private, age- or region-restricted, members-only, live..."""
    NETWORK = "network"
    """Connection, DNS, timeout or an incomplete download. The only retried class."""
    TOO_SHORT = "too_short"
    """The clip has fewer frames than ``[data].num_frames`` after cutting."""
    TOO_LOW_RESOLUTION = "too_low_resolution"
    """No mp4 video stream reaches ``[data.fetch].min_height``."""
    BAD_RECORD = "bad_record"
    """A malformed metadata line or caption row (bad JSON, field, span or URL)."""
    MISSING_CAPTION = "missing_caption"
    """A local video with no row in the captions file."""
    BAD_VIDEO = "bad_video"
    """A video that cannot be decoded, or that ffmpeg cannot cut."""
    EXTRACTION = "extraction"
    """pytubefix could not parse YouTube's answer (usually: upgrade pytubefix)."""
    IO = "io"
    """A local file-system error (disk full, permissions)."""
    INTERNAL = "internal"
    """A bug: an exception nobody expected. Reported per clip so other clips go on."""


class ClipError(Exception):
    """A failure whose class is already known where it is raised."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# pytubefix's bot checks are subclasses of VideoUnavailable, so they are matched first.
_BOT_CHECKS = ("BotDetection", "PoTokenRequired", "LoginRequired")


def classify(exc: BaseException) -> tuple[FailureKind, str]:
    """The failure class and a one-line message for any exception raised while fetching."""
    if isinstance(exc, ClipError):
        return exc.kind, exc.message
    message = _one_line(exc)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & set(_BOT_CHECKS):
        return FailureKind.BOT_DETECTION, message
    if "VideoUnavailable" in names:
        return FailureKind.UNAVAILABLE, message
    if "RegexMatchError" in names:
        # Raised by YouTube(url) when no video id can be found in the URL.
        return FailureKind.BAD_RECORD, f"not a YouTube video URL ({message})"
    if "MaxRetriesExceeded" in names:
        return FailureKind.NETWORK, message
    if "PytubeFixError" in names:
        return FailureKind.EXTRACTION, message
    # pytubefix lets urllib's URLError through (not a PytubeFixError): DNS, refused, 4xx/5xx.
    if isinstance(exc, urllib.error.URLError | TimeoutError | ConnectionError
                  | http.client.HTTPException):
        return FailureKind.NETWORK, message
    if isinstance(exc, OSError):
        return FailureKind.IO, message
    return FailureKind.INTERNAL, message


def is_retryable(kind: FailureKind) -> bool:
    """Whether another attempt can succeed: only transient network trouble."""
    return kind is FailureKind.NETWORK


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"
