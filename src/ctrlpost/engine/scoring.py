"""Scoring generated clips with the modality's fidelity metric, and their PNG strips.

Only the real picture counts: the reflection padding that fits a clip into its bucket is cropped
off the generated frames, the hint and the reference frames before anything is scored or drawn.

A score is read against two references of the same clip, computed once with the tokenizer only:

* ``<headline>_reconstruction``, the ceiling: the real clip passed through the tokenizer, the
  best a perfect generator can score;
* ``<headline>_noise``, the floor: decoded unit Gaussian latents, what a generator that ignores
  the hint produces. On data whose hints are dense (textures everywhere) the floor of an edge F1
  can be high; a score is only informative where the two references are apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlpost.engine.generate import ClipInputs
from ctrlpost.modalities import Modality

LABEL_HEIGHT = 18
HEADER_HEIGHT = 16  # the row of column names under the label line
HEADER_SCALES = (0.4, 0.35, 0.3)  # font scales tried largest first; 0.3 is ~7 px tall
GAP = 2
COLUMNS = ("hint", "generated", "hint of generated", "real")


@dataclass(frozen=True)
class Crop:
    """The unpadded window of a bucket-sized frame: rows ``top:bottom``, columns ``left:right``."""

    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def of(cls, padding_mask_1_H_W: torch.Tensor) -> Crop:
        """The bounding box of the unpadded pixels (the whole frame if nothing is padded)."""
        valid_H_W = padding_mask_1_H_W[0] < 0.5
        rows = torch.nonzero(valid_H_W.any(dim=1)).flatten()
        cols = torch.nonzero(valid_H_W.any(dim=0)).flatten()
        H, W = valid_H_W.shape
        if rows.numel() == 0:
            return cls(0, H, 0, W)
        return cls(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)

    def apply(self, frames_T_H_W_C: np.ndarray) -> np.ndarray:
        """The window of ``[T, H, W, C]`` frames (a contiguous copy)."""
        return np.ascontiguousarray(frames_T_H_W_C[:, self.top:self.bottom, self.left:self.right])


def channels_last(frames_C_T_H_W: torch.Tensor) -> np.ndarray:
    """uint8 ``[C, T, H, W]`` tensor → ``[T, H, W, C]`` array."""
    return frames_C_T_H_W.permute(1, 2, 3, 0).contiguous().numpy()


@dataclass
class Scorer:
    """The recipe's modality with its validated params: scores clips and draws strips."""

    modality: Modality
    params: Any
    _metric: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        from ctrlpost.modalities import registry

        self._metric = registry.fidelity_metric(self.modality, self.params)

    @property
    def headline(self) -> str | None:
        """Name of the metric's headline value, or None when the modality has no metric."""
        return self._metric.headline if self._metric is not None else None

    def score(self, frames_T_H_W_C: np.ndarray, clip: ClipInputs) -> dict[str, float]:
        """The fidelity values of ``frames`` (bucket-sized uint8 RGB) against the clip's hint;
        empty when the modality has no metric."""
        if self._metric is None:
            return {}
        crop = Crop.of(clip.padding_mask_1_H_W)
        hint_T_H_W_C = crop.apply(channels_last(clip.hint_C_T_H_W))
        values = self._metric.score(crop.apply(frames_T_H_W_C), hint_T_H_W_C, clip.hint_draw)
        return {str(k): float(v) for k, v in values.items()}

    def references(self, clip: ClipInputs, tokenizer: Any, *, seed: int) -> dict[str, float]:
        """``{<headline>_reconstruction, <headline>_noise}`` of the clip (empty without a
        metric)."""
        from ctrlpost.engine.generate import decoded_noise, reconstruct

        headline = self.headline
        if headline is None:
            return {}
        ceiling = self.score(reconstruct(tokenizer, clip), clip)
        floor = self.score(decoded_noise(tokenizer, clip, seed=seed), clip)
        return {f"{headline}_reconstruction": ceiling[headline],
                f"{headline}_noise": floor[headline]}

    def hint_of(self, frames_T_H_W_C: np.ndarray, clip: ClipInputs) -> np.ndarray | None:
        """The clip's hint generator (same draw) applied to ``frames``; None for a modality
        whose hints come from a per-clip file (made by a model, not from the frames) or that
        trains on other frames than the clip's (its draw is about the clip, not these)."""
        if self.modality.hint_file is not None or self.modality.replaces_video:
            return None
        generator = self.modality.build_generator(self.params)
        return generator.render(np.ascontiguousarray(frames_T_H_W_C), clip.hint_draw)

    def strip(self, generated_T_H_W_C: np.ndarray, clip: ClipInputs, *, frames: int,
              label: str) -> np.ndarray:
        """uint8 RGB image: one row per shown frame, columns hint | generated | hint of
        generated (when the hint can be made from frames) | real, under a label line and a
        header row naming each column above it."""
        crop = Crop.of(clip.padding_mask_1_H_W)
        generated = crop.apply(generated_T_H_W_C)
        hint_of_generated = self.hint_of(generated, clip)
        by_name = dict(zip(COLUMNS, [crop.apply(channels_last(clip.hint_C_T_H_W)), generated,
                                     hint_of_generated,
                                     crop.apply(channels_last(clip.video_3_T_H_W))], strict=True))
        names = [name for name, panel in by_name.items() if panel is not None]
        panels = [panel for panel in by_name.values() if panel is not None]
        T = generated.shape[0]
        picks = np.linspace(0, T - 1, num=min(frames, T)).round().astype(int)
        rows = [_join([_rgb(panel[t]) for panel in panels], axis=1) for t in picks]
        body = _join(rows, axis=0)
        header = _header(names, column_width=generated.shape[2])
        return np.concatenate([_label(label, body.shape[1]), header, body], axis=0)


