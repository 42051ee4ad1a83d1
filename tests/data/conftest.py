"""Fixtures of the data tests: synthetic mp4 clips, small datasets and a tiny T5 encoder.

Everything is built locally in tmp folders (no network): clips with cv2's ``mp4v`` writer, the
T5 from a ``T5Config`` with a Unigram tokenizer trained by ``tokenizers`` on a few captions.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

# Planted broken files make FFmpeg complain on stderr; the checks report them by name instead.
# OpenCV reads this when it first opens a capture or writer (the clips below come first).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

BIT_BLOCK = 16
BITS = 8


def clip_frames(count: int, width: int, height: int, *, first: int = 0) -> np.ndarray:
    """uint8 RGB ``[count, height, width, 3]``: texture that moves, plus the frame index written
    as 8 black/white 16×16 blocks along the top-left (robust to mp4v's lossy coding)."""
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for k in range(count):
        t = first + k
        r = (x * 3 + t * 5) % 256
        g = (y * 4 + ((x // 8 + y // 8 + t) % 2) * 80) % 256
        b = np.abs((x + 2 * t) % 40 - 20) * 10 + 30
        frames[k] = np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)
        for bit in range(BITS):
            value = 255 if (t >> bit) & 1 else 0
            frames[k, :BIT_BLOCK, bit * BIT_BLOCK:(bit + 1) * BIT_BLOCK] = value
    return frames


def frame_index(frame_H_W_C: np.ndarray) -> int:
    """Read back the index written by :func:`clip_frames`."""
    half = BIT_BLOCK // 2
    bits = [frame_H_W_C[half, bit * BIT_BLOCK + half].mean() > 127 for bit in range(BITS)]
    return sum(1 << i for i, on in enumerate(bits) if on)


def write_clip(path: Path, count: int, width: int = 128, height: int = 72,
               fps: float = 24.0) -> Path:
    """An mp4v clip of :func:`clip_frames`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in clip_frames(count, width, height):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_pickle(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def embedding(length: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((length, dim)).astype(np.float16)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``make_dataset(names, frames=24, width=128, height=72, dim=16)``: a complete dataset."""

    def make(names: list[str], *, frames: int = 24, width: int = 128, height: int = 72,
             dim: int = 16, root: Path | None = None) -> Path:
        root = root or tmp_path / "dataset"
        for i, name in enumerate(names):
            write_clip(root / "videos" / f"{name}.mp4", frames, width, height)
            (root / "metas").mkdir(parents=True, exist_ok=True)
            (root / "metas" / f"{name}.txt").write_text(f"a clip called {name}\n")
            write_pickle(root / "t5_xxl" / f"{name}.pickle", [embedding(5 + i, dim, seed=i)])
        return root

    return make
