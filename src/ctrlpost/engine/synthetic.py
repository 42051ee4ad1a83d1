"""Random latent batches of a job's geometry: `train --synthetic` (benchmarks) needs no data,
no tokenizer and no checkpoint files."""

from __future__ import annotations

from typing import Any

import torch

from ctrlpost.diffusion import x0_from_latent
from ctrlpost.engine.seeding import seeded_generator

_SYNTHETIC_STREAM = 0x5EED  # keeps synthetic clips apart from the trainer's noise draws


class SyntheticLatents:
    """Endless random latent batches of shape ``latent_B_C_T_H_W`` with text of shape
    ``text_B_L_D``.

    Micro-batch ``k`` of optimizer step ``s`` on rank ``r`` of ``W`` is drawn from a generator
    seeded with ``(seed, s, k·W + r)`` on a stream of its own, like the trainer's noise: a
    resumed run draws what the uninterrupted one drew, and the same global batch on another
    world size (with ``grad_accum_steps`` making up the difference) holds the same clips.
    """

    def __init__(self, *, latent_B_C_T_H_W: tuple[int, int, int, int, int],
                 text_B_L_D: tuple[int, int, int], spatial_compression: int, sigma_data: float,
                 seed: int, grad_accum_steps: int, rank: int, world_size: int,
                 device: torch.device, dtype: torch.dtype, start_step: int) -> None:
        self.shape, self.text_shape = latent_B_C_T_H_W, text_B_L_D
        self.spatial_compression = spatial_compression
        self.device, self.dtype = device, dtype
        self.sigma_data = sigma_data
        self.seed, self.accum = seed, grad_accum_steps
        self.rank, self.world = rank, world_size
        self.start_step, self.drawn = start_step, 0

    def __iter__(self) -> SyntheticLatents:
        return self

    def __next__(self) -> dict[str, Any]:
        step, micro = divmod(self.drawn, self.accum)
        self.drawn += 1
        generator = seeded_generator(
            [self.seed, self.start_step + step, micro * self.world + self.rank], self.device,
            stream=_SYNTHETIC_STREAM)

        def normal(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=self.device)

        B, _, _, H, W = self.shape
        pixels = (B, 1, H * self.spatial_compression, W * self.spatial_compression)
        return {
            "x0": x0_from_latent(normal(self.shape), sigma_data=self.sigma_data).to(self.dtype),
            "hint": x0_from_latent(normal(self.shape), sigma_data=self.sigma_data).to(self.dtype),
            "t5": normal(self.text_shape).to(self.dtype),
            "padding_mask": torch.zeros(pixels, device=self.device, dtype=self.dtype),
            "fps": torch.full((B,), 24.0, device=self.device),
        }