def _rgb(frame_H_W_C: np.ndarray) -> np.ndarray:
    if frame_H_W_C.shape[-1] == 1:
        return np.repeat(frame_H_W_C, 3, axis=-1)
    return frame_H_W_C[..., :3]


def _join(images: Sequence[np.ndarray], *, axis: int) -> np.ndarray:
    shape = list(images[0].shape)
    shape[axis] = GAP
    gap = np.full(shape, 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for image in images:
        parts += [image, gap]
    return np.concatenate(parts[:-1], axis=axis)


def _label(text: str, width: int) -> np.ndarray:
    import cv2

    band = np.zeros((LABEL_HEIGHT, width, 3), dtype=np.uint8)
    cv2.putText(band, text, (3, LABEL_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                (255, 255, 255), 1, cv2.LINE_AA)
    return band


def _header(names: Sequence[str], *, column_width: int) -> np.ndarray:
    """The row of column names, each centred over its column (columns ``column_width`` wide,
    :data:`GAP` apart, as :func:`_join` lays them out). A name too wide for its column is drawn
    smaller, down to the smallest legible size, then shortened."""
    import cv2

    width = len(names) * column_width + (len(names) - 1) * GAP
    band = np.zeros((HEADER_HEIGHT, width, 3), dtype=np.uint8)
    # Anti-aliased ink spills about a pixel past the width getTextSize gives: two pixels of
    # margin each side keep a name inside its column, clear of its neighbours.
    room = max(column_width - 4, 1)
    for index, name in enumerate(names):
        text, scale = _fitted(name, room)
        (text_width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        left = index * (column_width + GAP) + max((column_width - text_width) // 2, 2)
        cv2.putText(band, text, (left, HEADER_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return band


def _fitted(name: str, room: int) -> tuple[str, float]:
    """``name`` at the largest of :data:`HEADER_SCALES` that fits ``room`` pixels, else at the
    smallest, cut to fit and ended with ``..``."""
    import cv2

    def width(text: str, scale: float) -> int:
        return int(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0])

    for scale in HEADER_SCALES:
        if width(name, scale) <= room:
            return name, scale
    smallest = HEADER_SCALES[-1]
    for cut in range(len(name) - 1, 0, -1):
        if width(name[:cut] + "..", smallest) <= room:
            return name[:cut] + "..", smallest
    return "", smallest  # not even one letter fits: an empty band is better than a smudge


def strip_label(name: str, scores: Mapping[str, float]) -> str:
    """``"<clip>  f1 0.712  precision 0.6  …"``: the columns are named in the header row."""
    values = "  ".join(f"{key} {value:.3g}" for key, value in scores.items())
    return f"{name}  {values}"


def write_strip(path: Path, image_H_W_C: np.ndarray) -> Path:
    """Write a strip PNG atomically."""
    from ctrlpost.data.preview import write_image

    write_image(path, image_H_W_C)
    return path


def mean_scores(per_clip: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of every value over the clips that report it."""
    keys = sorted({key for scores in per_clip for key in scores})
    return {key: float(np.mean([s[key] for s in per_clip if key in s])) for key in keys}
