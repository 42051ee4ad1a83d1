"""A pseudo seg file for a synthetic clip: the moving shape and the background, two objects.

:func:`synthesize_seg` is ``SEG_FILE.synthesize``: what ctrlpost's ``synthetic`` data source calls
after making a clip, so the embedded default (``recipes/seg_tiny.toml``) trains segmentation with
no segmentation model. The file holds two objects over the whole clip, written by
:func:`ctrlpost_seg.seg_file.write_seg_pickle`:

- ``"shape"``: the moving shape's pixels (:func:`ctrlpost_seg.foreground.foreground_masks`);
- ``"background"``: every other pixel.

Frames where no shape is found are all background. Deterministic: the same frames give the same
bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrlpost.modalities.foreground import foreground_masks
from ctrlpost_seg.seg_file import write_seg_pickle

SHAPE_PHRASE, BACKGROUND_PHRASE = "shape", "background"


def synthesize_seg(frames_T_H_W_C: np.ndarray, fps: float, path: Path) -> None:
    """Write ``path`` (``seg/<clip>.pickle``) for a synthetic clip from its RGB uint8 frames
    ``[T, H, W, 3]`` (all of them); ``fps`` is not needed."""
    shape_T_H_W = foreground_masks(frames_T_H_W_C)
    write_seg_pickle(path, [(SHAPE_PHRASE, shape_T_H_W), (BACKGROUND_PHRASE, ~shape_T_H_W)])
