"""`fetch-weights`, step 1 and 2: what a recipe needs (catalog) and what the hub has (metadata).

Layout: the reference's, ``<dir>/<org>/<repo>/<file>`` (``checkpoints/nvidia/Cosmos-Transfer1-7B/
base_model.pt``), which the recipe's ``[weights]`` paths and the reference's tools expect
(docs/reference.md#weights-layout).

* :func:`plan_downloads` — from the recipe's ``[weights]`` section and the catalog; no network;
  sizes are estimates.
* :func:`resolve` — one metadata request per repo: commit, exact sizes, sha256 (LFS files) or
  git oid (small files), and the files matching repo patterns (``--all``, unknown text encoders).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from ctrlpost.errors import WeightsError
from ctrlpost.modalities import HubRelease, registry
from ctrlpost.weights import annotation, catalog
from ctrlpost.weights.catalog import KnownFile, RepoPatterns
from ctrlpost.weights.download import (
    DEFAULT_RETRY,
    Expected,
    GaveUp,
    Retry,
    disk_full,
    hub_error,
    missing_file,
    network_error,
    with_retries,
)

if TYPE_CHECKING:
    from ctrlpost.recipe import WeightsSection

SizeSource = Literal["hub", "estimate", "unknown"]
_HUB_NAME = re.compile(r"^[\w.-]+$")


class HubUnreachable(WeightsError):
    """The hub could not be reached (network down, DNS, refused connection), or kept answering
    5xx / 429 through every retry: either way, only what is on disk can be checked."""


@dataclass(frozen=True)
class PlannedFile:
    """One file to have at ``dest``: where it comes from and how to check it."""

    repo_id: str
    path: str
    dest: Path
    role: str
    size: int | None = None
    size_source: SizeSource = "unknown"
    md5: str | None = None  # the reference's checksum (catalog)
    sha256: str | None = None  # the hub's, for LFS files
    git_sha1: str | None = None  # the hub's git blob id, for small files
    optional: bool = False  # only if the hub lists it
    revision: str = "main"

    @property
    def name(self) -> str:
        return f"{self.repo_id}/{self.path}"

    def expected(self) -> Expected:
        """What the bytes must be; the size only counts when it comes from the hub."""
        size = self.size if self.size_source == "hub" else None
        return Expected(size=size, sha256=self.sha256, git_sha1=self.git_sha1, md5=self.md5)

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo_id, "file": self.path, "dest": str(self.dest),
                "role": self.role, "size": self.size, "size_source": self.size_source,
                "optional": self.optional, "md5": self.md5, "sha256": self.sha256,
                "git_sha1": self.git_sha1}


@dataclass(frozen=True)
class WeightsPlan:
    """The files to have under ``root``, and repo patterns still to expand against the hub."""

    root: Path
    files: tuple[PlannedFile, ...]
    patterns: tuple[RepoPatterns, ...] = ()
    sizes_from: Literal["hub", "catalog"] = "catalog"
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# planning (no network)


def plan_downloads(
    weights: WeightsSection,
    *,
    flavor: str,
    modalities: Sequence[str],
    include_all: bool = False,
    root: Path | None = None,
    control_from_modalities: bool = False,
) -> WeightsPlan:
    """The files a recipe's ``[weights]`` needs, from the catalog alone (sizes are estimates).

    The control file is ``[weights].control`` when set, else the released file of each modality
    (``control_from_modalities`` forces the latter, for ``--modality``). The models each
    modality's annotator runs (`ctrlpost annotate`) come too (:mod:`ctrlpost.weights.annotation`).
    ``include_all`` adds every repo the reference mirrors, as patterns.
    """
    release = _release_of(flavor)
    root = Path(root if root is not None else weights.dir)
    wanted: list[tuple[str, KnownFile]] = []
    patterns: list[RepoPatterns] = []
    notes: list[str] = []

    def add_file(role: str, key: str, value: str | None) -> None:
        split = _split_hub_path(value, key, notes, need_file=True)
        if split is not None:
            wanted.append((role, catalog.lookup(*split)))

    add_file("base", "weights.base", weights.base)
    if weights.control and not control_from_modalities:
        add_file("control", "weights.control", weights.control)
    else:
        wanted.extend(("control", catalog.control_file(m, release.repo_id))
                      for m in dict.fromkeys(modalities))
    tokenizer = _split_hub_path(weights.tokenizer, "weights.tokenizer", notes, need_file=False)
    if tokenizer is not None:
        repo_id, sub = tokenizer
        wanted.extend(("tokenizer", _in_subfolder(f, sub))
                      for f in catalog.tokenizer_files(repo_id))
    text = _split_hub_path(weights.text_encoder, "weights.text_encoder", notes, need_file=False)
    if text is not None:
        known = catalog.text_encoder_files(text[0]) if not text[1] else None
        if known is not None:
            wanted.extend(("text encoder", f) for f in known)
        else:
            prefix = f"{text[1]}/" if text[1] else ""
            patterns.append(RepoPatterns(text[0], tuple(prefix + p for p in
                                                        catalog.TEXT_ENCODER_PATTERNS),
                                         purpose="text encoder"))
    for repo_id in annotation.annotation_repos(modalities):
        known = catalog.annotation_model_files(repo_id)
        if known is not None:
            wanted.extend((annotation.ROLE, f) for f in known)
        else:
            patterns.append(RepoPatterns(repo_id, annotation.repo_patterns(modalities, repo_id),
                                         purpose=annotation.ROLE))
    if include_all:
        for mirror in catalog.mirror_repos():
            patterns.append(mirror)
            wanted.extend(("mirror", replace(f, optional=True))
                          for f in catalog.known_in(mirror.repo_id))
    files = _dedup(_planned(root, role, f) for role, f in wanted)
    return WeightsPlan(root=root, files=files, patterns=tuple(patterns), notes=tuple(notes))


def _release_of(flavor: str) -> HubRelease:
    """The hub release of the registered ``flavor``; one without is an error saying where its
    weights come from instead."""
    found = registry.get_flavor(flavor)
    if found.release is None:
        hint = (f"flavor {flavor!r} makes its weights locally: `ctrlpost fetch-weights` does it"
                if found.make_weights is not None else "point [weights] at files you have")
        raise WeightsError(f"flavor {flavor!r} has no released weights to download", hint=hint)
    return found.release


def _split_hub_path(value: str | None, key: str, notes: list[str], *,
                    need_file: bool) -> tuple[str, str] | None:
    """``org/repo[/path]`` -> (repo id, path); anything else is a local path, not fetched."""
    if not value:
        return None
    parts = PurePosixPath(value).parts
    if (value.startswith((".", "/", "~")) or len(parts) < (3 if need_file else 2)
            or not all(_HUB_NAME.match(p) for p in parts[:2]) or ".." in parts):
        notes.append(f"{key} = {value!r} is not a hub path (<org>/<repo>"
                     f"{'/<file>' if need_file else ''}): not fetched")
        return None
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def _in_subfolder(f: KnownFile, sub: str) -> KnownFile:
    return replace(f, path=f"{sub}/{f.path}") if sub else f


def _planned(root: Path, role: str, f: KnownFile) -> PlannedFile:
    return PlannedFile(
        repo_id=f.repo_id, path=f.path, dest=root / f.repo_id / f.path, role=role,
        size=f.approx_bytes, size_source="estimate" if f.approx_bytes is not None else "unknown",
        md5=f.md5, optional=f.optional,
    )


def _dedup(files: Iterable[PlannedFile]) -> tuple[PlannedFile, ...]:
    seen: dict[str, PlannedFile] = {}
    for f in files:
        if f.name not in seen:
            seen[f.name] = f
        elif seen[f.name].optional and not f.optional:
            seen[f.name] = replace(seen[f.name], optional=False)
    return tuple(seen.values())


# ---------------------------------------------------------------------------------------------
# the hub's metadata


def hub_endpoint(explicit: str | None = None) -> str:
    """``explicit``, else ``HF_ENDPOINT`` as set now (huggingface_hub reads it only at import),
    else huggingface_hub's endpoint."""
    from huggingface_hub import constants

    return (explicit or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def resolve(plan: WeightsPlan, *, endpoint: str | None = None, token: str | bool | None = None,
            timeout_s: float | None = None, retry: Retry = DEFAULT_RETRY) -> WeightsPlan:
    """Fill in sizes, hashes and the commit from the hub; expand patterns; drop absent optionals.

    One metadata request per repo (``/api/models/{repo}/revision/main?blobs=true``; HTTP 5xx /
    429 are retried as ``retry`` says, transport errors are not, so a dead network fails in
    seconds). Raises :class:`HubUnreachable` or a mapped WeightsError.
    """
    endpoint = hub_endpoint(endpoint)
    timeout = hub_timeout(timeout_s)
    listings = {repo_id: _listing(repo_id, endpoint, token, timeout, retry)
                for repo_id in dict.fromkeys([f.repo_id for f in plan.files]
                                             + [p.repo_id for p in plan.patterns])}
    files: list[PlannedFile] = []
    for f in plan.files:
        commit, siblings = listings[f.repo_id]
        sibling = siblings.get(f.path)
        if sibling is not None:
            files.append(_with_hub_metadata(f, sibling, commit))
        elif not f.optional:
            raise missing_file(f.repo_id, f.path, endpoint)
    for pattern in plan.patterns:
        files.extend(_expand(pattern, listings[pattern.repo_id], plan.root, endpoint))
    return replace(plan, files=_dedup(files), patterns=(), sizes_from="hub")


def resolve_if_possible(plan: WeightsPlan, *, endpoint: str | None = None,
                        token: str | bool | None = None,
                        retry: Retry = DEFAULT_RETRY) -> WeightsPlan:
    """:func:`resolve`, or the catalog's estimates with a note when offline or unreachable."""
    if hub_offline():
        return replace(plan, notes=(*plan.notes, "HF_HUB_OFFLINE=1: sizes are the catalog's "
                                    "estimates; repo patterns are not expanded"))
    try:
        return resolve(plan, endpoint=endpoint, token=token, retry=retry)
    except HubUnreachable as exc:
        return replace(plan, notes=(*plan.notes, f"{exc.message}: sizes are the catalog's "
                                    "estimates"))


def _listing(repo_id: str, endpoint: str, token: str | bool | None, timeout_s: float,
             retry: Retry) -> tuple[str, dict[str, Any]]:
    """(commit, {path: sibling}) of a repo's main branch."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name="ctrlpost")
    try:
        info = with_retries(lambda: api.model_info(repo_id, revision="main", files_metadata=True,
                                                   timeout=timeout_s), retry=retry)
    except Exception as exc:
        mapped = hub_failure(exc, repo_id=repo_id, path=None, endpoint=endpoint)
        if mapped is None:
            raise
        raise mapped from None
    return str(info.sha or "main"), {s.rfilename: s for s in info.siblings or []}


def hub_failure(exc: Exception, *, repo_id: str, path: str | None,
                endpoint: str) -> WeightsError | None:
    """A hub, network or disk error as a one-line WeightsError; None for anything else (a bug,
    which the caller re-raises with its traceback)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, httpx2.TransportError):
        down = network_error(endpoint, exc)
        return HubUnreachable(down.message, hint=down.hint)
    if isinstance(exc, GaveUp):
        failing = hub_error(exc, repo_id=repo_id, path=path, endpoint=endpoint)
        return HubUnreachable(failing.message, hint=failing.hint)
    if isinstance(exc, HfHubHTTPError | OfflineModeIsEnabled):
        return hub_error(exc, repo_id=repo_id, path=path, endpoint=endpoint)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return disk_full(Path(exc.filename).parent if exc.filename else Path("."))
    return None


