"""The Canny edge hint of Cosmos-Transfer1 training (``AddControlInputEdge``).

Draw order of ``CannyHints.draw`` for preset ``'random'`` (two calls, nothing else touches the
generator): ``lower = rng.integers(*lower_range, endpoint=True)``, then
``diff = rng.integers(*diff_range, endpoint=True)``; ``upper = min(255, lower + diff)``.
Fixed presets do not use the generator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlpost_edge.params import PRESET_THRESHOLDS, UPPER_CAP, EdgeParams


@dataclass(frozen=True)
class CannyHints:
    """Edge hints: one pair of Canny thresholds per clip, applied to every frame."""

    params: EdgeParams

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """The clip's thresholds as plain ints: ``{"preset", "lower", "upper"}``."""
        preset = self.params.preset
        if preset != "random":
            lower, upper = PRESET_THRESHOLDS[preset]
            return {"preset": preset, "lower": lower, "upper": upper}
        lower = int(rng.integers(*self.params.lower_range, endpoint=True))
        diff = int(rng.integers(*self.params.diff_range, endpoint=True))
        return {"preset": preset, "lower": lower, "upper": min(UPPER_CAP, lower + diff)}

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` 0/255 edges of uint8 RGB frames.

        ``cv2.Canny`` runs on the 3-channel frame itself (no blur, aperture 3, L1 gradient), as the
        reference does; OpenCV then keeps the strongest channel's gradient, so RGB vs BGR order
        does not matter.
        """
        import cv2  # lazy: importing the plugin must stay cheap for shell completion

        _check_frames(frames_T_H_W_C)
        lower, upper = int(drawn["lower"]), int(drawn["upper"])
        hint_T_H_W_C = np.empty((*frames_T_H_W_C.shape[:3], 3), dtype=np.uint8)
        for t, frame_H_W_C in enumerate(frames_T_H_W_C):
            edges_H_W = cv2.Canny(np.ascontiguousarray(frame_H_W_C), lower, upper)
            hint_T_H_W_C[t] = edges_H_W[:, :, None]
        return hint_T_H_W_C


def build_generator(params: EdgeParams) -> CannyHints:
    """The edge hint generator for validated ``params``."""
    return CannyHints(params)


def _check_frames(frames_T_H_W_C: np.ndarray) -> None:
    if frames_T_H_W_C.dtype != np.uint8 or frames_T_H_W_C.ndim != 4 or frames_T_H_W_C.shape[3] != 3:
        raise ValueError(
            "edge hints need uint8 RGB frames [T, H, W, 3], got "
            f"{frames_T_H_W_C.dtype} {list(frames_T_H_W_C.shape)}"
        )
