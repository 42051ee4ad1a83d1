"""The per-clip progress bar of the commands that work clip by clip (`fetch-data`, `annotate`):
on stderr, the current clip named in its status colour, a line for each failed clip."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class ClipBar:
    """One task on a rich progress bar, advanced clip by clip."""

    def __init__(self, progress: Any, *, verb: str, colours: Mapping[str, str]) -> None:
        self._progress, self._verb, self._colours = progress, verb, colours
        self._task: Any = None

    def start(self, total: int) -> None:
        self._task = self._progress.add_task(self._verb, total=total)

    def advance(self, name: str, status: str, failure: str) -> None:
        """One clip done with ``status``; ``failure`` (markup-safe text) is printed when it
        failed."""
        from rich.markup import escape

        self._progress.update(self._task, advance=1,
                              description=f"[{self._colours[status]}]{escape(name)}[/]")
        if status == "failed":
            self._progress.console.print(f"[red]failed[/] {escape(name)}: {failure}",
                                         highlight=False, soft_wrap=True)


@contextmanager
def rich_progress(*, remaining: bool) -> Iterator[Any]:
    """A rich progress bar on stderr (with the time remaining if asked) for a ``with`` block."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), *([TimeRemainingColumn()] if remaining else [])]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield progress
