"""Shared fixtures. Tests never touch the network: the hub is forced offline."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def ctrlpost_exe() -> list[str]:
    """The command that runs the installed CLI in a subprocess."""
    exe = shutil.which("ctrlpost", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "ctrlpost"]


def pytest_configure(config: pytest.Config) -> None:
    """CPU runs execute Triton kernels in Triton's interpreter. It has to be chosen before
    anything imports ``triton.language`` (its helpers are built for one mode at import), so it
    is set here, for every run that does not select the GPU tests."""
    selects_gpu = "gpu" in config.option.markexpr and "not gpu" not in config.option.markexpr
    if not selects_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
