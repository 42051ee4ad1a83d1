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
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ctrlpost.errors import WeightsError
from ctrlpost.hub.catalog import LICENSE_URL

CHUNK_BYTES = 8 * 2**20


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
    """How transient network failures are retried: ``attempts`` in a row without progress, with
    exponential waits from ``wait_s`` (capped at 8 s); a drop after some bytes resumes at once."""

    attempts: int = 5
    wait_s: float = 1.0


DEFAULT_RETRY = Retry()


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

    Returns the digests computed. Raises :class:`HashMismatch` (partial deleted), hub errors from
    huggingface_hub, transport errors once retries are spent (partial kept for the next run), and
    :class:`OSError` / :class:`WeightsError` for a full disk (partial kept).
    """
    import httpx2

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
        except (httpx2.TransportError, _Truncated) as exc:
            if isinstance(exc, httpx2.ProxyError | httpx2.UnsupportedProtocol):
                raise
            on_disk = partial.stat().st_size if partial.exists() else 0
            # A drop after some bytes is the common case on long downloads: resume at once.
            failures = 0 if on_disk > done else failures + 1
            done = on_disk
            if failures > retry.attempts:
                raise
            if failures:
                time.sleep(min(retry.wait_s * 2 ** (failures - 1), 8.0))
    actual = digests.hexdigests()
    wrong = mismatch(expected, actual)
    if wrong is not None:
        partial.unlink(missing_ok=True)
        raise wrong
    os.replace(partial, dest)
    return actual


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
    status = getattr(getattr(exc, "response", None), "status_code", None)
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


def check_access(url: str, *, token: str | bool | None, endpoint: str, timeout_s: float) -> None:
    """HEAD a file (no retries): a 401/403/404 surfaces before any byte of any file is fetched."""
    from huggingface_hub import get_hf_file_metadata

    get_hf_file_metadata(url, token=token, endpoint=endpoint, timeout=timeout_s)
