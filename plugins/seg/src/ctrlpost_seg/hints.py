"""The seg hint of Cosmos-Transfer1 training (``AddControlInputSeg``): objects in random colours.

``SegHints.draw(rng, masks)``, for a file of N objects, makes these generator calls in this order:

1. ``count = rng.integers(0, min(max_objects, N), endpoint=True)``: how many objects to paint;
2. ``rng.permutation(N)``, of which the first ``count`` entries are the objects, in selection
   order (always made, also when ``count`` is 0);
3. for k = 0 .. count-1: ``h = rng.uniform(0, 1)``, ``s = rng.uniform(0.1, 1)``,
   ``v = rng.uniform(0.2, 1)``, the HSV colour of paint position k.

Colours belong to paint positions, not to objects, because the reference draws them after
sorting: the chosen objects are sorted by their number of mask pixels inside the sample's
frames, largest first (ties keep selection order), and the k-th of that order is painted with
colour k, each over the previous ones, on black. Sorting needs the masks, so it happens in
``render``; the draw holds only JSON values: ``{"objects": [int], "hsv": [[h, s, v]],
"colors": [[r, g, b]]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlpost_seg.params import SegParams
from ctrlpost_seg.rle import mask_from_runs
from ctrlpost_seg.seg_file import SegMasks

LOOP_MAX_RUNS = 200_000
"""Objects with at most this many mask runs in the window are painted run by run (one slice
assignment each, no per-pixel mask); objects with more (noisy masks, short runs) are painted
through a boolean mask of the window, whose cost does not grow with the number of runs."""


def hsv_to_rgb_uint8(h: float, s: float, v: float) -> list[int]:
    """An HSV colour (each in [0, 1]) as 0-255 RGB, computed as matplotlib's ``hsv_to_rgb`` in
    float64 and then multiplied by 255 and truncated, as the reference converts its colours."""
    sector = int(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    if s == 0:
        rgb = (v, v, v)
    else:
        rgb = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[sector % 6]
    return [int(channel * 255) for channel in rgb]


@dataclass(frozen=True)
class SegHints:
    """Seg hints: a random subset of the file's objects, each a flat random colour."""

    params: SegParams
    loop_max_runs: int = LOOP_MAX_RUNS

    def draw(self, rng: np.random.Generator, source: SegMasks) -> dict[str, Any]:
        """The sample's objects and paint colours (see the module docstring for the call order)."""
        n_objects = len(source.objects)
        count = int(rng.integers(0, min(self.params.max_objects, n_objects), endpoint=True))
        objects = [int(i) for i in rng.permutation(n_objects)[:count]]
        hsv = [[float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.1, 1.0)),
                float(rng.uniform(0.2, 1.0))] for _ in range(count)]
        return {"objects": objects, "hsv": hsv, "colors": [hsv_to_rgb_uint8(*c) for c in hsv]}

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any],
               source: SegMasks) -> np.ndarray:
        """uint8 ``[T, H, W, 3]``: the drawn objects, largest first, in ``drawn["colors"]``."""
        if tuple(frames_T_H_W_C.shape[:3]) != source.shape:
            raise ValueError(f"frames {list(frames_T_H_W_C.shape[:3])} (T, H, W) do not match "
                             f"the seg window {list(source.shape)}")
        objects, colors = list(drawn["objects"]), list(drawn["colors"])
        if len(colors) != len(objects):
            raise ValueError(f"the draw has {len(objects)} objects but {len(colors)} colours")
        counts = [source.objects[i].pixel_count for i in objects]
        paint_order = sorted(range(len(objects)), key=lambda k: -counts[k])  # stable: ties keep
        T, H, W = source.shape
        hint_N_C = np.zeros((T * H * W, 3), dtype=np.uint8)  # pixels in the masks' flat order
        for position, k in enumerate(paint_order):
            color = np.asarray(colors[position], dtype=np.uint8)
            self._paint(hint_N_C, source.objects[objects[k]].runs, color)
        return hint_N_C.reshape(T, H, W, 3)

    def _paint(self, hint_N_C: np.ndarray, runs: np.ndarray, color: np.ndarray) -> None:
        """Set the pixels of the 1-runs of ``runs`` (0s first) to ``color``."""
        if len(runs) // 2 <= self.loop_max_runs:
            ends = np.cumsum(runs)
            begins = ends - runs
            for begin, end in zip(begins[1::2].tolist(), ends[1::2].tolist(), strict=True):
                hint_N_C[begin:end] = color
        else:
            np.copyto(hint_N_C, color, where=mask_from_runs(runs)[:, None])


def build_generator(params: SegParams) -> SegHints:
    """The seg hint generator for validated ``params``."""
    return SegHints(params)
