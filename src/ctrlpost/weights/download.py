"""One file from the hub to disk: resumable, hashed while streaming, never left in place if wrong.

Why not ``hf_hub_download``: in huggingface_hub 2.4 it writes to a process-unique temporary file
that it deletes on any failure, so an interrupted 15 GB download restarts from zero on the next
run, and it checks only the size, never a hash. Here the partial file lives next to its
destination under a name keyed by the expected hash (``<file>.<hash12>.incomplete``), a later run
continues it with an HTTP Range request, and sha256 (LFS files), the git blob sha1 (small files)
and the reference's MD5 are computed in chunks as the bytes arrive. huggingface_hub still does
everything else: URLs, the token (``HF_TOKEN`` or ``hf auth login``), the shared HTTP client,
``HF_HUB_OFFLINE``, and the classification of the hub's errors, mapped here to one-line
:class:`~ctrlpost.errors.WeightsError` messages that name the fix.

Every request to the hub (listing, access check, download) goes through one retry policy,
:class:`Retry`: HTTP 5xx and 429 are retried with capped exponential backoff, or after the
``Retry-After`` the hub asks for; other 4xx are answers, not accidents, and fail at once.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from ctrlpost.errors import WeightsError
from ctrlpost.files import commit_file
from ctrlpost.weights.catalog import LICENSE_URL

CHUNK_BYTES = 8 * 2**20

_T = TypeVar("_T")


class FileProgress(Protocol):
    """Progress of one file, in bytes."""

    def update(self, completed: int) -> None: ...

    def close(self) -> None: ...


#: Makes the progress of one file: ``(label, total bytes or None) -> FileProgress``.
ProgressFactory = Callable[[str, "int | None"], FileProgress]


class _NoProgress:
    def update(self, completed: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(label: str, total: int | None) -> FileProgress:
    """A :data:`ProgressFactory` that shows nothing."""
    return _NoProgress()


@dataclass(frozen=True)
class Expected:
    """What a file must be: size and any of the three digests (None: not checked)."""

    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None
    md5: str | None = None

    def key(self) -> str:
        """A short identity of the expected content, used to name partial files."""
        digest = self.sha256 or self.git_sha1 or self.md5
        return digest[:12] if digest else f"size{self.size}"


class HashMismatch(Exception):
    """The bytes do not have the expected digest (the file has been deleted)."""

    def __init__(self, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"{algorithm} mismatch: expected {expected}, got {actual}")
        self.algorithm = algorithm


class Digests:
    """sha256 / git blob sha1 / md5 of a byte stream, fed in chunks (only those asked for)."""

    def __init__(self, *, sha256: bool, git_sha1_size: int | None, md5: bool) -> None:
        self._config = (sha256, git_sha1_size, md5)
        self._hashes: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Start again from zero bytes."""
        sha256, git_sha1_size, md5 = self._config
        self._hashes = {}
        if sha256:
            self._hashes["sha256"] = hashlib.sha256()
        if git_sha1_size is not None:
            # git hashes "blob <size>\0" + content: the size must be known before the content.
            self._hashes["git_sha1"] = hashlib.sha1(
                f"blob {git_sha1_size}\0".encode(), usedforsecurity=False
            )
        if md5:
            self._hashes["md5"] = hashlib.md5(usedforsecurity=False)

    @classmethod
    def for_expected(cls, expected: Expected) -> Digests:
        git_size = expected.size if expected.git_sha1 and not expected.sha256 else None
        return cls(sha256=bool(expected.sha256), git_sha1_size=git_size, md5=bool(expected.md5))

    def empty(self) -> bool:
        """Whether no digest is asked for (nothing to read)."""
        return not self._hashes

    def update(self, chunk: bytes) -> None:
        for h in self._hashes.values():
            h.update(chunk)

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self._hashes.items()}


def mismatch(expected: Expected, actual: dict[str, str]) -> HashMismatch | None:
    """The first authoritative digest that disagrees with ``expected``, or None.

    The hub's sha256 / git oid is authoritative when known; the reference's MD5 only when the hub
    gave neither (an MD5 that disagrees with a hub-verified file means the hub's copy changed).
    """
    enforced = [a for a in ("sha256", "git_sha1") if getattr(expected, a)] or ["md5"]
    for algorithm in enforced:
        want = getattr(expected, algorithm)
        got = actual.get(algorithm)
        if want and got and want.lower() != got:
            return HashMismatch(algorithm, want, got)
    return None