def hub_timeout(explicit: float | None = None) -> float:
    """Seconds to wait for the hub: ``explicit``, else huggingface_hub's
    ``HF_HUB_DOWNLOAD_TIMEOUT`` (10 s by default)."""
    from huggingface_hub import constants

    return float(explicit if explicit is not None else constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _with_hub_metadata(f: PlannedFile, sibling: Any, commit: str) -> PlannedFile:
    lfs = sibling.lfs
    if lfs is not None:
        return replace(f, size=int(lfs.size), size_source="hub", sha256=str(lfs.sha256).lower(),
                       revision=commit)
    size = sibling.size
    return replace(f, size=size, size_source="hub" if size is not None else "unknown",
                   git_sha1=sibling.blob_id, revision=commit)


def _expand(pattern: RepoPatterns, listing: tuple[str, dict[str, Any]], root: Path,
            endpoint: str) -> list[PlannedFile]:
    from huggingface_hub.utils import filter_repo_objects

    commit, siblings = listing
    names = list(filter_repo_objects(sorted(siblings), allow_patterns=list(pattern.patterns)))
    if not names:
        raise WeightsError(f"nothing in {pattern.repo_id} on {endpoint} matches "
                           f"{', '.join(pattern.patterns)}", hint="check [weights] in the recipe")
    role = pattern.purpose if pattern.purpose in ("text encoder", annotation.ROLE) else "mirror"
    return [_with_hub_metadata(_planned(root, role, catalog.lookup(pattern.repo_id, name)),
                               siblings[name], commit)
            for name in names if _safe(name)]


def _safe(name: str) -> bool:
    """A hub path that stays inside its repo folder (a hostile mirror cannot write elsewhere)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts
