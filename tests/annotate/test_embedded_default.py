"""`ctrlpost annotate` on the embedded default of each file modality, with the real commands in
subprocesses: `fetch-weights` makes the tiny stand-ins of the annotation models, `fetch-data`
the synthetic clips (their synthesized hint files are then removed), `annotate` writes every
clip's file with the models, `verify` accepts them, and a job trains on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctrlpost.data.layout import DatasetLayout

# Three workspaces made by the real commands: about 1.5 min on 2 cores, in `nox -s slow`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"depth": ("depth", ".mp4"), "seg": ("seg", ".pickle"),
           "keypoint": ("keypoint", ".pickle")}


def exe() -> list[str]:
    found = shutil.which("ctrlpost", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "ctrlpost"]


def run(command: str, modality: str, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    recipe = REPO / "recipes" / f"{modality}_tiny.toml"
    sets = ["--set", f"weights.dir='{root / 'weights'}'", "--set", f"data.root='{root / 'data'}'",
            "--set", f"job.output_root='{root / 'runs'}'"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    result = subprocess.run([*exe(), command, str(recipe), *extra, *sets], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module", params=["depth", "seg", "keypoint"])
def annotated(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A workspace of the modality's embedded default whose hint files `annotate` wrote."""
    modality = request.param
    root = tmp_path_factory.mktemp(f"{modality}_default")
    for command in ("fetch-weights", "fetch-data", "embed"):
        run(command, modality, root)
    folder, _ = FOLDERS[modality]
    shutil.rmtree(root / "data" / folder)  # the synthesized files: annotate makes them anew
    run("annotate", modality, root, "--device", "cpu")
    return modality, root


def test_annotate_writes_every_clip_and_verify_accepts(annotated: tuple[str, Path]) -> None:
    modality, root = annotated
    folder, suffix = FOLDERS[modality]
    clips = DatasetLayout(root / "data").clips()
    assert len(clips) == 8
    assert sorted(p.name for p in (root / "data" / folder).iterdir()) == sorted(
        f"{clip}{suffix}" for clip in clips)
    report = json.loads(run("verify", modality, root, "--stages", "data", "--json").stdout)
    assert report["ok"] and report["problems"] == []


def test_a_job_trains_on_the_annotated_files(annotated: tuple[str, Path]) -> None:
    modality, root = annotated
    run("train", modality, root, "--set", "train.steps=2", "--set", "logging.every_steps=1",
        "--set", "checkpoint.every_steps=2", "--set", "validation.every_steps=0",
        "--set", "parallel.nproc_per_node=1")
    metrics = next((root / "runs").rglob("metrics.jsonl"))
    steps = [json.loads(line).get("step") for line in metrics.read_text().splitlines()]
    assert steps[-1] == 2
