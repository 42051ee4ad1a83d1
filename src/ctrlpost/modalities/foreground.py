"""The moving shape of a synthetic clip, found from its decoded frames: boolean masks ``[T, H, W]``.

What the depth, seg and keypoint plugins' ``synthesize`` write a hint file from (part of the
plugin API, so the three share it). The clips of ctrlpost's ``synthetic`` source are one
shape of one flat colour moving over a background (striped, checkered, dotted, or a smooth
gradient, each a shade of another colour plus grain) while the camera may pan. The shape is the
one colour of the clip that stays in a small part of each frame, wherever the camera looks:

1. Candidate colours: the peaks of the clip's colour histogram (bins of 16 levels, smoothed over
   neighbouring bins), each with at least 1 % of the pixels, at most 8, strongest first; each
   candidate is the median of the pixels near its peak.
2. A candidate's pixels in a frame are those within 32 levels of it in every channel; its spread
   is the mean of ``max(std(x) / W, std(y) / H)`` of those pixels over the frames with at least
   4 of them (1 when none has; a shape may leave the frame for a while). Backgrounds cover the
   frame (about 0.29, a gradient's band included); the shape does not. The strongest candidate
   of spread below 0.2 is the shape (a blend of the shape's and the background's colours along
   its edge is as compact, but has fewer pixels); without one, no frame has a foreground. (1 and
   2 use a subsample of at most 16384 pixels a frame.)
3. A frame's mask: its pixels within 32 levels of the shape's colour, kept where at least 5 of
   their 3×3 neighbourhood are (which drops isolated pixels and fills pinholes), then grown by one
   pixel into neighbours within half the distance from the shape's colour to the nearest other
   candidate, and at least within 32 levels (edge pixels the codec blended).

No camera motion estimate, no temporal median: a pan, or a shape that stays over the same pixels
for most of the clip, changes nothing. It relies on the source's recipe: a foreground that is not
one flat colour is not found. Deterministic: the same frames give the same masks. Its accuracy
on the ``synthetic`` source's clips is in bench/NOTES.md.
"""

from __future__ import annotations

import math

import numpy as np

BIN = 16
"""Width of a colour histogram bin, in levels."""
COLOUR_TOLERANCE = 32
"""A pixel is of a colour when no channel differs from it by more than this."""
MIN_SHARE = 0.01
"""Least share of the (subsampled) pixels a candidate colour has."""
MAX_CANDIDATES = 8
MAX_SPREAD = 0.2
"""A colour spread wider than this is background, not a shape."""
SAMPLE_PIXELS = 16384
"""Candidates are found and scored on a subsample of about this many pixels a frame."""


def foreground_masks(frames_T_H_W_C: np.ndarray) -> np.ndarray:
    """Boolean ``[T, H, W]``: the moving shape's pixels in each frame (see the module docstring).

    ``frames_T_H_W_C``: the clip's RGB uint8 frames, all of them. All False when no colour of
    the clip is compact enough to be a shape.
    """
    frames = np.asarray(frames_T_H_W_C)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 \
            or 0 in frames.shape:
        raise ValueError("frames must be RGB uint8 [T, H, W, 3] with T, H, W >= 1, got "
                         f"{frames.dtype} {list(frames.shape)}")
    T, H, W, _ = frames.shape
    step = max(1, math.ceil(math.sqrt(H * W / SAMPLE_PIXELS)))
    sample_T_h_w_C = frames[:, ::step, ::step]
    candidates = _candidates(sample_T_h_w_C.reshape(-1, 3))
    masks_T_H_W = np.zeros((T, H, W), dtype=bool)
    if not candidates:
        return masks_T_H_W
    compact = [k for k, colour in enumerate(candidates)
               if _spread(sample_T_h_w_C, colour) < MAX_SPREAD]
    if not compact:
        return masks_T_H_W
    best = compact[0]
    colour = candidates[best]
    others = [int(np.abs(c - colour).max()) for k, c in enumerate(candidates) if k != best]
    loose = max(COLOUR_TOLERANCE, min(others, default=0) // 2)
    for t in range(T):
        distance_H_W = np.abs(frames[t].astype(np.int16) - colour).max(axis=-1)
        core_H_W = _neighbours(distance_H_W <= COLOUR_TOLERANCE) >= 5
        masks_T_H_W[t] = core_H_W | ((_neighbours(core_H_W) >= 1) & (distance_H_W <= loose))
    return masks_T_H_W


def _candidates(pixels_N_C: np.ndarray) -> list[np.ndarray]:
    """int16 RGB colours at the peaks of the pixels' smoothed histogram, strongest first."""
    k = 256 // BIN
    bins_N_C = pixels_N_C.astype(np.int64) // BIN
    hist = np.bincount((bins_N_C[:, 0] * k + bins_N_C[:, 1]) * k + bins_N_C[:, 2],
                       minlength=k**3).reshape(k, k, k)
    padded = np.pad(hist, 1)
    smooth = np.zeros_like(hist)
    for i, j, m in np.ndindex(3, 3, 3):
        smooth += padded[i:i + k, j:j + k, m:m + k]
    least = max(1.0, MIN_SHARE * len(pixels_N_C))
    colours = []
    signed_N_C = pixels_N_C.astype(np.int16)
    for _ in range(MAX_CANDIDATES):
        peak = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
        if smooth[peak] < least:
            break
        centre_C = np.array(peak, dtype=np.int16) * BIN + BIN // 2
        near_N_C = signed_N_C[np.abs(signed_N_C - centre_C).max(axis=1) <= BIN + BIN // 2]
        colours.append(np.median(near_N_C, axis=0).astype(np.int16))
        low = [max(0, p - 2) for p in peak]
        smooth[low[0]:peak[0] + 3, low[1]:peak[1] + 3, low[2]:peak[2] + 3] = 0
    return colours


def _spread(frames_T_H_W_C: np.ndarray, colour_C: np.ndarray) -> float:
    """Mean of ``max(std(x) / W, std(y) / H)`` of the colour's pixels over the frames with at
    least 4 of them (1 when none has)."""
    _, H, W, _ = frames_T_H_W_C.shape
    scores = []
    for frame_H_W_C in frames_T_H_W_C:
        near_H_W = np.abs(frame_H_W_C.astype(np.int16) - colour_C).max(axis=-1) \
            <= COLOUR_TOLERANCE
        ys, xs = np.nonzero(near_H_W)
        if len(ys) >= 4:
            scores.append(max(float(xs.std()) / W, float(ys.std()) / H))
    return float(np.mean(scores)) if scores else 1.0


def _neighbours(mask_H_W: np.ndarray) -> np.ndarray:
    """How many of each pixel's 3×3 neighbourhood (itself included) are set; the frame's edge
    pixels repeat outwards."""
    H, W = mask_H_W.shape
    padded = np.pad(mask_H_W.astype(np.uint8), 1, mode="edge")
    counts_H_W = np.zeros((H, W), dtype=np.uint8)
    for i, j in np.ndindex(3, 3):
        counts_H_W += padded[i:i + H, j:j + W]
    return counts_H_W