def hash_file(path: Path, digests: Digests, progress: FileProgress | None = None) -> dict[str, str]:
    """Feed a file to ``digests`` in chunks (never the whole file in memory)."""
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digests.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress.update(done)
    return digests.hexdigests()


def partial_path(dest: Path, expected: Expected) -> Path:
    """Where the bytes of ``dest`` accumulate until they are complete and verified."""
    return dest.with_name(f"{dest.name}.{expected.key()}.incomplete")


def _drop_stale_partials(dest: Path, keep: Path) -> None:
    """Partials of an older revision of the file can never be completed: remove them."""
    for stale in dest.parent.glob(f"{dest.name}.*.incomplete"):
        if stale != keep:
            stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class Retry:
    """How every request to the hub is retried after a transient failure.

    Transient: HTTP 5xx and 429 (an overloaded or restarting hub or CDN), and, for downloads, a
    dropped connection. ``attempts`` retries in a row without progress, waiting ``wait_s``,
    doubled each time up to ``max_wait_s``; a 429 or 503 with ``Retry-After`` waits what the hub
    asks instead (at most ``max_retry_after_s``, so a bogus header cannot hang the command). A
    download dropped after some bytes resumes at once, and that resets the count.
    """

    attempts: int = 5
    wait_s: float = 1.0
    max_wait_s: float = 8.0
    max_retry_after_s: float = 120.0

    def delay_s(self, failures: int, exc: BaseException) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...), ``exc``."""
        asked = retry_after_s(exc)
        if asked is not None:
            return min(asked, self.max_retry_after_s)
        return min(self.wait_s * 2 ** (failures - 1), self.max_wait_s)

    def pause(self, failures: int, exc: Exception) -> None:
        """Wait before the next try, or raise when the retries are spent: :class:`GaveUp` for a
        transient HTTP status, ``exc`` itself otherwise (a transport error)."""
        if failures > self.attempts:
            if is_transient_status(http_status(exc)):
                raise GaveUp(exc, tries=failures) from exc
            raise exc
        time.sleep(self.delay_s(failures, exc))


DEFAULT_RETRY = Retry()


class GaveUp(Exception):
    """The hub kept answering a transient HTTP error (5xx, 429) through every retry."""

    def __init__(self, cause: Exception, *, tries: int) -> None:
        self.status = http_status(cause)
        self.tries = tries
        super().__init__(f"HTTP {self.status} {tries} times in a row")


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a hub error (huggingface_hub's errors carry the response), else None."""
    return getattr(getattr(exc, "response", None), "status_code", None)


def is_transient_status(status: int | None) -> bool:
    """5xx and 429 may succeed on a later try; other statuses are the hub's final answer."""
    return status is not None and (status == 429 or 500 <= status <= 599)


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds a 429/503 asks to wait (``Retry-After``: seconds or an HTTP date), else None."""
    import email.utils  # only on a failure: the CLI starts on every TAB

    response = getattr(exc, "response", None)
    if response is None or response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def with_retries(call: Callable[[], _T], *, retry: Retry) -> _T:
    """``call()`` (one request to the hub), retried on HTTP 5xx / 429 as ``retry`` says.

    Transport errors are not retried here: a dead network or a wrong endpoint should fail in
    seconds, not after a minute of backoff (downloads, which also resume, see :func:`download`).
    """
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient_status(http_status(exc)):
                raise
            failures += 1
            retry.pause(failures, exc)


def download(
    url: str,
    dest: Path,
    *,
    expected: Expected,
    headers: dict[str, str],
    progress: FileProgress,
    retry: Retry = DEFAULT_RETRY,
    timeout_s: float = 10.0,
) -> dict[str, str]:
    """Download ``url`` to ``dest`` (resuming a partial), verify it, move it into place.

    Dropped connections and HTTP 5xx / 429 are retried as ``retry`` says, each retry resuming
    the partial file with a Range request. Returns the digests computed. Raises
    :class:`HashMismatch` (partial deleted), :class:`GaveUp` or a transport error once retries
    are spent (partial kept for the next run), other hub errors from huggingface_hub, and
    :class:`OSError` / :class:`WeightsError` for a full disk (partial kept).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest, expected)
    _drop_stale_partials(dest, partial)
    if expected.size is not None and partial.exists() and partial.stat().st_size > expected.size:
        partial.unlink()
    digests = Digests.for_expected(expected)
    done = 0
    if partial.exists():
        # Hashes cannot be saved between runs: re-read what is on disk (local, fast) first.
        hash_file(partial, digests)
        done = partial.stat().st_size
    progress.update(done)
    failures = 0
    while expected.size is None or done < expected.size:
        try:
            done = _transfer(url, partial, done, digests, headers, progress, expected.size,
                             timeout_s)
            break
        except Exception as exc:
            if not _worth_retrying(exc):
                raise
            on_disk = partial.stat().st_size if partial.exists() else 0
            # A drop after some bytes is the common case on long downloads: resume at once.
            failures = 0 if on_disk > done else failures + 1
            done = on_disk
            if failures:
                retry.pause(failures, exc)
    actual = digests.hexdigests()
    if expected.git_sha1 and not expected.sha256 and "git_sha1" not in actual:
        # The blob id hashes the size first; unknown before the transfer, so hash it now
        # (git-stored files are small).
        size = partial.stat().st_size
        actual.update(hash_file(partial, Digests(sha256=False, git_sha1_size=size, md5=False)))
    wrong = mismatch(expected, actual)
    if wrong is not None:
        partial.unlink(missing_ok=True)
        raise wrong
    commit_file(partial, dest)
    return actual


