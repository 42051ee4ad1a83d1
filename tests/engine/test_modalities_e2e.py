"""Every released modality trains on the embedded default end to end, through the real
commands: fetch-data (synthetic clips, and hint files written by the plugins for depth, seg and
keypoint), embed, verify, train, inspect; and a run resumed from its checkpoint gives the
uninterrupted run's losses exactly. Depth runs by default; seg, keypoint and upscale in the
slow suite (about 40 s each)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, Workspace, run_cli

STEPS = ["--nproc", "1", "--set", "checkpoint.every_steps=2", "--set", "logging.every_steps=1",
         "--set", "validation.every_steps=2", "--set", "validation.steps=2"]
HINT_FOLDERS = {"depth": "depth", "seg": "seg", "keypoint": "keypoint", "upscale": None}


def run_dir(output: Path, modality: str) -> Path:
    return output / "ctrlpost_demo" / "tiny" / f"{modality}_tiny"


def modality_losses(output: Path, modality: str) -> dict[int, float]:
    path = run_dir(output, modality) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def train_to_the_end_and_resume(workspace: Workspace, tmp_path: Path, modality: str) -> None:
    recipe = REPO / "recipes" / f"{modality}_tiny.toml"
    data = tmp_path / "data"
    sets = ["--set", f"weights.dir='{workspace.root / 'weights'}'",
            "--set", f"data.root='{data}'"]
    for command in ("fetch-data", "embed", "verify"):
        run_cli(workspace.exe, command, str(recipe), *sets, env=workspace.env())
    folder = HINT_FOLDERS[modality]
    if folder is not None:
        assert len(list((data / folder).iterdir())) == 8, f"{folder}/ files for the 8 clips"

    def train(output: Path, steps: int) -> None:
        run_cli(workspace.exe, "train", str(recipe), *sets, "--set",
                f"job.output_root='{output}'", "--set", f"train.steps={steps}", *STEPS,
                env=workspace.env())

    train(tmp_path / "whole", 4)
    train(tmp_path / "resumed", 2)
    train(tmp_path / "resumed", 4)
    whole = modality_losses(tmp_path / "whole", modality)
    assert sorted(whole) == [1, 2, 3, 4]
    assert modality_losses(tmp_path / "resumed", modality) == whole
    export = run_dir(tmp_path / "whole", modality) / "checkpoints" / "iter_000000004_ema_model.pt"
    report = subprocess.run([*workspace.exe, "inspect", str(export), "--json"],
                            capture_output=True, text=True, env=workspace.env(), timeout=300)
    assert json.loads(report.stdout)["modality"] == modality


def test_depth_trains_end_to_end_and_resumes_exactly(workspace: Workspace,
                                                     tmp_path: Path) -> None:
    train_to_the_end_and_resume(workspace, tmp_path, "depth")


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["seg", "keypoint", "upscale"])
def test_each_modality_trains_end_to_end_and_resumes_exactly(
        workspace: Workspace, tmp_path: Path, modality: str) -> None:
    train_to_the_end_and_resume(workspace, tmp_path, modality)




FILE_PLUGIN = '''
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from ctrlpost.modalities import HintFile, HintFileError, Modality, hookimpl


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def synthesize(frames, fps, path):
    grey = frames.mean(axis=-1).astype(np.uint8)  # [T, H, W]
    np.save(path.with_suffix(".tmp.npy"), grey)
    path.with_suffix(".tmp.npy").replace(path)


def read(path, window):
    grey = np.load(path, allow_pickle=False)
    part = grey[window.start:window.start + window.num_frames]
    if len(part) < window.num_frames:
        raise HintFileError(f"{path}: too short")
    return part


def check(path, clip):
    expected = (clip.frame_count, clip.height, clip.width)
    grey = np.load(path, allow_pickle=False)
    return None if grey.shape == expected else f"shape {grey.shape}, expected {expected}"


class GreyHints:
    def __init__(self, params):
        self.params = params

    def draw(self, rng, source):
        return {}

    def render(self, frames, drawn, source):
        return np.repeat(source[..., None], 3, axis=-1)


@hookimpl
def ctrlpost_register_modalities():
    return [Modality(name="grey", summary="grey frames from a file", params_model=Params,
                     build_generator=GreyHints,
                     hint_file=HintFile(folder="grey", suffix=".npy", read=read, check=check,
                                        synthesize=synthesize))]
'''


def test_a_third_party_file_based_modality_trains(workspace: Workspace, tmp_path: Path) -> None:
    """A modality registered from outside ctrlpost, whose hints come from its own per-clip
    files, fetches (its files synthesized), verifies and trains: no core file names it."""
    site = tmp_path / "site"
    (site / "acme_grey-0.1.dist-info").mkdir(parents=True)
    (site / "acme_grey.py").write_text(FILE_PLUGIN)
    (site / "acme_grey-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme_grey\nVersion: 0.1\n")
    (site / "acme_grey-0.1.dist-info" / "entry_points.txt").write_text(
        "[ctrlpost]\ngrey = acme_grey\n")
    env = {**workspace.env(), "PYTHONPATH": str(site)}
    recipe = REPO / "recipes" / "depth_tiny.toml"
    sets = ["--set", f"weights.dir='{workspace.root / 'weights'}'",
            "--set", f"data.root='{tmp_path / 'data'}'", "--set", 'control.0.modality="grey"',
            "--set", f"job.output_root='{tmp_path / 'runs'}'"]
    for command in ("fetch-data", "embed", "verify"):
        run_cli(workspace.exe, command, str(recipe), *sets, env=env)
    assert len(list((tmp_path / "data" / "grey").glob("*.npy"))) == 8
    run_cli(workspace.exe, "train", str(recipe), *sets, "--set", "train.steps=2", *STEPS,
            env=env)
    assert sorted(modality_losses(tmp_path / "runs", "depth")) == [1, 2]
