"""`ctrlpost annotate` on a terminal: a per-clip progress bar on stderr, a summary on stdout."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlpost.cli.views.clip_progress import ClipBar, rich_progress

if TYPE_CHECKING:
    from ctrlpost.annotate import AnnotateResult, ClipOutcome

SHOWN_FAILURES = 10
_COLOUR = {"written": "green", "skipped": "yellow", "failed": "red"}


def run(recipe: Path, overrides: Sequence[str], *, modality: str | None, device: str,
        batch_size: int) -> None:
    """The whole command: load the recipe, annotate with a progress bar, print the summary;
    raises :class:`~ctrlpost.annotate.AnnotateFailed` (exit 1) when clips failed."""
    from ctrlpost import annotate as annotation
    from ctrlpost import recipe as recipes

    loaded = recipes.load(recipe, overrides)
    target = annotation.annotation_target(loaded.control, modality)
    with progress_bar() as progress:
        result = annotation.annotate_dataset(loaded.data.root, target,
                                             weights_dir=loaded.weights.dir, device=device,
                                             batch_size=batch_size, recipe=str(recipe),
                                             progress=progress)
    print_summary(result)
    result.raise_for_failures(f"ctrlpost annotate {recipe}")


class RichProgress(ClipBar):
    """An :class:`~ctrlpost.annotate.AnnotateProgress` drawing a rich bar; failures print a
    line."""

    def __init__(self, progress: Any) -> None:
        super().__init__(progress, verb="annotating", colours=_COLOUR)

    def clip_done(self, outcome: ClipOutcome) -> None:
        from rich.markup import escape

        self.advance(outcome.name, outcome.status, escape(outcome.detail))


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    """A progress bar on stderr for the duration of the run."""
    with rich_progress(remaining=True) as progress:
        yield RichProgress(progress)


def print_summary(result: AnnotateResult) -> None:
    """Counts by status, the speed, then the first failed clips."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"annotate: {result.modality} on {result.device} → {escape(str(result.folder))}",
                  soft_wrap=True)
    table = Table()
    table.add_column("status")
    table.add_column("clips", justify="right")
    for status in ("written", "skipped", "failed"):
        table.add_row(f"[{_COLOUR[status]}]{status}[/]", str(result.count(status)))
    console.print(table)
    busy = sum(o.seconds for o in result.outcomes if o.status == "written")
    if result.frames_written and busy > 0:
        console.print(f"{result.frames_written} frames in {busy:.1f} s "
                      f"({result.frames_written / busy:.1f} frames/s); "
                      f"total {result.seconds:.1f} s")
    failed = result.failed
    if failed:
        listing = Table("failed clip", "why")
        for outcome in failed[:SHOWN_FAILURES]:
            listing.add_row(escape(outcome.name), escape(outcome.detail))
        console.print(listing)
        if len(failed) > SHOWN_FAILURES:
            console.print(f"... and {len(failed) - SHOWN_FAILURES} more")