def _worth_retrying(exc: Exception) -> bool:
    """A dropped or truncated transfer, or a transient HTTP status; not a misconfiguration."""
    import httpx2

    if isinstance(exc, httpx2.ProxyError | httpx2.UnsupportedProtocol):
        return False
    return (isinstance(exc, httpx2.TransportError | _Truncated)
            or is_transient_status(http_status(exc)))


class _Truncated(Exception):
    """The body ended before the announced length without the client flagging it."""


def _transfer(
    url: str,
    partial: Path,
    done: int,
    digests: Digests,
    headers: dict[str, str],
    progress: FileProgress,
    size: int | None,
    timeout_s: float,
) -> int:
    """One GET from byte ``done`` to the end; returns the bytes on disk."""
    import httpx2
    from huggingface_hub import get_session
    from huggingface_hub.utils import hf_raise_for_status

    request_headers = {**headers, "Accept-Encoding": "identity"}  # Range needs the raw bytes
    if done:
        request_headers["Range"] = f"bytes={done}-"
    timeout = httpx2.Timeout(timeout_s, connect=timeout_s)
    with get_session().stream(
        "GET", url, headers=request_headers, timeout=timeout, follow_redirects=True
    ) as response:
        if response.status_code == 416 and done == size:
            return done
        if response.status_code >= 400:
            response.read()  # the hub's error classification reads the body
            hf_raise_for_status(response)
        starts_at_done = response.headers.get("Content-Range", "").startswith(f"bytes {done}-")
        if done and (response.status_code != 206 or not starts_at_done):
            # The server ignored the Range request (or sent another range): start over rather
            # than append bytes that do not follow the partial file.
            done = 0
            digests.reset()
            progress.update(0)
        with partial.open("ab" if done else "wb") as f:
            # Chunks as they arrive (no re-chunking): what came before a drop is kept.
            for chunk in response.iter_bytes():
                _write(f, chunk, partial)
                digests.update(chunk)
                done += len(chunk)
                progress.update(done)
            _sync(f)
    if size is not None and done < size:
        raise _Truncated(f"{done} of {size} bytes")
    return done


def _write(f: BinaryIO, chunk: bytes, partial: Path) -> None:
    try:
        f.write(chunk)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(partial.parent) from None
        raise


def _sync(f: BinaryIO) -> None:
    """Flush to disk before the rename, so a crash never leaves a complete-looking short file."""
    f.flush()
    os.fsync(f.fileno())


def disk_full(folder: Path) -> WeightsError:
    """The error for ENOSPC while writing into ``folder``."""
    return WeightsError(
        f"disk full while writing into {folder}",
        hint="free space there (or point --dir / [weights].dir at a larger disk) and re-run: "
        "the partial download is kept and resumes",
    )


def network_error(endpoint: str, exc: BaseException) -> WeightsError:
    """The error for a hub that cannot be reached."""
    return WeightsError(
        f"cannot reach {endpoint}: {type(exc).__name__}: {exc}",
        hint="check the network, or set HF_ENDPOINT to a reachable mirror, or use "
        "HF_HUB_OFFLINE=1 with the weights already in place; partial downloads resume on re-run",
    )


