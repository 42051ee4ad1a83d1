"""Fixtures for `fetch-data` tests: tiny indexed videos, recipes, and the fake YouTube."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT, FPS = 64, 48, 24
BITS = 8


def _load_fake() -> ModuleType:
    # Registered under its plain name so that CTRLPOST_YOUTUBE_FACTORY=fake_youtube:from_env
    # resolves in-process too (subprocesses get this folder on PYTHONPATH instead).
    if "fake_youtube" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fake_youtube", HERE / "fake_youtube.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["fake_youtube"] = module
        spec.loader.exec_module(module)
    return sys.modules["fake_youtube"]


@pytest.fixture
def fake_youtube() -> ModuleType:
    """The fake YouTube module (see its docstring)."""
    return _load_fake()


def write_indexed_video(path: Path, frames: int, *, width: int = WIDTH, height: int = HEIGHT,
                        fps: float = FPS) -> Path:
    """An mp4v video whose frame k shows k in binary as 8 black/white vertical bars."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    bar = width // BITS
    for k in range(frames):
        frame = np.zeros((height, width, 3), np.uint8)
        for bit in range(BITS):
            if k >> bit & 1:
                frame[:, bit * bar:(bit + 1) * bar] = 255
        writer.write(frame)
    writer.release()
    return path


def read_indices(path: Path) -> list[int]:
    """The frame numbers drawn by :func:`write_indexed_video`, read back from any encoding."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        bar = frame.shape[1] // BITS
        # The bar centres survive compression; their edges blur.
        out.append(sum(1 << bit for bit in range(BITS)
                       if frame[:, bit * bar + 2:(bit + 1) * bar - 2].mean() > 127))
    cap.release()
    return out


@pytest.fixture
def indexed_video() -> Callable[..., Path]:
    return write_indexed_video


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[[str], Path]:
    """A minimal valid recipe whose [data] section is the given TOML text."""

    def write(data_toml: str, *, seed: int = 0, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(f'[job]\nname = "t"\nseed = {seed}\n\n[[control]]\nmodality = "edge"\n\n'
                        f"[train]\nsteps = 1\n\n{data_toml}\n")
        return path

    return write


@pytest.fixture
def frame_indices() -> Callable[[Path], list[int]]:
    return read_indices
