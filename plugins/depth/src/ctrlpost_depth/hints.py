"""The depth hint of Cosmos-Transfer1 training (``AddControlInputDepth``): the window's frames of
``depth/<clip>.mp4``, decoded to RGB uint8, passed through unchanged.

Nothing is random: ``draw`` uses no generator call and returns ``{}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlpost.modalities import HintFileError
from ctrlpost_depth.params import DepthParams


@dataclass(frozen=True)
class DepthHints:
    """The depth hint generator (a file hint generator: ``source`` is what
    :func:`ctrlpost_depth.files.read_depth` returned for the sample's window)."""

    params: DepthParams

    def draw(self, rng: np.random.Generator, source: Any) -> dict[str, Any]:
        """No randomness: ``{}`` (the generator is not touched)."""
        return {}

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any],
               source: Any) -> np.ndarray:
        """The decoded depth frames themselves, uint8 ``[T, H, W, 3]``, after checking that they
        line up with the clip's frames (same T, H and W)."""
        depth_T_H_W_C = np.asarray(source)
        if depth_T_H_W_C.dtype != np.uint8 or depth_T_H_W_C.ndim != 4 \
                or depth_T_H_W_C.shape[3] != 3:
            raise HintFileError("depth hints need uint8 RGB depth frames [T, H, W, 3], got "
                                f"{depth_T_H_W_C.dtype} {list(depth_T_H_W_C.shape)}")
        if depth_T_H_W_C.shape[:3] != frames_T_H_W_C.shape[:3]:
            raise HintFileError(
                f"depth frames {list(depth_T_H_W_C.shape[:3])} do not line up with the clip's "
                f"frames {list(frames_T_H_W_C.shape[:3])} ([T, H, W])"
            )
        return depth_T_H_W_C


def build_generator(params: DepthParams) -> DepthHints:
    """The depth hint generator for validated ``params``."""
    return DepthHints(params)
