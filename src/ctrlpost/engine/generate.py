"""Generating one clip from its hint with the control model: the shared core of validation during
training and of ``ctrlpost verify --fidelity``.

A clip's inputs are what the training sample holds (frames, hint, T5 embedding, padding mask,
fps); the output is uint8 RGB frames of the same size. All randomness comes from a generator
seeded with ``(seed, clip index)`` on a stream of its own, so a clip's sample depends neither on
the training RNG, nor on which rank generates it, nor on the other clips.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ctrlpost.diffusion import (
    Denoiser,
    EDMConfig,
    SamplerConfig,
    latent_from_x0,
    sample,
    x0_from_latent,
)
from ctrlpost.engine.seeding import seeded_generator
from ctrlpost.models import ControlledDiT
from ctrlpost.models.tokenizer import VideoTokenizer

# Keeps generation seeds apart from the training and data streams even for equal seeds.
_GENERATION_STREAM = 0x5A3F1E


@dataclass(frozen=True)
class ClipInputs:
    """One clip as a training sample holds it (CPU tensors, no batch axis).

    Attributes:
        name: Clip stem.
        index: Clip index in its dataset (seeds the clip's noise).
        video_3_T_H_W: uint8 RGB frames fitted to the bucket.
        hint_C_T_H_W: uint8 hint frames, same grid.
        text_L_D: float32 T5 embedding, zero-padded.
        padding_mask_1_H_W: float32, 1 on reflection-padded pixels.
        fps: Frames per second of the clip.
        hint_draw: The hint generator's draw for this clip (re-applied to generated frames).
    """

    name: str
    index: int
    video_3_T_H_W: torch.Tensor
    hint_C_T_H_W: torch.Tensor
    text_L_D: torch.Tensor
    padding_mask_1_H_W: torch.Tensor
    fps: float
    hint_draw: Mapping[str, Any]

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any]) -> ClipInputs:
        """From a :class:`ctrlpost.data.dataset.ClipDataset` sample."""
        return cls(name=str(sample["name"]), index=int(sample["index"]),
                   video_3_T_H_W=sample["video"], hint_C_T_H_W=sample["hint"],
                   text_L_D=sample["t5"], padding_mask_1_H_W=sample["padding_mask"],
                   fps=float(sample["fps"]), hint_draw=dict(sample["hint_draw"]))


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How clips are generated.

    Attributes:
        edm: The EDM constants of training (σ_data, conditioning-frame handling).
        sampler: Solver, steps, σ range and guidance.
        condition_frames: Leading latent frames taken from the real clip.
        seed: Seed of the clips' noise.
        control_weight: Scale of the control residuals.
    """

    edm: EDMConfig
    sampler: SamplerConfig
    condition_frames: int = 0
    seed: int = 0
    control_weight: float = 1.0


def clip_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of clip ``index``: a pure function of ``(seed, index)``."""
    return seeded_generator([seed, index], device, stream=_GENERATION_STREAM)


def to_model_range(frames_C_T_H_W: torch.Tensor, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """uint8 frames → ``[1, C, T, H, W]`` in [−1, 1] on ``device``."""
    return frames_C_T_H_W[None].to(device).to(dtype) / 127.5 - 1.0


def to_uint8_frames(video_B_3_T_H_W: torch.Tensor) -> np.ndarray:
    """The first video of a decoded batch as uint8 RGB ``[T, H, W, 3]`` (clamped, rounded)."""
    pixels = ((video_B_3_T_H_W[0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def reconstruct(tokenizer: VideoTokenizer, clip: ClipInputs) -> np.ndarray:
    """The real clip through the tokenizer (encode, decode): the best any sample can look."""
    video = to_model_range(clip.video_3_T_H_W, tokenizer.device, tokenizer.dtype)
    return to_uint8_frames(tokenizer.decode(tokenizer.encode(video)))


@torch.no_grad()
def decoded_noise(tokenizer: VideoTokenizer, clip: ClipInputs, *, seed: int) -> np.ndarray:
    """The tokenizer's decode of unit Gaussian latents of the clip's latent shape: what a
    generator that ignores its inputs produces, the floor of a fidelity metric."""
    _, frames, height, width = clip.video_3_T_H_W.shape
    spatial = tokenizer.spatial_compression_factor
    shape = (1, tokenizer.latent_channels, tokenizer.latent_frames(frames), height // spatial,
             width // spatial)
    generator = clip_generator(seed, clip.index, torch.device("cpu"))
    latent = torch.randn(shape, generator=generator)
    return to_uint8_frames(tokenizer.decode(latent.to(tokenizer.device)))


@torch.no_grad()
def generate(model: ControlledDiT, tokenizer: VideoTokenizer, clip: ClipInputs, *,
             cfg: GenerationConfig, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Sample the clip from its hint (and text, and given frames) and decode it: uint8 RGB
    ``[T, H, W, 3]``.

    Collective under FSDP: every rank must call it the same number of times (the network call
    count depends only on ``cfg.sampler``, not on the clip).
    """
    sigma_data = cfg.edm.sigma_data
    hint_x0 = x0_from_latent(tokenizer.encode(to_model_range(clip.hint_C_T_H_W, device, dtype)),
                             sigma_data=sigma_data)
    given = None
    if cfg.condition_frames:
        video = to_model_range(clip.video_3_T_H_W, device, dtype)
        given = x0_from_latent(tokenizer.encode(video), sigma_data=sigma_data)
    text = clip.text_L_D[None].to(device, dtype)
    padding = clip.padding_mask_1_H_W[None].to(device, dtype)
    fps = torch.tensor([clip.fps], dtype=torch.float32, device=device)

    def network(text_B_L_D: torch.Tensor) -> Denoiser:
        def call(net_in: torch.Tensor, c_noise_B: torch.Tensor,
                 mask_B_1_T_H_W: torch.Tensor) -> torch.Tensor:
            return model(net_in, c_noise_B, text_B_L_D, hint_B_C_T_H_W=hint_x0,
                         condition_mask_B_1_T_H_W=mask_B_1_T_H_W, padding_mask_B_1_H_W=padding,
                         fps_B=fps, control_weight=cfg.control_weight)

        return call

    uncond = network(torch.zeros_like(text)) if cfg.sampler.guidance else None
    batch, channels, frames, height, width = hint_x0.shape
    x0 = sample(network(text), uncond_network=uncond,
                shape_B_C_T_H_W=(batch, channels, frames, height, width),
                edm=cfg.edm, sampler=cfg.sampler,
                generator=clip_generator(cfg.seed, clip.index, device),
                given_x0_B_C_T_H_W=given, n_given_frames=cfg.condition_frames, input_dtype=dtype)
    return to_uint8_frames(tokenizer.decode(latent_from_x0(x0, sigma_data=sigma_data)))
