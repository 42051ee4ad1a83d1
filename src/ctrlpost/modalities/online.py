"""Hints a model computes inside the training process, instead of reading a per-clip file.

A modality whose hint file is made by a model (depth) may also offer to run that model on the
sampled frames during training (:class:`OnlineHint`), so a job needs no annotation pass and no
files. The recipe chooses per control (``selected(params)``, e.g. depth's
``source = "online"``); the modality's :meth:`~ctrlpost.modalities.base.Modality.hint_file_for`
then says no file is read, and the engine fills each sample's hint on the rank's device.

What the engine hands ``render``: the sample's frames as the model sees them in training, the
clip's own pixels only (the bucket's reflection padding removed; the hint is padded like the
video afterwards), uint8 RGB ``[T, H, W, 3]``. What it must return: the hint, uint8
``[T, H, W, hint_channels]``, the same as the modality's file path gives for the same frames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OnlineHint:
    """A hint computed from a sample's frames by models loaded in the training process.

    Attributes:
        models: Hugging Face repos of the models it runs (``"org/name"``); `fetch-weights`
            fetches them into ``weights.dir/<repo>`` (tiny stand-ins for the tiny flavor come
            from the modality's annotator, which runs the same models).
        load: ``load(folders, device, params)``: the loaded models on ``device``.
        render: ``render(loaded, frames_T_H_W_C, params)``: the hint of uint8 RGB frames.
        selected: ``selected(params)``: whether the recipe's params choose the online hint.
    """

    models: tuple[str, ...]
    load: Callable[[Mapping[str, Path], str, Any], Any]
    render: Callable[[Any, np.ndarray, Any], np.ndarray]
    selected: Callable[[Any], bool]
