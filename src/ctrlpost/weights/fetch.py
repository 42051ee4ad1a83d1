"""`ctrlpost fetch-weights`: have every checkpoint a recipe needs in place, verified.

The steps, each usable alone: :func:`plan_downloads` (catalog, no network) → :func:`resolve`
(the hub's metadata) → :func:`fetch`: verify what is present, check free disk, check access to
every file to download (a gated repo fails before hours of other downloads), then download each
file — resumable, hashed while streaming (:mod:`ctrlpost.weights.download`). :func:`dry_run` shows
sizes, destinations and free disk instead.

Exit-code policy (rendered by the CLI): :class:`~ctrlpost.errors.WeightsError` (exit 2) for what
must be fixed before anything more can be fetched — login, license, missing repo or file, disk,
network; :class:`FetchIncomplete` (exit 1) when the run finished but files failed verification
(they were deleted; re-run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from ctrlpost.errors import CtrlpostError, WeightsError
from ctrlpost.weights.disk import (
    MARGIN_BYTES,
    DiskUsage,
    DryRun,
    HashCache,
    check_disk,
    check_local,
    dry_run,
    fmt_bytes,
    md5_note,
)
from ctrlpost.weights.download import (
    DEFAULT_RETRY,
    FileProgress,
    HashMismatch,
    ProgressFactory,
    Retry,
    check_access,
    download,
    file_url,
    no_progress,
    partial_path,
    request_headers,
)
from ctrlpost.weights.plan import (
    HubUnreachable,
    PlannedFile,
    WeightsPlan,
    hub_endpoint,
    hub_failure,
    hub_offline,
    hub_timeout,
    plan_downloads,
    resolve,
    resolve_if_possible,
)

if TYPE_CHECKING:
    from ctrlpost.recipe import WeightsSection

__all__ = [
    "DryRun", "FetchIncomplete", "FetchReport", "FileOutcome", "HubUnreachable", "PlannedFile",
    "Retry", "WeightsPlan", "dry_run", "fetch", "make_tiny", "plan_downloads", "resolve",
    "resolve_if_possible",
]

#: Makes the tiny flavor's weights locally (``ctrlpost.weights.tiny.materialize``).
TinyMaker = Callable[["WeightsSection"], object]



class FetchIncomplete(WeightsError):
    """The run finished but some files failed verification (exit 1: re-run)."""

    exit_code = 1


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file."""

    file: PlannedFile
    status: Literal["present", "downloaded", "unverified", "failed"]
    detail: str = ""
    downloaded_bytes: int = 0


@dataclass(frozen=True)
class FetchReport:
    """The outcome of :func:`fetch`, file by file."""

    root: Path
    outcomes: tuple[FileOutcome, ...]
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[FileOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    @property
    def downloaded_bytes(self) -> int:
        return sum(o.downloaded_bytes for o in self.outcomes)

    def raise_for_failures(self, rerun: str = "ctrlpost fetch-weights") -> None:
        """:class:`FetchIncomplete` naming the files that failed, if any did."""
        if self.failed:
            names = ", ".join(f"{o.file.name} ({o.detail})" for o in self.failed)
            raise FetchIncomplete(f"{len(self.failed)} file(s) failed verification and were "
                                  f"deleted: {names}", hint=f"re-run `{rerun}`")

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "ok": not self.failed, "notes": list(self.notes),
                "downloaded_bytes": self.downloaded_bytes,
                "files": [{**o.file.to_json(), "status": o.status, "detail": o.detail}
                          for o in self.outcomes]}


def fetch(
    plan: WeightsPlan,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    progress: ProgressFactory = no_progress,
    disk_usage: DiskUsage | None = None,
    margin_bytes: int = MARGIN_BYTES,
    retry: Retry = DEFAULT_RETRY,
    hash_attempts: int = 2,
    timeout_s: float | None = None,
) -> FetchReport:
    """Have every planned file in place and verified; download what is missing or wrong.

    Offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable (or its listing failing through
    every retry), only checks what is present and raises if anything is missing. Every request
    retries HTTP 5xx / 429 as ``retry`` says. A file failing its hash is retried
    ``hash_attempts`` times in all, then reported as failed (and never left in place); one the
    hub lists without any hash is reported unverified.
    """
    endpoint = hub_endpoint(endpoint)
    timeout_s = hub_timeout(timeout_s)
    cache = HashCache(plan.root)
    if plan.sizes_from != "hub":
        if hub_offline():
            return _without_hub(plan, cache, progress, "HF_HUB_OFFLINE=1")
        try:
            plan = resolve(plan, endpoint=endpoint, token=token, timeout_s=timeout_s,
                           retry=retry)
        except HubUnreachable as exc:
            return _without_hub(plan, cache, progress, exc.message, exc)
    outcomes: dict[str, FileOutcome] = {}
    notes = list(plan.notes)
    todo: list[PlannedFile] = []
    for f in plan.files:
        state = check_local(f, cache, progress)
        if state.status == "mismatch":
            f.dest.unlink()  # known wrong: never left in place
            notes.append(f"{f.name}: {state.detail}; deleted and downloaded again")
        if state.status in ("present", "unverified"):
            outcomes[f.name] = FileOutcome(f, state.status, state.detail)
        else:
            todo.append(f)
    cache.save()
    check_disk(todo, disk_usage=disk_usage, margin_bytes=margin_bytes)
    headers = request_headers(token)
    for f in todo:
        try:
            check_access(_url(f, endpoint), token=token, endpoint=endpoint, timeout_s=timeout_s,
                         retry=retry)
        except Exception as exc:
            _raise_mapped(exc, f, endpoint)
    for f in todo:
        outcomes[f.name] = _download_one(f, cache, endpoint=endpoint, headers=headers,
                                         progress=progress, retry=retry, attempts=hash_attempts,
                                         timeout_s=timeout_s)
        cache.save()
    return FetchReport(plan.root, tuple(outcomes[f.name] for f in plan.files), tuple(notes))


