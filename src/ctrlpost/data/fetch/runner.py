"""`ctrlpost fetch-data`: plan a source, run its units on a thread pool, keep a manifest.

Guarantees, whatever happens to the process:

* a file appears under its final name only when complete (temp name + atomic rename);
* a clip counts as done only when the manifest says so *and* its file still has the recorded
  sha256, so a re-run fetches exactly what is missing and never trusts a partial file;
* one failing video never stops the others; only network errors are retried, with
  exponential backoff; every failure is in the manifest with its class and message.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ctrlpost.data.fetch import commit, manifest, youtube
from ctrlpost.data.fetch.failures import ClipError, FailureKind, classify, is_retryable
from ctrlpost.data.fetch.hints import synthesize_hint_files
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.fetch.plan import ClipSpec, Plan, Unit
from ctrlpost.data.layout import DatasetLayout, exclusive
from ctrlpost.errors import DataError
from ctrlpost.modalities import FetchRequest, HintFile, registry

if TYPE_CHECKING:
    from ctrlpost.recipe import DataSection


@dataclass(frozen=True)
class FetchResult:
    """What a fetch did: one record per clip it considered, in the source's order."""

    root: Path
    source: str
    manifest: Path
    records: tuple[ClipRecord, ...]

    def count(self, status: str) -> int:
        return sum(record.status == status for record in self.records)

    @property
    def failures_by_class(self) -> dict[str, int]:
        """``{error_class: number of failed clips}``, most frequent first."""
        found = Counter(r.error_class or "?" for r in self.records if r.status == "failed")
        return dict(found.most_common())

    @property
    def complete(self) -> bool:
        return self.count("failed") == 0


class FetchFailed(DataError):
    """Some clips failed: a run failure (exit 1); the manifest names each and why."""

    exit_code = 1

    def __init__(self, result: FetchResult) -> None:
        failed, total = result.count("failed"), len(result.records)
        classes = ", ".join(f"{k}: {n}" for k, n in result.failures_by_class.items())
        if "bot_detection" in result.failures_by_class:
            hint = ("YouTube wants proof this is not a bot: retry later or from another network, "
                    f"or point {youtube.FACTORY_ENV} at a YouTube factory with use_po_token=True")
        else:
            hint = ("rerun the same command to retry only what is missing, or add "
                    "--accept-partial to keep the clips that worked")
        super().__init__(f"{failed} of {total} clips failed ({classes}); each failure is "
                         f"listed in {result.manifest}", hint=hint)


class FetchProgress(Protocol):
    """Told the number of clips, then each clip's record as it is settled."""

    def start(self, total: int) -> None: ...

    def clip_done(self, record: ClipRecord) -> None: ...


def fetch_data(data: DataSection, *, seed: int, num_videos: int | None = None,
               youtube_factory: youtube.YouTubeFactory | None = None,
               progress: FetchProgress | None = None, backoff_s: float = 1.0,
               hint_files: Sequence[HintFile] = ()) -> FetchResult:
    """Make ``data.root`` from ``data.source``; see the module docstring for the guarantees.

    ``num_videos`` overrides the source's count (HD-VILA videos, local files, synthetic clips).
    ``youtube_factory`` replaces ``pytubefix.YouTube`` (tests, PO-token or OAuth setups).
    ``hint_files`` (the recipe's modalities' per-clip files) are written for every clip when
    the source makes its clips itself (``DataSource.synthesizes_hints``).
    Bad input raises :class:`DataError` before anything is written; failed clips do not raise.
    """
    plan = plan_source(data, seed=seed, num_videos=num_videos, youtube_factory=youtube_factory)
    layout = DatasetLayout(Path(data.root))
    with exclusive(layout.root):
        layout.prepare()
        runner = _Runner(layout=layout, num_frames=data.num_frames, retries=data.fetch.retries,
                         backoff_s=backoff_s, progress=progress)
        records = runner.run(plan, workers=data.fetch.workers)
        shutil.rmtree(layout.tmp, ignore_errors=True)
        if registry.get_data_source(data.source).synthesizes_hints:
            synthesize_hint_files(layout, hint_files)
    return FetchResult(root=layout.root, source=data.source, manifest=layout.manifest,
                       records=records)


