"""A tiny, complete workspace (weights, clips, embeddings) shared by the engine tests."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "edge_tiny.toml"


@dataclass(frozen=True)
class Workspace:
    """Paths of the shared tiny workspace and a way to run ctrlpost on it."""

    root: Path
    exe: list[str]

    def overrides(self, output: Path) -> list[str]:
        return ["--set", f"weights.dir='{self.root / 'weights'}'",
                "--set", f"data.root='{self.root / 'data'}'",
                "--set", f"job.output_root='{output}'"]

    def command(self, output: Path, *args: str) -> list[str]:
        return [*self.exe, "train", str(TINY), *self.overrides(output), *args]

    def env(self) -> dict[str, str]:
        # Same thread count in every run: float reductions then add up in the same order.
        return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"}

    def train(self, output: Path, *args: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(output, *args), capture_output=True, text=True,
                                env=self.env(), timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"train failed ({result.returncode}):\n{result.stdout}\n"
                                 f"{result.stderr}{rank_logs(output)}")
        return result


def rank_logs(output: Path) -> str:
    """Every rank's log of a failed run (a native crash's stacks are only there)."""
    logs = sorted((run_dir(output) / "logs").glob("rank*.log"))
    return "".join(f"\n--- {path.name}:\n{path.read_text(errors='replace')}" for path in logs)


def run_dir(output: Path) -> Path:
    return output / "ctrlpost_demo" / "tiny" / "edge_tiny"


def losses(output: Path) -> dict[int, float]:
    path = run_dir(output) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}  # not validation records


def run_cli(exe: Sequence[str], *args: str, env: dict[str, str]) -> None:
    result = subprocess.run([*exe, *args], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory, ctrlpost_exe: list[str]) -> Workspace:
    """Tiny weights, 8 synthetic clips and their T5 embeddings, made with the real commands."""
    root = tmp_path_factory.mktemp("tiny_workspace")
    ws = Workspace(root=root, exe=ctrlpost_exe)
    sets = ws.overrides(root / "runs")
    for command in ("fetch-weights", "fetch-data", "embed"):
        run_cli(ctrlpost_exe, command, str(TINY), *sets, env=ws.env())
    return ws


@pytest.fixture(scope="session")
def ctrlpost_exe() -> list[str]:
    import shutil
    import sys

    exe = shutil.which("ctrlpost", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "ctrlpost"]


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A one-rank gloo process group for tests that build sharded models in-process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