def _raise_mapped(exc: Exception, f: PlannedFile, endpoint: str) -> NoReturn:
    mapped = hub_failure(exc, repo_id=f.repo_id, path=f.path, endpoint=endpoint)
    if mapped is None:
        raise exc
    raise mapped from None


def _url(f: PlannedFile, endpoint: str) -> str:
    return file_url(f.repo_id, f.path, revision=f.revision, endpoint=endpoint)


def _download_one(f: PlannedFile, cache: HashCache, *, endpoint: str, headers: dict[str, str],
                  progress: ProgressFactory, retry: Retry, attempts: int,
                  timeout_s: float) -> FileOutcome:
    """Download one file; a hash mismatch is retried, then reported; other errors raise."""
    partial = partial_path(f.dest, f.expected())
    resumed_at = partial.stat().st_size if partial.exists() else 0
    detail = ""
    for attempt in range(1, attempts + 1):
        bar: FileProgress = progress(f.name, f.size)
        try:
            digests = download(_url(f, endpoint), f.dest, expected=f.expected(), headers=headers,
                               progress=bar, retry=retry, timeout_s=timeout_s)
        except HashMismatch as exc:
            detail = f"{exc.algorithm} mismatch after {attempt} attempt(s)"
            continue
        except CtrlpostError:
            raise
        except Exception as exc:
            _raise_mapped(exc, f, endpoint)
        finally:
            bar.close()
        cache.put(f.dest, digests, hub=bool(f.sha256 or f.git_sha1))
        size = f.dest.stat().st_size
        resumed = f"resumed at {fmt_bytes(resumed_at)}; " if resumed_at and attempt == 1 else ""
        # Nothing to compare the bytes with (the listing gave no sha256 or blob id, the catalog
        # no MD5): say so, rather than vouch for a file that may be corrupt.
        verified = bool(f.sha256 or f.git_sha1 or f.md5)
        note = md5_note(f, digests) if verified else "the hub lists no hash for it"
        return FileOutcome(f, "downloaded" if verified else "unverified",
                           f"{resumed}{note}".strip("; "),
                           downloaded_bytes=size - (resumed_at if attempt == 1 else 0))
    return FileOutcome(f, "failed", detail)


def _without_hub(plan: WeightsPlan, cache: HashCache, progress: ProgressFactory, reason: str,
                 cause: WeightsError | None = None) -> FetchReport:
    """Check what is present using the catalog's MD5s only; missing files are an error."""
    outcomes: list[FileOutcome] = []
    missing: list[str] = []
    for f in plan.files:
        state = check_local(f, cache, progress)
        if state.status == "missing":
            if not f.optional:
                missing.append(f.name)
            continue
        status: Literal["present", "unverified"] = (
            "present" if state.status == "present" else "unverified")
        outcomes.append(FileOutcome(f, status, state.detail))
    cache.save()
    if missing or plan.patterns:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if missing[3:] else "")
        what = (f"{len(missing)} file(s) missing: {shown}" if missing
                else "repo patterns (--all, text encoder) cannot be listed")
        if cause is not None:
            raise HubUnreachable(f"{reason}: {what}", hint=cause.hint)
        raise WeightsError(f"{reason}: {what}", hint="unset HF_HUB_OFFLINE to download, or put "
                           f"the files under {plan.root}/<org>/<repo>/")
    note = f"{reason}: files checked against the reference's MD5s only, not the hub"
    return FetchReport(plan.root, tuple(outcomes), (*plan.notes, note))


# ---------------------------------------------------------------------------------------------
# the tiny flavor


def make_tiny(weights: WeightsSection, *, maker: TinyMaker | None = None) -> object:
    """The tiny flavor downloads nothing: its weights are generated locally by ``maker``
    (default ``ctrlpost.weights.tiny.materialize``)."""
    if maker is None:
        import importlib

        try:
            module = importlib.import_module("ctrlpost.weights.tiny")
        except ModuleNotFoundError as exc:
            if exc.name != "ctrlpost.weights.tiny":
                raise
            raise CtrlpostError(
                "tiny weights are made locally by `ctrlpost fetch-weights` — not implemented yet",
                hint="use a 7b recipe (recipes/edge_hdvila.toml) to download released weights",
            ) from None
        maker = module.materialize
    return maker(weights)
