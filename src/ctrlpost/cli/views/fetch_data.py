"""What `fetch-data` shows: a per-clip progress bar on stderr and a summary table on stdout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ctrlpost.cli.views.clip_progress import ClipBar, rich_progress
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.fetch.runner import FetchResult

SHOWN_FAILURES = 10
_COLOUR = {"ok": "green", "skipped": "yellow", "failed": "red"}


class RichProgress(ClipBar):
    """A :class:`~.fetch.FetchProgress` drawing a rich progress bar; failures print a line."""

    def __init__(self, progress: Any) -> None:
        super().__init__(progress, verb="fetching", colours=_COLOUR)

    def clip_done(self, record: ClipRecord) -> None:
        from rich.markup import escape

        self.advance(record.id, record.status,
                     f"{record.error_class}: {escape(record.error_message or '')}")


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    """A progress bar on stderr for the duration of a fetch."""
    with rich_progress(remaining=False) as progress:
        yield RichProgress(progress)


def print_summary(result: FetchResult) -> None:
    """Counts by status (failures by class), then the first failed clips."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    # soft_wrap: paths stay whole on one line, so they can be copied.
    console.print(f"fetch-data: source {result.source} → {escape(str(result.root))}",
                  soft_wrap=True)
    table = Table()
    table.add_column("status")
    table.add_column("clips", justify="right")
    for status in ("ok", "skipped", "failed"):
        table.add_row(f"[{_COLOUR[status]}]{status}[/]", str(result.count(status)))
    for kind, number in result.failures_by_class.items():
        table.add_row(f"  {kind}", str(number))
    console.print(table)
    failed = [r for r in result.records if r.status == "failed"]
    if failed:
        listing = Table("failed clip", "class", "error")
        for record in failed[:SHOWN_FAILURES]:
            listing.add_row(escape(record.id), record.error_class or "?",
                            escape(record.error_message or ""))
        console.print(listing)
        if len(failed) > SHOWN_FAILURES:
            console.print(f"... and {len(failed) - SHOWN_FAILURES} more")
    console.print(f"manifest: {escape(str(result.manifest))}", soft_wrap=True)
