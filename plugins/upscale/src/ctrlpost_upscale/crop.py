"""Where the upscale crop lies in a frame: its size (from the frame's aspect ratio) and offset.

The reference picks ``top`` uniformly among the ``max(0, H - crop_h) + 1`` valid offsets (and
``left`` likewise). The draw keeps that choice as a fraction ``u`` in [0, 1) so that it does not
depend on the frame size: ``top = int(u * (max(0, H - crop_h) + 1))``, which is uniform over the
same offsets.

A frame smaller than the crop on a side gets offset 0 there, and the crop is then the whole
side (shorter than the crop size), as in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctrlpost_upscale.params import ASPECT_RATIOS, CROP_SIZES_720, UpscaleParams


def aspect_bucket(width: int, height: int) -> str:
    """The reference's aspect-ratio bucket of a ``width × height`` frame (e.g. ``"16:9"``)."""
    ratio = width / height
    return min(ASPECT_RATIOS, key=lambda name: (ratio - ASPECT_RATIOS[name]) ** 2)


def crop_size(width: int, height: int, params: UpscaleParams) -> tuple[int, int]:
    """(width, height) of the training crop for a ``width × height`` frame."""
    if params.crop_size is not None:
        return params.crop_size
    return CROP_SIZES_720[aspect_bucket(width, height)]


def offset(fraction: float, side: int, crop_side: int) -> int:
    """The crop's offset along a side of ``side`` pixels, for a drawn ``fraction`` in [0, 1)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a crop position fraction must lie in [0, 1), got {fraction}")
    choices = max(0, side - crop_side) + 1
    return min(int(fraction * choices), choices - 1)


@dataclass(frozen=True)
class Crop:
    """One clip's crop and degradation sizes.

    ``top``/``left``/``height``/``width`` select ``frames[:, top:top + height, left:left +
    width]`` (``height``/``width`` are less than the crop size only for a frame smaller than it).
    The crop is shrunk to ``small_height × small_width`` and enlarged to ``crop_height ×
    crop_width``, the configured crop size.
    """

    top: int
    left: int
    height: int
    width: int
    crop_height: int
    crop_width: int
    small_height: int
    small_width: int


def locate(frame_height: int, frame_width: int, drawn: Mapping[str, Any],
           params: UpscaleParams) -> Crop:
    """The crop of a ``frame_height × frame_width`` clip for a draw of ``UpscaleHints.draw``.

    The shrunk size is ``int(side * (1 / factor))`` of the configured crop size, as the
    reference computes it.
    """
    crop_width, crop_height = crop_size(frame_width, frame_height, params)
    top = offset(float(drawn["top_fraction"]), frame_height, crop_height)
    left = offset(float(drawn["left_fraction"]), frame_width, crop_width)
    scale = 1 / int(drawn["downscale"])
    return Crop(
        top=top,
        left=left,
        height=min(crop_height, frame_height - top),
        width=min(crop_width, frame_width - left),
        crop_height=crop_height,
        crop_width=crop_width,
        small_height=int(crop_height * scale),
        small_width=int(crop_width * scale),
    )
