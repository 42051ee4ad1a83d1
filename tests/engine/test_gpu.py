"""The engine on a CUDA device: NCCL, bf16, validation sampling on the GPU (``nox -s gpu``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ctrlpost.cli import app

from .conftest import TINY, Workspace, losses, run_dir

pytestmark = pytest.mark.gpu

ON_GPU = ["--set", "parallel.backend='nccl'", "--set", "model.precision='bf16'",
          "--set", "train.steps=4", "--set", "logging.every_steps=1",
          "--set", "validation.every_steps=2", "--set", "validation.num_clips=2",
          "--set", "validation.steps=4"]


@pytest.fixture(autouse=True)
def needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (run them with `nox -s gpu` on one)")


def validation_records(output: Path) -> dict[int, dict[str, float]]:
    lines = (run_dir(output) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["fidelity"] for r in map(json.loads, lines) if "fidelity" in r}


def test_training_with_validation_on_one_gpu(workspace: Workspace, tmp_path: Path) -> None:
    runs = [workspace.train(tmp_path / name, "--nproc", "1", *ON_GPU) for name in ("a", "b")]
    assert "1 rank(s) on cuda" in runs[0].stdout
    trained = losses(tmp_path / "a")
    assert sorted(trained) == [1, 2, 3, 4] and all(math.isfinite(v) for v in trained.values())
    first, second = validation_records(tmp_path / "a"), validation_records(tmp_path / "b")
    assert sorted(first) == [0, 2, 4]
    # Step 0 is the same zero-initialised branch in both runs, sampled from the same seeds.
    assert first[0] == second[0]
    assert all(0.0 <= v <= 1.0 for v in first[4].values())
    strips = run_dir(tmp_path / "a") / "validation" / "step_000000004"
    assert sorted(p.name for p in strips.glob("*.png")) == ["synthetic_00000.png",
                                                            "synthetic_00001.png"]


def test_verify_fidelity_on_the_gpu(workspace: Workspace, tmp_path: Path) -> None:
    sets = [f"weights.dir='{workspace.root / 'weights'}'", f"data.root='{workspace.root / 'data'}'",
            f"job.output_root='{tmp_path}'", "parallel.backend='nccl'", "model.precision='bf16'",
            "validation.num_clips=2", "validation.steps=4"]
    result = CliRunner().invoke(app, ["verify", str(TINY), "--stages",
                                      "recipe,plugins,weights", "--control", "none", "--json",
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    (none,) = json.loads(result.output)["fidelity"]["checkpoints"]
    assert set(none["mean"]) == {"f1", "precision", "recall"}


def test_a_gloo_job_on_a_gpu_host_stays_on_the_cpu(workspace: Workspace, tmp_path: Path) -> None:
    """backend = "gloo" puts the ranks on the CPU even where a GPU is present: the FSDP mesh
    follows the rank's device (FSDP's own default would take the GPU and mix devices)."""
    run = workspace.train(tmp_path, "--nproc", "1", "--set", "parallel.backend='gloo'",
                          "--set", "train.steps=2", "--set", "validation.every_steps=0",
                          "--set", "logging.every_steps=1")
    assert "1 rank(s) on cpu" in run.stdout
    assert sorted(losses(tmp_path)) == [1, 2]
