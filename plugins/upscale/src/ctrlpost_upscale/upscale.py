"""The upscale hint of Cosmos-Transfer1 training (``AddControlInputUpscale``, training mode).

From the clip's full-resolution frames, one crop per clip is taken at a random position; the
sample trains on that crop (it replaces the clip's frames) and the hint is the crop shrunk by a
random factor (bicubic) and enlarged back to the crop size (bilinear).

Draw order of ``UpscaleHints.draw`` (three calls, always, nothing else touches the generator),
the reference's order (top, left, factor): ``top_fraction = rng.random()``, then
``left_fraction = rng.random()``, then ``u = rng.random()`` picks the factor: the first of
``downscale_factors`` whose cumulative probability exceeds ``u``. The draw is plain JSON:
``{"top_fraction", "left_fraction", "downscale"}``. ``render`` and ``target`` are pure functions
of the frames and the draw (see :mod:`ctrlpost_upscale.crop` for how fractions become offsets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from ctrlpost_upscale.crop import Crop, locate
from ctrlpost_upscale.params import UpscaleParams
from ctrlpost_upscale.resize import CHUNK_FRAMES, down_up


@dataclass(frozen=True)
class UpscaleHints:
    """Upscale hints and targets: one crop position and factor per clip, for every frame."""

    params: UpscaleParams
    chunk_frames: int = CHUNK_FRAMES

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """The clip's crop position (fractions in [0, 1)) and downscale factor."""
        top_fraction = float(rng.random())
        left_fraction = float(rng.random())
        u = float(rng.random())
        cumulative = list(accumulate(self.params.downscale_probabilities))
        index = next((i for i, c in enumerate(cumulative) if u < c), len(cumulative) - 1)
        return {"top_fraction": top_fraction, "left_fraction": left_fraction,
                "downscale": int(self.params.downscale_factors[index])}

    def crop(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> Crop:
        """Where the draw puts the crop in these frames."""
        _check_frames(frames_T_H_W_C)
        return locate(frames_T_H_W_C.shape[1], frames_T_H_W_C.shape[2], drawn, self.params)

    def target(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """uint8 ``[T, crop_h, crop_w, 3]``: the crop's pixels, unchanged (the sample's frames)."""
        box = self.crop(frames_T_H_W_C, drawn)
        return np.ascontiguousarray(
            frames_T_H_W_C[:, box.top:box.top + box.height, box.left:box.left + box.width])

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """uint8 ``[T, crop_h, crop_w, 3]``: the crop shrunk by the drawn factor and enlarged
        back to the crop size.

        Always of the configured crop size; for a frame smaller than the crop, the target is
        smaller and this hint is its stretched version, as in the reference (the dataset's
        resize then brings both to the same size).
        """
        box = self.crop(frames_T_H_W_C, drawn)
        crop_T_H_W_C = frames_T_H_W_C[:, box.top:box.top + box.height,
                                      box.left:box.left + box.width]
        return down_up(crop_T_H_W_C, (box.small_height, box.small_width),
                       (box.crop_height, box.crop_width), chunk_frames=self.chunk_frames)


def build_generator(params: UpscaleParams) -> UpscaleHints:
    """The upscale hint generator for validated ``params``."""
    return UpscaleHints(params)


def _check_frames(frames_T_H_W_C: np.ndarray) -> None:
    if frames_T_H_W_C.dtype != np.uint8 or frames_T_H_W_C.ndim != 4 or frames_T_H_W_C.shape[3] != 3:
        raise ValueError(
            "upscale hints need uint8 RGB frames [T, H, W, 3], got "
            f"{frames_T_H_W_C.dtype} {list(frames_T_H_W_C.shape)}"
        )
