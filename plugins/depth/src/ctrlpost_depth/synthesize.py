"""A pseudo depth video for a synthetic clip: the moving shape near, the background far.

:func:`synthesize_depth` is ``DEPTH_FILE.synthesize``: what ctrlpost's ``synthetic`` data source
calls after making a clip, so the embedded default (``recipes/depth_tiny.toml``) trains depth
with no depth model. Per frame:

- the background is a ground plane, receding upwards: 0.1 at the top row to 0.4 at the bottom;
- the shape's pixels (:func:`ctrlpost_depth.foreground.foreground_masks`) are 1.0;
- the map is smoothed by two box blurs of radius ``max(1, round(min(H, W) / 64))``.

The maps are then written by :func:`ctrlpost_depth.writer.write_depth_video` (one min-max over
the clip, near = bright): frame-aligned, the clip's size and frame count, at its fps.
Deterministic: the same frames give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrlpost.modalities.foreground import foreground_masks
from ctrlpost_depth.writer import write_depth_video

FAR, NEAR_GROUND, SHAPE = 0.1, 0.4, 1.0
"""Depth values (larger = nearer): the top row, the bottom row, the shape."""


def synthesize_depth(frames_T_H_W_C: np.ndarray, fps: float, path: Path) -> None:
    """Write ``path`` (``depth/<clip>.mp4``) for a synthetic clip from its RGB uint8 frames
    ``[T, H, W, 3]`` (all of them) and its ``fps`` (see the module docstring)."""
    masks_T_H_W = foreground_masks(frames_T_H_W_C)
    T, H, W = masks_T_H_W.shape
    ground_H_1 = np.linspace(FAR, NEAR_GROUND, H, dtype=np.float32)[:, None]
    radius = max(1, round(min(H, W) / 64))
    depth_T_H_W = np.empty((T, H, W), dtype=np.float32)
    for t in range(T):
        frame_H_W = np.where(masks_T_H_W[t], np.float32(SHAPE), ground_H_1)
        for _ in range(2):
            frame_H_W = _box_blur(_box_blur(frame_H_W, radius, axis=0), radius, axis=1)
        depth_T_H_W[t] = frame_H_W
    write_depth_video(path, depth_T_H_W, fps=fps)


def _box_blur(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over ``2 * radius + 1`` neighbours along ``axis``, edge values repeated outwards."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius + 1, radius)
    sums = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
    n = a.shape[axis]
    upper = np.take(sums, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
    lower = np.take(sums, np.arange(n), axis=axis)
    return ((upper - lower) / (2 * radius + 1)).astype(np.float32)
