"""COCO run-length masks: the compressed ``counts`` string, and the window of frames a sample uses.

A seg pickle stores each object's whole-clip boolean mask ``(T, H, W)`` flattened in C order
(frame-major, then rows, then columns) into an ``(N, 1)`` column, N = T*H*W, and encoded by
pycocotools. The runs then alternate 0s and 1s, starting with 0s (a first run of length 0 when
the mask starts with a 1). The compressed string packs each run length in 5-bit groups, as
characters ``48 + group`` with bit 0x20 meaning "more groups follow" and bit 0x10 of the last
group as the sign; from the fourth run on, each value is stored as the difference from the run
two places before.

:func:`runs_from_counts` unpacks the string with numpy (no Python loop over runs) and
:func:`window_runs` keeps the runs that overlap pixels ``[start, stop)``, so a window of frames
is decoded without ever building the whole ``(N, 1)`` column: memory is that of the window,
whatever the clip's length. pycocotools decodes the same strings (the tests check it); it needs
N bytes per object for the whole column (1.2 GB for 1001 frames of 1080x1092).
"""

from __future__ import annotations

import numpy as np

# 12 groups of 5 bits hold any run length below 2**59; longer groups mean a damaged string.
_MAX_GROUPS = 12


class RleError(ValueError):
    """A counts string that is not a valid COCO run-length encoding of N pixels."""


def runs_from_counts(counts: bytes | str) -> np.ndarray:
    """The int64 run lengths (0s first, alternating) packed in a compressed ``counts`` string."""
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    if not raw:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise RleError("counts has characters outside the RLE alphabet ('0' to 'o')")
    last_of_run = (c & 0x20) == 0
    if not last_of_run[-1]:
        raise RleError("counts ends in the middle of a run length (truncated?)")
    ends = np.flatnonzero(last_of_run)
    starts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - starts + 1
    if groups.max() > _MAX_GROUPS:
        raise RleError("counts holds a run length longer than 60 bits")
    run_of_char = np.repeat(np.arange(len(starts)), groups)
    shift = 5 * (np.arange(len(c)) - starts[run_of_char])
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * groups[negative])
    # From the fourth run on a value is the difference from the run two places before.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def check_runs(runs: np.ndarray, n_pixels: int) -> str | None:
    """None when ``runs`` cover exactly ``n_pixels`` with no negative run, else the problem."""
    if runs.size and runs.min() < 0:
        return "its RLE counts hold a negative run length"
    covered = int(runs.sum())
    if covered != n_pixels:
        return f"its RLE counts cover {covered} pixels, not {n_pixels}"
    return None


def window_runs(runs: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The run lengths inside pixels ``[start, stop)``, 0s first (possibly a 0-length first run).

    ``np.repeat(np.arange(len(result)) % 2 == 1, result)`` is the window's mask.
    """
    ends = np.cumsum(runs)
    begins = ends - runs
    inside = np.clip(ends, start, stop) - np.clip(begins, start, stop)
    first, last = np.searchsorted(ends, start, side="right"), np.searchsorted(begins, stop)
    kept = inside[first:last]
    return kept if first % 2 == 0 else np.concatenate(([0], kept))


def mask_from_runs(runs: np.ndarray) -> np.ndarray:
    """The flat boolean mask of alternating runs (0s first)."""
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs)