def plan_source(data: DataSection, *, seed: int, num_videos: int | None = None,
                youtube_factory: youtube.YouTubeFactory | None = None) -> Plan:
    """The plan of ``data.source``, by the registered source of that name; raises
    :class:`DataError` for bad input."""
    source = registry.get_data_source(data.source)
    return source.plan(FetchRequest(data=data, seed=seed, num_videos=num_videos,
                                    youtube_factory=youtube_factory))


class _Runner:
    """Runs a plan's units and keeps the manifest current; one instance per fetch."""

    def __init__(self, *, layout: DatasetLayout, num_frames: int, retries: int,
                 backoff_s: float, progress: FetchProgress | None) -> None:
        self.layout, self.num_frames, self.retries = layout, num_frames, retries
        self.backoff_s, self.progress = backoff_s, progress
        self.stop = threading.Event()
        self.old = manifest.load(layout.manifest)
        # The manifest keeps every verified clip, and failures of this run only.
        self.records = {k: r for k, r in self.old.items() if r.usable}

    def run(self, plan: Plan, *, workers: int) -> tuple[ClipRecord, ...]:
        """Settle every clip of ``plan``; return their records in the plan's order."""
        if self.progress:
            self.progress.start(plan.num_clips)
        for record in plan.rejected:
            self.layout.remove_clip(record.id)
            self._settle(record)
        jobs = [(unit, todo) for unit in plan.units if (todo := self._todo(unit))]
        manifest.save(self.layout.manifest, self.records.values())
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            futures = [pool.submit(self._run_unit, unit, todo) for unit, todo in jobs]
            try:
                for future in as_completed(futures):
                    for record in future.result():
                        self._settle(record)
                    manifest.save(self.layout.manifest, self.records.values())
            except BaseException:
                # Ctrl-C: running downloads see the event and stop; queued units never start.
                self.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        order = [r.id for r in plan.rejected] + [c.id for u in plan.units for c in u.clips]
        return tuple(self.records[clip_id] for clip_id in dict.fromkeys(order))

    def _settle(self, record: ClipRecord) -> None:
        self.records[record.id] = record
        if self.progress:
            self.progress.clip_done(record)

    def _todo(self, unit: Unit) -> tuple[ClipSpec, ...]:
        """Clips of ``unit`` still to make; the others are settled as ``skipped``."""
        todo = []
        for clip in unit.clips:
            kept = commit.reusable(clip, self.old.get(clip.id), layout=self.layout,
                                   num_frames=self.num_frames)
            if kept is None:
                todo.append(clip)
            else:
                self._settle(kept)
        return tuple(todo)

    def _run_unit(self, unit: Unit, todo: Sequence[ClipSpec]) -> list[ClipRecord]:
        """Produce and commit ``todo``; retry the whole unit on network errors only."""
        attempts = 0
        while True:
            attempts += 1
            workdir = self.layout.workdir(unit.name)
            try:
                output = unit.produce(todo, workdir, self.stop)
                return [self._commit(clip, output.files.get(clip.id), output.stream, attempts)
                        for clip in todo]
            except Exception as exc:
                kind, message = classify(exc)
                delay = self.backoff_s * 2 ** (attempts - 1)
                # Event.wait returns True when Ctrl-C set the event: give up at once then.
                if is_retryable(kind) and attempts <= self.retries and not self.stop.wait(delay):
                    continue
                return [commit.failed(clip, kind, message, layout=self.layout,
                                      attempts=attempts) for clip in todo]
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

    def _commit(self, clip: ClipSpec, produced: Path | ClipError | None,
                stream: Mapping[str, Any] | None, attempts: int) -> ClipRecord:
        try:
            if produced is None:
                raise ClipError(FailureKind.INTERNAL, "the source made no file for this clip")
            if isinstance(produced, ClipError):
                raise produced
            return commit.commit(clip, produced, layout=self.layout, num_frames=self.num_frames,
                                 stream=stream, attempts=attempts)
        except Exception as exc:
            kind, message = classify(exc)
            return commit.failed(clip, kind, message, layout=self.layout, attempts=attempts,
                                 stream=stream)
