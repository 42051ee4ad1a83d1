"""The degradation of the upscale hint: a bicubic shrink and a bilinear enlargement.

Each resize is what torchvision's ``resize`` does to a uint8 tensor, as the reference calls it:
torch ``interpolate`` with antialias on (``align_corners=False``) on float32 copies of the
0..255 values, then rounding (half to even) back to uint8; the bicubic result is clamped to
0..255 first. The shrunk frames are therefore uint8 levels before they are enlarged. Both resizes
keep antialias on, torchvision's default (the enlargement would otherwise differ by one level on
a few pixels). A resize to the size the frames already have is skipped, as torchvision does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Frames per torch call: bounds the float32 working set (~90 MB for a 1280x704 crop).
CHUNK_FRAMES = 8


def down_up(crop_T_H_W_C: np.ndarray, small: tuple[int, int], size: tuple[int, int], *,
            chunk_frames: int = CHUNK_FRAMES) -> np.ndarray:
    """uint8 ``[T, *size, C]``: ``crop`` resized to ``small`` (bicubic) and then to ``size``
    (bilinear), both ``(height, width)``. Frames are processed ``chunk_frames`` at a time in
    channels_last layout, the layout of the NHWC array (and of the reference's tensors)."""
    import torch  # lazy: importing the plugin must not import torch

    T, _, _, C = crop_T_H_W_C.shape
    out_T_H_W_C = np.empty((T, *size, C), dtype=np.uint8)
    with torch.inference_mode():
        for start in range(0, T, chunk_frames):
            x_N_C_H_W = torch.from_numpy(crop_T_H_W_C[start:start + chunk_frames]).permute(
                0, 3, 1, 2)
            x_N_C_H_W = _resize_levels(x_N_C_H_W, small, "bicubic")
            x_N_C_H_W = _resize_levels(x_N_C_H_W, size, "bilinear")
            out_T_H_W_C[start:start + chunk_frames] = x_N_C_H_W.permute(0, 2, 3, 1).numpy()
    return out_T_H_W_C


def _resize_levels(x_N_C_H_W: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """One torchvision uint8 resize (see the module docstring); uint8 in, uint8 out."""
    import torch
    import torch.nn.functional as F

    if tuple(x_N_C_H_W.shape[-2:]) == tuple(size):
        return x_N_C_H_W
    y_N_C_H_W = F.interpolate(x_N_C_H_W.float(), size=size, mode=mode, antialias=True,
                              align_corners=False)
    if mode == "bicubic":
        y_N_C_H_W = y_N_C_H_W.clamp_(0, 255)
    return y_N_C_H_W.round_().to(torch.uint8)
