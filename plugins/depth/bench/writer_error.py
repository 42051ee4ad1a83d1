"""Decode error of depth-video writers, as stated in this plugin's README.

A synthetic 1280×704 disparity clip (33 frames: a ground plane and three moving discs, near =
bright) is written three ways and decoded with OpenCV: this plugin's lossless writer, OpenCV's
own ``mp4v`` writer, and the reference's writer (imageio with its defaults: libx264, yuv420p,
quality 5, ``macro_block_size=8``; only when ``imageio`` is importable). Run twice: on the
smooth clip, and with Gaussian noise of σ = 1 level (closer to a network's texture).

    python plugins/depth/bench/writer_error.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from ctrlpost_depth import write_depth_video

T, H, W = 33, 704, 1280
DISCS = ((0.3, 0.6, 0.12, 1.6, 3), (0.7, 0.5, 0.08, 1.1, -2), (0.5, 0.75, 0.05, 2.2, 5))


def scene(noise: float) -> np.ndarray:
    """uint8 [T, H, W] grey levels of the synthetic clip."""
    t = np.arange(T, dtype=np.float32)[:, None, None]
    y = np.arange(H, dtype=np.float32)[None, :, None]
    x = np.arange(W, dtype=np.float32)[None, None, :]
    d = np.clip((y - 0.35 * H) / H, 0, None) * 4 + 0.05 + 0 * x + 0 * t
    for cx, cy, r, z, speed in DISCS:
        rho2 = ((x - cx * W - speed * t) ** 2 + (y - cy * H) ** 2) / (r * H) ** 2
        d = np.where(rho2 < 1, z + 0.3 * np.sqrt(np.clip(1 - rho2, 0, 1)), d)
    levels = (d - d.min()) / (d.max() - d.min()) * 255
    levels = levels + np.random.default_rng(0).normal(0, noise, levels.shape)
    return np.clip(levels, 0, 255).astype(np.uint8)


def decode(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def write_mp4v(path: Path, grey: np.ndarray) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24, (W, H))
    for level in grey:
        writer.write(np.ascontiguousarray(np.repeat(level[..., None], 3, axis=-1)))
    writer.release()


def write_reference(path: Path, grey: np.ndarray) -> bool:
    try:
        import imageio
    except ImportError:
        return False
    with imageio.get_writer(path, fps=24, macro_block_size=8) as writer:
        for level in grey:
            writer.append_data(np.repeat(level[..., None], 3, axis=-1))
    return True


def report(name: str, path: Path, grey: np.ndarray) -> None:
    error = np.abs(decode(path).astype(int) - grey[..., None])
    print(f"  {name:18s} max {error.max():3d}  mean {error.mean():.2f}  "
          f"exact {np.mean(error == 0):6.1%}  within 1 {np.mean(error <= 1):6.1%}  "
          f"{path.stat().st_size / T / 1024:7.1f} KiB/frame")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        for noise in (0.0, 1.0):
            grey = scene(noise)
            print(f"noise σ = {noise} level")
            report("lossless (plugin)", write_depth_video(Path(folder, "a.mp4"), grey), grey)
            write_mp4v(Path(folder, "b.mp4"), grey)
            report("OpenCV mp4v", Path(folder, "b.mp4"), grey)
            if write_reference(Path(folder, "c.mp4"), grey):
                report("reference imageio", Path(folder, "c.mp4"), grey)


if __name__ == "__main__":
    main()
