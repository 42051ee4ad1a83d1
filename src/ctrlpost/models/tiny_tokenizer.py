"""A tiny deterministic stand-in for the Cosmos tokenizer, written as TorchScript files.

``build_tiny_tokenizer`` writes ``encoder.jit``, ``decoder.jit`` and ``mean_std.pt`` with the
calling convention of the released files, so the CPU demo and the tests run the real
``VideoTokenizer`` code path without a 1 GB download.

The codec ("Haar cells") is linear, causal in time and has no parameters:

* time: latent frame 0 is pixel frame 0; each later latent frame is the mean of the next
  ``temporal`` pixel frames (so ``1 + k·temporal`` pixel frames ↔ ``1 + k`` latent frames);
* space: each ``spatial × spatial`` pixel block is split into a ``g × g`` grid of cells, with
  ``latent_channels = 4·g²`` (16 channels → 2 × 2 cells). Channels ``[0, 3g²)`` are the mean
  R, G, B of each cell (colour-major, then cell row, then cell column); channels ``[3g², 4g²)``
  are, per cell, half the difference between the mean luma sum R+G+B of its left and right
  halves (a horizontal Haar detail).

Those 4g² functionals are mutually orthogonal and the decoder is the matching synthesis, so
``encode(decode(z)) == z`` exactly for every latent z (up to float rounding), and
``decode(encode(x)) == x`` for videos that lie in the codec's range (cell-wise constant colour
plus a left/right luma step, constant over each temporal group). Everything else is projected
orthogonally onto that range. The 3·8·8·8 = 1536 values of a pixel block cannot fit in 16
channels, so a truly lossless 8×8×8 codec is impossible.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ctrlpost.models.tokenizer import (
    DECODER_FILE,
    ENCODER_FILE,
    MEAN_STD_FILE,
    torchscript_deprecation_silenced,
)
from ctrlpost.tokenizer_geometry import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION

TINY_LATENT_STD = 0.5
"""Std written to mean_std.pt: roughly the spread of cell colour means of natural video."""


class HaarCellEncoder(nn.Module):
    """Video [B, 3, 1 + k·temporal, H, W] → ``(latent [B, 4g², 1 + k, H/spatial, W/spatial],)``."""

    def __init__(self, *, cells: int, spatial: int, temporal: int) -> None:
        super().__init__()
        self.cells = cells
        self.spatial = spatial
        self.temporal = temporal

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor]:
        b, c, t, h, w = video.shape
        if c != 3 or (t - 1) % self.temporal != 0 or h % self.spatial or w % self.spatial:
            raise RuntimeError("tiny encoder: bad input shape")
        groups = (t - 1) // self.temporal
        rest = video[:, :, 1:].reshape(b, 3, groups, self.temporal, h, w).mean(3)
        pooled = torch.cat([video[:, :, :1], rest], dim=2)
        g = self.cells
        cell = self.spatial // g
        hl = h // self.spatial
        wl = w // self.spatial
        # dims: b, colour, frame, block row, cell row, row in cell, block col, cell col, side, col
        blocks = pooled.reshape(b, 3, groups + 1, hl, g, cell, wl, g, 2, cell // 2)
        side_means = blocks.mean(dim=(5, 9))
        colour = side_means.mean(-1).permute(0, 1, 4, 6, 2, 3, 5)
        luma_sides = side_means.sum(1)
        detail = (0.5 * (luma_sides[..., 0] - luma_sides[..., 1])).permute(0, 3, 5, 1, 2, 4)
        latent = torch.cat(
            [
                colour.reshape(b, 3 * g * g, groups + 1, hl, wl),
                detail.reshape(b, g * g, groups + 1, hl, wl),
            ],
            dim=1,
        )
        return (latent,)


class HaarCellDecoder(nn.Module):
    """Latent [B, 4g², 1 + k, h, w] → video [B, 3, 1 + k·temporal, h·spatial, w·spatial]."""

    def __init__(self, *, cells: int, spatial: int, temporal: int) -> None:
        super().__init__()
        self.cells = cells
        self.spatial = spatial
        self.temporal = temporal

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        b, ch, frames, hl, wl = latent.shape
        g = self.cells
        if ch != 4 * g * g:
            raise RuntimeError("tiny decoder: bad channel count")
        cell = self.spatial // g
        colour = latent[:, : 3 * g * g].reshape(b, 3, g, g, frames, hl, wl)
        detail = latent[:, 3 * g * g :].reshape(b, 1, g, g, frames, hl, wl)
        # to: b, colour, frame, block row, cell row, 1, block col, cell col, side, 1
        colour = colour.permute(0, 1, 4, 5, 2, 6, 3).unsqueeze(5).unsqueeze(8).unsqueeze(9)
        detail = detail.permute(0, 1, 4, 5, 2, 6, 3).unsqueeze(5).unsqueeze(8).unsqueeze(9)
        sign = torch.tensor([1.0, -1.0], dtype=latent.dtype, device=latent.device)
        # The detail d is spread as ±d/3 on each colour so that the luma sum steps by ±d.
        step = detail * sign.reshape(2, 1) / 3.0
        blocks = (colour + step).expand(b, 3, frames, hl, g, cell, wl, g, 2, cell // 2)
        video = blocks.reshape(b, 3, frames, hl * self.spatial, wl * self.spatial)
        rest = video[:, :, 1:].repeat_interleave(self.temporal, dim=2)
        return torch.cat([video[:, :, :1], rest], dim=2)


def build_tiny_tokenizer(
    directory: str | Path,
    *,
    latent_channels: int = 16,
    spatial: int = SPATIAL_COMPRESSION,
    temporal: int = TEMPORAL_COMPRESSION,
    stat_frames: int = 16,
) -> Path:
    """Write the tiny "Haar cells" codec as ``encoder.jit``/``decoder.jit``/``mean_std.pt``.

    ``latent_channels`` must be 4·g² with ``spatial`` divisible by 2g. ``mean_std.pt`` holds
    ``(zeros, full(TINY_LATENT_STD))`` of shape [latent_channels, stat_frames], so any
    ``latent_chunk_frames ≤ stat_frames`` works. Returns ``directory``.
    """
    cells = math.isqrt(latent_channels // 4)
    if latent_channels != 4 * cells * cells or cells == 0 or spatial % (2 * cells):
        raise ValueError(
            f"latent_channels={latent_channels} must be 4·g² with spatial={spatial} divisible "
            "by 2g (e.g. 16 with spatial 8)"
        )
    if temporal < 1 or stat_frames < 1:
        raise ValueError("temporal and stat_frames must be >= 1")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    kwargs = {"cells": cells, "spatial": spatial, "temporal": temporal}
    with torchscript_deprecation_silenced():
        torch.jit.save(torch.jit.script(HaarCellEncoder(**kwargs)), str(root / ENCODER_FILE))
        torch.jit.save(torch.jit.script(HaarCellDecoder(**kwargs)), str(root / DECODER_FILE))
    mean = torch.zeros(latent_channels, stat_frames)
    std = torch.full((latent_channels, stat_frames), TINY_LATENT_STD)
    torch.save((mean, std), root / MEAN_STD_FILE)
    return root
