"""`ctrlpost train` on a run that already reached its steps says so at once."""

from __future__ import annotations

import time
from pathlib import Path

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
            "--set", f"job.output_root='{tmp_path}'"]
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
