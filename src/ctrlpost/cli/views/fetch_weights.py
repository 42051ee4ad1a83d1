"""`ctrlpost fetch-weights` on a terminal: the dry-run listing, progress bars, the report.

The fetching code stays testable without a terminal; ``cli.py`` stays one thin function.
Listings go to stdout (plain lines, so they never wrap mid-path in logs), progress to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ctrlpost.modalities import registry
from ctrlpost.weights import annotation
from ctrlpost.weights import fetch as hub_weights
from ctrlpost.weights.disk import MARGIN_BYTES, fmt_bytes
from ctrlpost.weights.download import FileProgress, ProgressFactory, no_progress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ctrlpost.recipe import WeightsSection

_SOURCE = {"hub": "", "estimate": " (est.)", "unknown": ""}


def run(
    weights: WeightsSection,
    *,
    flavor: str,
    modalities: Sequence[str],
    modality_override: bool = False,
    root: Path | None = None,
    include_all: bool = False,
    dry_run: bool = False,
    as_json: bool = False,
    rerun: str = "ctrlpost fetch-weights",
) -> None:
    """The whole command: plan, then list (``dry_run``) or fetch, and render."""
    make_weights = registry.get_flavor(flavor).make_weights
    if make_weights is not None:
        made = make_weights(weights)
        tiny = annotation.make_tiny_models(weights.dir, modalities)
        _print_made(flavor, weights, made, tiny, as_json)
        return
    plan = hub_weights.plan_downloads(weights, flavor=flavor, modalities=modalities,
                                      include_all=include_all, root=root,
                                      control_from_modalities=modality_override)
    if dry_run:
        view = hub_weights.dry_run(hub_weights.resolve_if_possible(plan))
        if as_json:
            print(json.dumps(view.to_json(), indent=2))
        else:
            print_dry_run(view)
        return
    with rich_progress(enabled=not as_json) as progress:
        report = hub_weights.fetch(plan, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)
    report.raise_for_failures(rerun)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_dry_run(view: hub_weights.DryRun) -> None:
    """One line per file: size, source, name, destination, state; then totals and free disk."""
    from rich.markup import escape

    console = _console()
    plan = view.plan
    sizes = "the hub's metadata" if plan.sizes_from == "hub" else "the catalog's estimates"
    console.print(f"[b]fetch-weights --dry-run[/]: {len(plan.files)} files into "
                  f"{escape(str(plan.root))} (sizes from {sizes})")
    for f, state in zip(plan.files, view.states, strict=True):
        size = f"{fmt_bytes(f.size)}{_SOURCE[f.size_source]}"
        extra = " (if the hub has it)" if f.optional and plan.sizes_from != "hub" else ""
        console.print(f"  {size:>16}  {escape(f.name)} -> {escape(str(f.dest))}  "
                      f"[{_colour(state)}]{escape(state)}[/]{extra}")
    for pattern in plan.patterns:
        wanted = escape(", ".join(pattern.patterns))
        console.print(f"  {'?':>16}  {escape(pattern.repo_id)}: {wanted} "
                      "(listed when the hub is reachable)")
    estimated = " (estimated)" if plan.sizes_from != "hub" else ""
    if plan.patterns:
        estimated += f" + {len(plan.patterns)} repo pattern(s) of unknown size"
    console.print(f"total {fmt_bytes(view.total_bytes)}{estimated}, to download "
                  f"{fmt_bytes(view.missing_bytes)}, free {fmt_bytes(view.free_bytes)} in "
                  f"{escape(str(view.free_folder))}")
    short = view.missing_bytes + MARGIN_BYTES - view.free_bytes
    if view.missing_bytes and short > 0:
        console.print(f"[bold red]not enough free disk space[/]: short by {fmt_bytes(short)} "
                      f"(with a {fmt_bytes(MARGIN_BYTES)} margin)")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def print_report(report: hub_weights.FetchReport) -> None:
    """Counts, then one line per file that was downloaded, failed or is unverified."""
    from rich.markup import escape

    console = _console()
    counts: dict[str, int] = {}
    for outcome in report.outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    console.print(f"[b]fetch-weights[/]: {counts.get('downloaded', 0)} downloaded "
                  f"({fmt_bytes(report.downloaded_bytes)}), {counts.get('present', 0)} already in "
                  f"place, {counts.get('unverified', 0)} unverified, {counts.get('failed', 0)} "
                  f"failed, under {escape(str(report.root))}")
    for o in report.outcomes:
        if o.status != "present" or o.detail:
            detail = f"  ({escape(o.detail)})" if o.detail else ""
            console.print(f"  [{_colour(o.status)}]{o.status:>10}[/]  {escape(o.file.name)} "
                          f"{fmt_bytes(o.file.size)}{detail}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def _colour(state: str) -> str:
    if state in ("present", "downloaded"):
        return "green"
    if state in ("failed", "wrong size"):
        return "red"
    return "yellow"


@contextmanager
def rich_progress(*, enabled: bool = True) -> Iterator[ProgressFactory]:
    """A :data:`ProgressFactory` drawing one byte-progress bar per file on stderr.

    Only on a terminal: elsewhere (CI logs) bars cannot redraw, and the report says it all.
    """
    console = _console(stderr=True)
    if not enabled or not console.is_terminal:
        yield no_progress
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:

        def factory(label: str, total: int | None) -> FileProgress:
            return _RichFile(progress, progress.add_task(label, total=total))

        yield factory


class _RichFile:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed)

    def close(self) -> None:
        self._progress.stop_task(self._task)


def _print_made(flavor: str, weights: WeightsSection, made: object,
                tiny: annotation.TinyModels, as_json: bool) -> None:
    paths = [str(p) for p in made] if isinstance(made, list | tuple) else []
    paths += [str(p) for p in tiny.made]
    if as_json:
        print(json.dumps({"flavor": flavor, "root": weights.dir, "made": paths,
                          "notes": list(tiny.notes)}, indent=2))
        return
    from rich.markup import escape

    console = _console()
    console.print(f"flavor {flavor!r}: nothing to download; its weights are made locally under "
                  f"{escape(weights.dir)}")
    for path in paths:
        console.print(f"  {escape(path)}")
    for note in tiny.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")

