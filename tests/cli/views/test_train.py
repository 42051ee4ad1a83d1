"""`ctrlpost train`'s view: a run that already reached its steps says so at once; the progress
bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app

REPO = Path(__file__).resolve().parents[3]


def test_a_finished_run_says_so_without_checks_or_ranks(tmp_path: Path) -> None:
    checkpoints = tmp_path / "ctrlpost_demo" / "tiny" / "edge_tiny" / "checkpoints"
    (checkpoints / "step_000000040").mkdir(parents=True)
    (checkpoints / "step_000000040" / "__0_0.distcp").write_bytes(b"x" * 10)
    (checkpoints / "step_000000040" / "meta.json").write_text(
        '{"files": {"__0_0.distcp": 10}, "exports": ["iter_000000040.json"]}')
    (checkpoints / "iter_000000040.json").write_text("{}")
    (checkpoints / ".step_000000060.tmp").mkdir()  # an unfinished later save does not count
    args = ["train", str(REPO / "recipes" / "edge_tiny.toml"),
            "--set", f"job.output_root='{tmp_path}'", "--set", "train.steps=40"]
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("already done: step 40 of 40, checkpoints in ")
    assert time.perf_counter() - started < 2
    (checkpoints / "step_000000040" / "__0_0.distcp").write_bytes(b"x" * 5)  # truncated
    damaged = CliRunner().invoke(app, [*args, "--set", "data.root='/nonexistent'"])
    assert "already done" not in damaged.output  # left to resume, which checks and falls back
    more = CliRunner().invoke(app, [*args, "--set", "train.steps=60",
                                    "--set", "data.root='/nonexistent'"])
    assert "already done" not in more.output and more.exit_code != 0  # it goes on to the checks


# --- the progress view -------------------------------------------------------------------------


def terminal(width: int = 150) -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def test_on_a_terminal_the_bar_counts_steps_and_prints_notes_and_output_above_it() -> None:
    from ctrlpost.cli.views.train import TrainingBar, training_console
    from ctrlpost.engine.metrics import Note, Output, Started, StepDone

    screen = terminal()
    with training_console(screen) as console:
        assert isinstance(console, TrainingBar)
        console(Note("training edge_tiny: fresh start"))
        console(Started(step=20, total=40))  # a resume: the bar starts at 20
        console(StepDone(step=21, total=40, loss=0.123456, samples_per_s=3.25))
        console(Note("checkpoint saved at step 21: /run/checkpoints/step_000000021"))
        console(Output("\x1b[33mUserWarning: careful\x1b[0m", err=True))
        console(StepDone(step=22, total=40, loss=0.5, samples_per_s=4.0))
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.file.getvalue())  # cursor moves
    rows = [row.strip() for row in shown.replace("\r", "\n").split("\n") if row.strip()]
    notes = [row for row in rows if not row.startswith("step ")]
    assert notes == ["training edge_tiny: fresh start",
                     "checkpoint saved at step 21: /run/checkpoints/step_000000021",
                     "UserWarning: careful"]
    bars = [row for row in rows if row.startswith("step ")]
    assert re.fullmatch(r"step 22/40 [━╸╺ ]+ loss 0\.5000 4\.00 samples/s elapsed 0:00:0\d "
                        r"ETA \d+:\d\d:\d\d", bars[-1]), bars[-1]
    assert any(row.startswith("step 21/40 ") and "loss 0.1235 3.25 samples/s" in row
               for row in bars)


def test_without_a_terminal_the_view_prints_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from ctrlpost.cli.views.train import training_console
    from ctrlpost.engine.metrics import Note, StepDone, plain_console

    piped, dumb = io.StringIO(), io.StringIO()
    for screen in (Console(file=piped), Console(file=dumb, force_terminal=True,
                                                _environ={"TERM": "dumb"})):
        with training_console(screen) as console:
            assert console is plain_console
            console(StepDone(step=1, total=2, loss=0.5, samples_per_s=1.0))  # not logged
            console(Note("done: step 2"))
    assert piped.getvalue() == dumb.getvalue() == ""  # no bar drawn
    assert capsys.readouterr().out == "done: step 2\ndone: step 2\n"
