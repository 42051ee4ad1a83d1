"""What `ctrlpost train` says: ``already done`` before any rank starts, then rank 0's progress.

On a terminal, one live bar (step/total, loss, samples/s, elapsed, ETA) with every note
(start, validation, checkpoint saved, warnings, done) and rank 0's own output printed as lines
above it; anywhere else (a pipe, CI, a file) plain lines, one per logged step
(:func:`ctrlpost.engine.metrics.plain_console`).

The view receives rank 0's console events, never text to parse: the in-process rank calls it
directly, and for N processes the launcher decodes the protocol lines rank 0 writes on its
stdout. That stream rather than ``metrics.jsonl`` feeds the view because it is one channel for
everything shown (the bar advances on every step, not only on logged ones; notes and warnings
are no metrics), it works with ``logging.jsonl = false``, and ``metrics.jsonl`` keeps the one
schema that `inspect` reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ctrlpost import rundir

if TYPE_CHECKING:
    from rich.console import Console as RichConsole

    from ctrlpost.engine.job import TrainingPlan
    from ctrlpost.engine.metrics import Console, ConsoleEvent


def said_already_done(run_dir: Path, steps: int) -> bool:
    """Whether the run in ``run_dir`` already reached ``steps`` (then say so)."""
    done = rundir.finished_step(run_dir, steps)
    if done is None:
        return False
    typer.echo(f"already done: step {done} of {steps}, checkpoints in "
               f"{rundir.RunDir(run_dir).checkpoints}; raise train.steps to train on")
    return True


def launch(plan: TrainingPlan, *, nproc: int) -> None:
    """Train ``plan`` (:func:`ctrlpost.engine.launch.launch`), showing its progress here."""
    from ctrlpost.engine.launch import launch as start

    with training_console() as console:
        start(plan, nproc=nproc, console=console)


@contextmanager
def training_console(terminal: RichConsole | None = None) -> Iterator[Console]:
    """The console for rank 0's events: a :class:`TrainingBar` on ``terminal`` (default:
    stdout) if it is a terminal that can redraw, else plain lines."""
    from rich.console import Console as RichConsole

    from ctrlpost.engine.metrics import plain_console

    terminal = terminal or RichConsole()
    if not terminal.is_terminal or terminal.is_dumb_terminal:
        yield plain_console  # a bar cannot redraw there: one line per logged step
        return
    bar = TrainingBar(terminal)
    try:
        yield bar
    finally:
        bar.close()


class TrainingBar:
    """One rich progress bar, drawn from the first event that gives the step count on."""

    def __init__(self, terminal: RichConsole) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("step {task.completed:.0f}/{task.total:.0f}"), BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[samples_per_s]} samples/s"),
            TextColumn("elapsed"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=terminal)
        self._task: Any = None

    def __call__(self, event: ConsoleEvent) -> None:
        from ctrlpost.engine.metrics import Note, Output, Started, StepDone

        if isinstance(event, Started):
            self._show_bar(event.step, event.total)
        elif isinstance(event, StepDone):
            self._show_bar(event.step, event.total)
            # Drawn now, not at the next tick: a note printed meanwhile repeats the last drawing.
            self._progress.update(self._task, completed=event.step, loss=f"{event.loss:.4f}",
                                  samples_per_s=f"{event.samples_per_s:.2f}", refresh=True)
        elif isinstance(event, Note):
            self._progress.console.print(event.message, markup=False, highlight=False,
                                         soft_wrap=True)
        elif isinstance(event, Output):
            from rich.text import Text

            # Rank 0's own lines may carry colours of their own: keep them, add none.
            self._progress.console.print(Text.from_ansi(event.text), highlight=False,
                                         soft_wrap=True)

    def _show_bar(self, step: int, total: int) -> None:
        """Start the bar at ``step`` of ``total`` unless it runs already (elapsed counts from
        here: a resumed run's ETA comes from its own pace)."""
        if self._task is not None:
            return
        self._task = self._progress.add_task("train", total=total, completed=step, loss="-",
                                             samples_per_s="-")
        self._progress.start()

    def close(self) -> None:
        """Leave the bar as it last was, above whatever the command says next."""
        self._progress.stop()
