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
