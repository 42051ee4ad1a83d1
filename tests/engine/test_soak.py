"""Soak (slow suite): `ctrlpost train` killed with SIGKILL twenty times at random moments, each
time followed by the same command, ends exactly where an uninterrupted run ends.

Moments: while the ranks start (imports, rendezvous, build), mid-step, while a checkpoint is
being written and while its exports are being written. After each kill no process of the run
may be alive 2 s later; at the end the exported weights and every deterministic field of
`metrics.jsonl` equal the uninterrupted run's bit for bit, every kept step has its exports, and
no temp file is left.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from .conftest import Workspace, run_dir
from .test_train import losses_or_empty, marked_processes, started, wait_for

# Enough steps that twenty interrupted attempts (each resuming from the last checkpoint) do not
# finish the run before the last kill.
STEPS = 24
ARGS = ["--nproc", "2", "--set", f"train.steps={STEPS}", "--set", "checkpoint.every_steps=2",
        "--set", "checkpoint.keep_last=100", "--set", "logging.every_steps=1",
        "--set", "validation.every_steps=0"]
KILLS = 20
# Wall-clock measurements: the only fields of a metrics record that may differ between runs.
TIMINGS = {"step_s", "samples_per_s", "tokens_per_s", "data_wait_pct", "elapsed_s"}


def deterministic_records(output: Path) -> list[dict[str, object]]:
    path = run_dir(output) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def exported_tensors(output: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = run_dir(output) / "checkpoints"
    return {path.name: torch.load(path, map_location="cpu", weights_only=True)
            for path in sorted(folder.glob("iter_*_model.pt"))}


def temp_files(output: Path) -> list[str]:
    return [str(p) for p in run_dir(output).rglob("*") if ".tmp" in p.name]


def moments(output: Path, marker: str) -> dict[str, Callable[[], bool]]:
    """Predicates that become true at each kind of moment of the attempt about to start."""
    checkpoints = run_dir(output) / "checkpoints"
    logged = len(losses_or_empty(output))
    return {
        "ranks starting": lambda: any("ctrlpost.engine.rank" in c
                                      for c in marked_processes(marker)),
        "mid-step": lambda: len(losses_or_empty(output)) > logged,
        "mid-checkpoint": lambda: any(checkpoints.glob(".step_*.tmp")),
        "mid-export": lambda: any(checkpoints.glob(".iter_*.tmp")),
    }


@pytest.mark.slow
def test_twenty_kill_9s_then_the_same_command_equal_an_uninterrupted_run(
    workspace: Workspace, tmp_path: Path
) -> None:
    reference = tmp_path / "uninterrupted"
    workspace.train(reference, *ARGS)

    killed = tmp_path / "killed"
    rng = random.Random(20)
    marker = f"CTRLPOST_TEST_MARK_{os.getpid()}_{time.monotonic_ns()}"
    kinds = list(moments(killed, marker))
    seen: list[str] = []
    for kill in range(KILLS):
        kind = kinds[kill % len(kinds)]
        moment = moments(killed, marker)[kind]
        process = started(workspace, killed, *ARGS, marker=marker)
        try:
            wait_for(lambda: moment() or process.poll() is not None, timeout=300)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.3))
            finished = process.poll() is not None
            process.kill()
            process.wait()
            time.sleep(2.0)
            assert marked_processes(marker) == [], f"kill {kill} ({kind}): run still alive"
        finally:
            if process.poll() is None:
                process.kill()
        seen.append(f"{kind}{' (had finished)' if finished else ''}")
    result = workspace.train(killed, *ARGS)
    assert result.returncode == 0

    assert deterministic_records(killed) == deterministic_records(reference), seen
    ours, theirs = exported_tensors(killed), exported_tensors(reference)
    steps = range(2, STEPS + 1, 2)
    assert set(ours) == set(theirs) == {f"iter_{s:09d}_{kind}_model.pt" for s in steps
                                        for kind in ("reg", "ema")}
    for name, tensors in theirs.items():
        assert ours[name].keys() == tensors.keys(), name
        assert all(torch.equal(ours[name][k], t) for k, t in tensors.items()), name
    for step in steps:
        assert (run_dir(killed) / "checkpoints" / f"iter_{step:09d}.json").is_file()
    assert temp_files(killed) == []
