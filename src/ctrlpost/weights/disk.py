"""`fetch-weights`: what is already on disk, free space, and the dry run.

Present files are checked against the plan's digests; the digests are cached in
``<dir>/.ctrlpost-hashes.json`` keyed by size and mtime, so a re-run does not re-read 60 GB.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ctrlpost.errors import WeightsError
from ctrlpost.files import write_text_atomic
from ctrlpost.weights.download import Digests, ProgressFactory, hash_file, mismatch, partial_path
from ctrlpost.weights.plan import PlannedFile, WeightsPlan

#: Kept free beyond what the downloads need, so the disk is never filled to the last byte.
MARGIN_BYTES = 10**9
HASH_CACHE = ".ctrlpost-hashes.json"


class _HasFree(Protocol):
    @property
    def free(self) -> int: ...


#: ``shutil.disk_usage``-like: a folder -> an object with ``free`` bytes (injectable for tests).
DiskUsage = Callable[[Path], _HasFree]


class HashCache:
    """Digests of files under ``root``, valid while a file's size and mtime are unchanged, so a
    re-run does not re-read 60 GB. ``hub`` marks digests that matched the hub's metadata."""

    def __init__(self, root: Path) -> None:
        self.path = root / HASH_CACHE
        try:
            self._data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._data = {}

    def _key(self, dest: Path) -> str:
        return dest.relative_to(self.path.parent).as_posix()

    def get(self, dest: Path) -> tuple[dict[str, str], bool]:
        """(digests, matched the hub) of ``dest`` if the entry is still valid, else ({}, False)."""
        entry = self._data.get(self._key(dest))
        st = dest.stat()
        if not entry or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return {}, False
        return dict(entry.get("digests", {})), bool(entry.get("hub"))

    def put(self, dest: Path, digests: dict[str, str], *, hub: bool) -> None:
        st = dest.stat()
        self._data[self._key(dest)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                       "digests": digests, "hub": hub}

    def save(self) -> None:
        """Write atomically; a read-only folder only costs re-hashing next time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self._data, indent=1, sort_keys=True))
        except OSError:
            pass


@dataclass(frozen=True)
class LocalState:
    """What is on disk for one planned file."""

    status: Literal["missing", "present", "unverified", "mismatch"]
    detail: str = ""


def check_local(f: PlannedFile, cache: HashCache, progress: ProgressFactory) -> LocalState:
    """Compare ``f.dest`` with what it must be; hashes come from the cache when still valid."""
    if not f.dest.is_file():
        return LocalState("missing")
    size = f.dest.stat().st_size
    if f.size_source == "hub" and size != f.size:
        return LocalState("mismatch", f"size {size}, expected {f.size}")
    expected = f.expected()
    digests, hub_checked = cache.get(f.dest)
    todo = Digests(sha256=bool(expected.sha256) and "sha256" not in digests,
                   git_sha1_size=size if expected.git_sha1 and "git_sha1" not in digests
                   else None,
                   md5=bool(expected.md5) and "md5" not in digests)
    if not todo.empty():
        bar = progress(f"verify {f.name}", size)
        try:
            digests.update(hash_file(f.dest, todo, bar))
        finally:
            bar.close()
    has_hub_hash = bool(expected.sha256 or expected.git_sha1)
    wrong = mismatch(expected, digests)
    cache.put(f.dest, digests, hub=(has_hub_hash and wrong is None) or hub_checked)
    if wrong is not None:
        if not has_hub_hash and hub_checked:
            # Verified against the hub when downloaded; the reference's MD5 is just older.
            return LocalState("present", md5_note(f, digests))
        if not has_hub_hash:
            return LocalState("unverified", f"{wrong.algorithm} differs from the reference's")
        return LocalState("mismatch", str(wrong))
    verdict: Literal["present", "unverified"] = (
        "present" if has_hub_hash or expected.md5 or hub_checked else "unverified")
    return LocalState(verdict, md5_note(f, digests))


def md5_note(f: PlannedFile, digests: dict[str, str]) -> str:
    """A note when a file the hub vouches for differs from the reference's MD5 table."""
    if f.md5 and digests.get("md5") and digests["md5"] != f.md5.lower():
        return "matches the hub; differs from the reference's MD5 (the hub's copy changed since)"
    return ""


# ---------------------------------------------------------------------------------------------
# free disk


def check_disk(files: Sequence[PlannedFile], *, disk_usage: DiskUsage | None = None,
               margin_bytes: int = MARGIN_BYTES) -> None:
    """Refuse, before any download, when a disk has less free space than its files still need."""
    usage: DiskUsage = disk_usage or shutil.disk_usage
    needs: dict[int, tuple[Path, int]] = {}
    for f in files:
        folder = existing_folder(f.dest.parent)
        partial = partial_path(f.dest, f.expected())
        have = partial.stat().st_size if partial.exists() else 0
        device = folder.stat().st_dev
        shown, need = needs.get(device, (folder, 0))
        needs[device] = (shown, need + max((f.size or 0) - have, 0))
    for folder, need in needs.values():
        free = usage(folder).free
        if free < need + margin_bytes:
            raise WeightsError(
                f"not enough free disk space in {folder}: the downloads need {fmt_bytes(need)} "
                f"+ {fmt_bytes(margin_bytes)} margin, {fmt_bytes(free)} is free (short by "
                f"{fmt_bytes(need + margin_bytes - free)})",
                hint="free space there, or point --dir / [weights].dir at a larger disk",
            )


def existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent (what ``disk_usage`` can measure)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def fmt_bytes(n: int | None) -> str:
    """Decimal units, as the hub shows sizes: 14.5 GB."""
    if n is None:
        return "?"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# dry run


@dataclass(frozen=True)
class DryRun:
    """What a fetch would do: each file with its size, destination and state; totals."""

    plan: WeightsPlan
    states: tuple[str, ...]
    total_bytes: int
    missing_bytes: int
    free_folder: Path
    free_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.plan.root), "sizes_from": self.plan.sizes_from,
            "total_bytes": self.total_bytes, "missing_bytes": self.missing_bytes,
            "free_folder": str(self.free_folder), "free_bytes": self.free_bytes,
            "notes": list(self.plan.notes),
            "patterns": [{"repo": p.repo_id, "patterns": list(p.patterns)}
                         for p in self.plan.patterns],
            "files": [{**f.to_json(), "state": s}
                      for f, s in zip(self.plan.files, self.states, strict=True)],
        }


def dry_run(plan: WeightsPlan, *, disk_usage: DiskUsage | None = None) -> DryRun:
    """Sizes, destinations and states (by size only: a dry run never hashes), free disk."""
    states = tuple(_quick_state(f) for f in plan.files)
    missing = sum(max((f.size or 0) - _have(f), 0)
                  for f, s in zip(plan.files, states, strict=True) if s != "present")
    folder = existing_folder(plan.root)
    free = (disk_usage or shutil.disk_usage)(folder).free
    total = sum(f.size or 0 for f in plan.files)
    return DryRun(plan, states, total, missing, folder, free)


def _have(f: PlannedFile) -> int:
    """Bytes of a partial download of ``f`` (any revision: offline the hub's hash is unknown)."""
    partials = f.dest.parent.glob(f"{f.dest.name}.*.incomplete") if f.dest.parent.is_dir() else ()
    return max((p.stat().st_size for p in partials), default=0)


def _quick_state(f: PlannedFile) -> str:
    if f.dest.is_file():
        if f.size_source == "hub" and f.dest.stat().st_size != f.size:
            return "wrong size"
        return "present"
    have = _have(f)
    return f"partial {fmt_bytes(have)}" if have else "missing"
