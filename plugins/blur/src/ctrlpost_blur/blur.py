"""The vis (blur) hint of Cosmos-Transfer1 training (``AddControlInput`` + ``BlurDownUp``).

``BlurHints.draw`` for preset ``'random'`` makes exactly these nine generator calls, in this
order, whatever the outcome (unused filter parameters are drawn and dropped, so every clip
consumes the same amount of randomness):

1. ``u = rng.random()``: combination ``"bilateral"`` if u < 0.5, ``"gaussian"`` if u < 0.8,
   else ``"bilateral_gaussian"`` (bilateral then Gaussian);
2. ``downscale = rng.integers(1, 4, endpoint=True)`` (inner downscale factor);
3. bilateral ``d = rng.integers(15, 49, endpoint=True)``;
4. ``sigma_color = rng.integers(100, 299, endpoint=True)``;
5. ``sigma_space = rng.integers(50, 149, endpoint=True)``;
6. ``iterations = rng.integers(1, 3, endpoint=True)``;
7. Gaussian ``ksize = rng.integers(21, 29, endpoint=True)``, plus 1 if even;
8. ``sigma = rng.uniform(10.5, 14.5)`` (sigmaX; sigmaY is 0, which OpenCV reads as = sigmaX);
9. ``down_up_scale = rng.integers(4, 17, endpoint=True)`` (the reference's off-by-one 17 kept).

Fixed presets do not use the generator. The drawn dict holds only JSON types.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlpost_blur.downup import CHUNK_FRAMES, down_up
from ctrlpost_blur.params import PRESET_DRAWS, BlurParams

COMBINATIONS = ("bilateral", "gaussian", "bilateral_gaussian")


@dataclass(frozen=True)
class BlurHints:
    """Vis hints: one blur configuration per clip, applied to every frame."""

    params: BlurParams
    chunk_frames: int = CHUNK_FRAMES

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """The clip's blur: ``{"combination", "downscale", "bilateral", "gaussian",
        "down_up_scale"}``; an unused filter is ``None``."""
        if self.params.preset != "random":
            return copy.deepcopy(PRESET_DRAWS[self.params.preset])
        u = float(rng.random())
        combination = COMBINATIONS[0 if u < 0.5 else 1 if u < 0.8 else 2]
        downscale = _integer(rng, 1, 4)
        bilateral = {
            "d": _integer(rng, 15, 49),
            "sigma_color": _integer(rng, 100, 299),
            "sigma_space": _integer(rng, 50, 149),
            "iterations": _integer(rng, 1, 3),
        }
        ksize = _integer(rng, 21, 29)
        gaussian = {
            "ksize": ksize + 1 if ksize % 2 == 0 else ksize,
            "sigma": float(rng.uniform(10.5, 14.5)),
        }
        return {
            "combination": combination,
            "downscale": downscale,
            "bilateral": bilateral if "bilateral" in combination else None,
            "gaussian": gaussian if "gaussian" in combination else None,
            "down_up_scale": _integer(rng, 4, 17),
        }

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` vis hint of uint8 RGB frames: filters, then the down-up resize."""
        _check_frames(frames_T_H_W_C)
        filtered_T_H_W_C = np.empty_like(frames_T_H_W_C)
        for t, frame_H_W_C in enumerate(frames_T_H_W_C):
            filtered_T_H_W_C[t] = _filter_frame(frame_H_W_C, drawn)
        scale = int(drawn["down_up_scale"])
        return down_up(filtered_T_H_W_C, scale, chunk_frames=self.chunk_frames)


def build_generator(params: BlurParams) -> BlurHints:
    """The blur hint generator for validated ``params``."""
    return BlurHints(params)


def _integer(rng: np.random.Generator, low: int, high: int) -> int:
    """A uniform integer in ``[low, high]``, both ends included."""
    return int(rng.integers(low, high, endpoint=True))


def _filter_frame(frame_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
    """Inner downscale (INTER_AREA), bilateral passes, Gaussian, upscale back (INTER_LINEAR)."""
    import cv2  # lazy: importing the plugin must stay cheap for shell completion

    H, W = frame_H_W_C.shape[:2]
    downscale = int(drawn["downscale"])
    x = np.ascontiguousarray(frame_H_W_C)
    if downscale > 1:
        small_size = (max(1, W // downscale), max(1, H // downscale))  # cv2 wants (width, height)
        x = cv2.resize(x, small_size, interpolation=cv2.INTER_AREA)
    if (bilateral := drawn["bilateral"]) is not None:
        d = int(bilateral["d"])
        sigma_color, sigma_space = float(bilateral["sigma_color"]), float(bilateral["sigma_space"])
        for _ in range(int(bilateral["iterations"])):
            x = cv2.bilateralFilter(x, d, sigma_color, sigma_space)
    if (gaussian := drawn["gaussian"]) is not None:
        ksize = int(gaussian["ksize"])
        x = cv2.GaussianBlur(x, (ksize, ksize), float(gaussian["sigma"]))
    if downscale > 1:
        x = cv2.resize(x, (W, H), interpolation=cv2.INTER_LINEAR)
    return x


def _check_frames(frames_T_H_W_C: np.ndarray) -> None:
    if frames_T_H_W_C.dtype != np.uint8 or frames_T_H_W_C.ndim != 4 or frames_T_H_W_C.shape[3] != 3:
        raise ValueError(
            "blur hints need uint8 RGB frames [T, H, W, 3], got "
            f"{frames_T_H_W_C.dtype} {list(frames_T_H_W_C.shape)}"
        )
