"""The bicubic down-up resize that ends the reference's vis hint (``AddControlInputBlurDownUp``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Frames per torch call: bounds the float32 working set (a whole 720p clip in one call takes
# tens of GB; docs/environment.md#torch-on-cpu-large-resizes, timings in bench/NOTES.md).
CHUNK_FRAMES = 8


def down_up(
    frames_T_H_W_C: np.ndarray, scale: int, *, chunk_frames: int = CHUNK_FRAMES
) -> np.ndarray:
    """Resize uint8 frames to ``(int(H/scale), int(W/scale))`` and back to ``(H, W)``.

    Each resize is what torchvision's ``resize`` does to a uint8 tensor, as the reference calls
    it: torch bicubic with antialias (``align_corners=False``) on float32 in 0..255, then clamp
    and round (half to even) back to uint8. The down-resized frames are therefore uint8 before
    they are resized up; keeping float32 between the two resizes changes about half the pixels
    by one level. Frames are processed ``chunk_frames`` at a time in channels_last layout, which
    is what the NHWC numpy array already is.
    """
    import torch  # lazy: importing the plugin must not import torch

    T, H, W, _ = frames_T_H_W_C.shape
    small = (max(1, int(H / scale)), max(1, int(W / scale)))
    out_T_H_W_C = np.empty_like(frames_T_H_W_C)
    with torch.inference_mode():
        for start in range(0, T, chunk_frames):
            chunk_N_H_W_C = frames_T_H_W_C[start : start + chunk_frames].astype(np.float32)
            x_N_C_H_W = torch.from_numpy(chunk_N_H_W_C).permute(0, 3, 1, 2)  # channels_last view
            x_N_C_H_W = _bicubic_to_uint8_levels(x_N_C_H_W, small)
            x_N_C_H_W = _bicubic_to_uint8_levels(x_N_C_H_W, (H, W)).to(torch.uint8)
            out_T_H_W_C[start : start + chunk_frames] = x_N_C_H_W.permute(0, 2, 3, 1).numpy()
    return out_T_H_W_C


def _bicubic_to_uint8_levels(x_N_C_H_W: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One torchvision uint8 resize: antialiased bicubic, clamped and rounded to 0..255 levels
    (kept float32 so the next resize can take it without another copy)."""
    import torch.nn.functional as F

    x_N_C_H_W = F.interpolate(
        x_N_C_H_W, size=size, mode="bicubic", antialias=True, align_corners=False
    )
    return x_N_C_H_W.clamp_(0, 255).round_()
