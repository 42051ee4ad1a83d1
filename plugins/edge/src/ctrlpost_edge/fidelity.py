"""How well generated frames follow their edge hint: F1 of Canny edges with a pixel tolerance.

The generated frames get the same Canny thresholds as the hint they were generated from (the
clip's draw), and their edge map is compared with the hint's:

* precision: the share of generated edge pixels with a hint edge pixel within ``tolerance``
  pixels (Euclidean distance);
* recall: the share of hint edge pixels with a generated edge pixel within ``tolerance``;
* F1: their harmonic mean.

Counts are pooled over every frame of the clip. The tolerance absorbs the one- or two-pixel jitter
of Canny on regenerated texture (the standard boundary-benchmark practice), so a perfectly
followed hint scores 1 even though no generator reproduces edges to the pixel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ctrlpost_edge.params import EdgeParams


def disk(radius: int) -> np.ndarray:
    """uint8 structuring element of the pixels within Euclidean ``radius`` of the centre."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def dilate(edges_T_H_W: np.ndarray, tolerance: int) -> np.ndarray:
    """bool ``[T, H, W]``: pixels within ``tolerance`` pixels of an edge pixel of that frame."""
    if tolerance == 0:
        return edges_T_H_W.astype(bool)
    import cv2  # lazy: importing the plugin must stay cheap for shell completion

    kernel = disk(tolerance)
    return np.stack([cv2.dilate(frame.astype(np.uint8), kernel) > 0 for frame in edges_T_H_W])


def edge_f1(found_T_H_W: np.ndarray, expected_T_H_W: np.ndarray, *,
            tolerance: int = 2) -> dict[str, float]:
    """``{"f1", "precision", "recall"}`` of a found edge map against the expected one (bool or
    0/non-zero, ``[T, H, W]`` or ``[H, W]``). An empty map has precision (or recall) 1 when the
    other is empty too, else 0."""
    if found_T_H_W.shape != expected_T_H_W.shape:
        raise ValueError(f"edge maps differ in shape: {found_T_H_W.shape} vs "
                         f"{expected_T_H_W.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    found = np.asarray(found_T_H_W).astype(bool).reshape(-1, *found_T_H_W.shape[-2:])
    expected = np.asarray(expected_T_H_W).astype(bool).reshape(found.shape)
    n_found, n_expected = int(found.sum()), int(expected.sum())
    precision = _share(found & dilate(expected, tolerance), n_found, other=n_expected)
    recall = _share(expected & dilate(found, tolerance), n_expected, other=n_found)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def _share(hits: np.ndarray, total: int, *, other: int) -> float:
    if total == 0:
        return 1.0 if other == 0 else 0.0
    return float(hits.sum()) / total


@dataclass(frozen=True)
class EdgeFidelity:
    """The ``edge`` fidelity metric (see the module docstring); higher is better."""

    headline: ClassVar[str] = "f1"

    params: EdgeParams

    def score(self, generated_T_H_W_C: np.ndarray, hint_T_H_W_C: np.ndarray,
              drawn: Mapping[str, Any]) -> dict[str, float]:
        """F1, precision and recall of Canny(``generated``) against the hint's edges.

        ``generated`` is uint8 RGB ``[T, H, W, 3]``; ``hint`` the 0/255 edge hint it was generated
        from; ``drawn`` the clip's thresholds (``CannyHints.draw``).
        """
        from ctrlpost_edge.canny import CannyHints

        found_T_H_W_C = CannyHints(self.params).render(generated_T_H_W_C, drawn)
        return edge_f1(found_T_H_W_C[..., 0] > 127, hint_T_H_W_C[..., 0] > 127,
                       tolerance=self.params.fidelity_tolerance)


def build_fidelity(params: EdgeParams) -> EdgeFidelity:
    """The edge fidelity metric for validated ``params``."""
    return EdgeFidelity(params)
