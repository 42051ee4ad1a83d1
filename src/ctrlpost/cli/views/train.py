"""What `ctrlpost train` says before it starts any rank."""

from __future__ import annotations

from pathlib import Path

import typer

from ctrlpost import rundir


def said_already_done(run_dir: Path, steps: int) -> bool:
    """Whether the run in ``run_dir`` already reached ``steps`` (then say so)."""
    done = rundir.finished_step(run_dir, steps)
    if done is None:
        return False
    typer.echo(f"already done: step {done} of {steps}, checkpoints in "
               f"{rundir.RunDir(run_dir).checkpoints}; raise train.steps to train on")
    return True
