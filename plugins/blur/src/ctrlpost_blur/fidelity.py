"""How well generated frames follow their blur hint: PSNR of the re-blurred generation.

A generated clip follows a vis hint when blurring it the same way gives the hint back, whatever
fine detail the generator invented (the hint carries none). So the generated frames get the
clip's own blur draw (``BlurHints.render``) and are compared with the hint: PSNR in dB over every
pixel of every frame, 8-bit peak 255, capped at :data:`MAX_PSNR_DB` (identical frames).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ctrlpost_blur.params import BlurParams

MAX_PSNR_DB = 100.0
"""PSNR reported for identical frames (JSON has no infinity)."""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape (peak 255), at most :data:`MAX_PSNR_DB`."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return MAX_PSNR_DB
    return min(MAX_PSNR_DB, 10.0 * math.log10(255.0**2 / mse))


@dataclass(frozen=True)
class BlurFidelity:
    """The ``blur`` fidelity metric (see the module docstring); higher is better."""

    headline: ClassVar[str] = "psnr"

    params: BlurParams

    def score(self, generated_T_H_W_C: np.ndarray, hint_T_H_W_C: np.ndarray,
              drawn: Mapping[str, Any]) -> dict[str, float]:
        """``{"psnr"}`` of the generated frames blurred with ``drawn`` against the hint."""
        from ctrlpost_blur.blur import BlurHints

        reblurred_T_H_W_C = BlurHints(self.params).render(generated_T_H_W_C, drawn)
        return {"psnr": psnr(reblurred_T_H_W_C, hint_T_H_W_C)}


def build_fidelity(params: BlurParams) -> BlurFidelity:
    """The blur fidelity metric for validated ``params``."""
    return BlurFidelity(params)