def hub_error(exc: Exception, *, repo_id: str, path: str | None, endpoint: str) -> WeightsError:
    """Map huggingface_hub's errors for one repo/file to a one-line error naming the fix."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{repo_id}/{path}" if path else repo_id
    if isinstance(exc, GaveUp):
        return gave_up(exc, what=what if path else f"the file list of {repo_id}",
                       endpoint=endpoint)
    status = http_status(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return WeightsError(
            f"HF_HUB_OFFLINE=1: cannot download {what}",
            hint="unset HF_HUB_OFFLINE (or set it to 0) to download, or put the file in place",
        )
    if status == 401:
        return WeightsError(
            f"not logged in to the hub (HTTP 401 for {what})",
            hint="run `hf auth login` or set HF_TOKEN (a token with 'Read' permission); if the "
            "repo is private or misspelt, check [weights] in the recipe",
        )
    if isinstance(exc, GatedRepoError) or (status == 403 and _is_gated(exc)):
        url = LICENSE_URL.format(repo_id=repo_id)
        return WeightsError(
            f"license of {repo_id} not accepted by this account (HTTP 403, gated repo)",
            hint=f"accept the license at {url} while logged in, then re-run",
        )
    if status == 403:
        return WeightsError(
            f"access to {what} denied (HTTP 403)",
            hint="use a token with 'Read' permission: `hf auth login` or HF_TOKEN",
        )
    if isinstance(exc, RepositoryNotFoundError) or (status == 404 and path is None):
        return WeightsError(
            f"repo {repo_id} not found on {endpoint}",
            hint="check the repo ids in [weights] of the recipe (e.g. "
            "weights.tokenizer = \"nvidia/Cosmos-Tokenize1-CV8x8x8-720p\")",
        )
    if isinstance(exc, RevisionNotFoundError):
        return WeightsError(f"revision of {repo_id} not found on {endpoint}",
                            hint="check [weights] in the recipe")
    if isinstance(exc, RemoteEntryNotFoundError) or status == 404:
        return missing_file(repo_id, path or "?", endpoint)
    if isinstance(exc, HfHubHTTPError):
        return WeightsError(
            f"the hub answered HTTP {status} for {what}",
            hint="try again later, or set HF_ENDPOINT to another mirror",
        )
    return network_error(endpoint, exc)


def gave_up(exc: GaveUp, *, what: str, endpoint: str) -> WeightsError:
    """The error for a hub that kept failing ``what`` through every retry."""
    if exc.status == 429:
        return WeightsError(
            f"the hub at {endpoint} answered HTTP 429 (too many requests) for {what} "
            f"{exc.tries} times in a row",
            hint="wait a few minutes and re-run (partial downloads resume); requests with a "
            "token (`hf auth login` or HF_TOKEN) get a higher rate limit",
        )
    return WeightsError(
        f"the hub at {endpoint} answered HTTP {exc.status} for {what} {exc.tries} times in a row",
        hint="the hub is failing: re-run later (partial downloads resume), or set HF_ENDPOINT "
        "to a mirror",
    )


def missing_file(repo_id: str, path: str, endpoint: str) -> WeightsError:
    """The error for a file the repo does not have."""
    return WeightsError(
        f"file {path} not found in repo {repo_id} on {endpoint}",
        hint="check [weights] in the recipe (base/control are <org>/<repo>/<file> under "
        "[weights].dir)",
    )


def _is_gated(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    return response is not None and response.headers.get("X-Error-Code") == "GatedRepo"


def file_url(repo_id: str, path: str, *, revision: str, endpoint: str) -> str:
    """The hub's resolve URL of a file."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, path, revision=revision, endpoint=endpoint)


def request_headers(token: str | bool | None) -> dict[str, str]:
    """Auth and user-agent headers as huggingface_hub builds them (``HF_TOKEN`` / stored login)."""
    from huggingface_hub.utils import build_hf_headers

    from ctrlpost import __version__

    return build_hf_headers(token=token, library_name="ctrlpost", library_version=__version__)


def check_access(url: str, *, token: str | bool | None, endpoint: str, timeout_s: float,
                 retry: Retry = DEFAULT_RETRY) -> None:
    """HEAD a file: a 401/403/404 surfaces before any byte of any file is fetched (5xx / 429
    are retried as ``retry`` says)."""
    from huggingface_hub import get_hf_file_metadata

    with_retries(lambda: get_hf_file_metadata(url, token=token, endpoint=endpoint,
                                              timeout=timeout_s), retry=retry)
