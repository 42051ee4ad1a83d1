"""EDM (Karras et al. 2022) noise levels, preconditioning and loss weights.

The network ``F`` is wrapped into an x0 predictor
``x0_hat = c_skip(σ)·x_t + c_out(σ)·F(c_in(σ)·x_t, c_noise(σ))`` whose coefficients keep the
network's input and regression target at unit variance for every σ (docs/reference.md#edm).
All functions take σ as a per-sample tensor ``sigma_B`` and compute in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctrlpost.diffusion.config import EDMConfig


@dataclass(frozen=True)
class Preconditioning:
    """The four EDM coefficients for a batch of noise levels, each of shape [B]."""

    c_skip_B: torch.Tensor
    c_out_B: torch.Tensor
    c_in_B: torch.Tensor
    c_noise_B: torch.Tensor


def precondition(sigma_B: torch.Tensor, *, sigma_data: float) -> Preconditioning:
    """EDM coefficients: ``c_skip = σd²/(σ²+σd²)``, ``c_out = σσd/√(σ²+σd²)``,
    ``c_in = 1/√(σ²+σd²)``, ``c_noise = ¼·ln σ``."""
    sigma_B = sigma_B.to(torch.float32)
    total_var_B = sigma_B**2 + sigma_data**2
    return Preconditioning(
        c_skip_B=sigma_data**2 / total_var_B,
        c_out_B=sigma_B * sigma_data / total_var_B.sqrt(),
        c_in_B=total_var_B.rsqrt(),
        c_noise_B=0.25 * sigma_B.log(),
    )


def loss_weight(sigma_B: torch.Tensor, *, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ²+σd²)/(σ·σd)²: makes the x0 error equal to the unit-variance F error."""
    sigma_B = sigma_B.to(torch.float32)
    return (sigma_B**2 + sigma_data**2) / (sigma_B * sigma_data) ** 2


def sample_sigma(
    batch: int, latent_frames: int, cfg: EDMConfig, generator: torch.Generator
) -> torch.Tensor:
    """Training noise levels, one per sample: ``σ = exp(N(p_mean, p_std))·√T`` (float32, [B]).

    Drawn on ``generator.device``; the √T factor applies when ``cfg.adjust_video_noise``.
    """
    normal_B = torch.randn(batch, generator=generator, device=generator.device)
    log_sigma_B = cfg.p_mean + cfg.p_std * normal_B
    return log_sigma_B.exp() * cfg.video_noise_multiplier(latent_frames)


def expand_B(values_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-sample vector [B] so that it broadcasts against ``like`` [B, ...]."""
    return values_B.reshape(values_B.shape[0], *([1] * (like.ndim - 1)))


def denoised(x_t: torch.Tensor, net_out: torch.Tensor, coeffs: Preconditioning) -> torch.Tensor:
    """The x0 prediction ``c_skip·x_t + c_out·F`` from the network output F ([B, ...], float32)."""
    c_skip = expand_B(coeffs.c_skip_B, x_t)
    c_out = expand_B(coeffs.c_out_B, x_t)
    return c_skip * x_t.float() + c_out * net_out.float()


def ideal_network_output(
    x0: torch.Tensor, x_t: torch.Tensor, coeffs: Preconditioning
) -> torch.Tensor:
    """The regression target of F: ``(x0 − c_skip·x_t)/c_out``, for which ``denoised`` is x0."""
    c_skip = expand_B(coeffs.c_skip_B, x_t)
    c_out = expand_B(coeffs.c_out_B, x_t)
    return (x0.float() - c_skip * x_t.float()) / c_out


def x0_from_latent(latent: torch.Tensor, *, sigma_data: float) -> torch.Tensor:
    """Diffusion-space x0 from a tokenizer latent (unit-variance per channel/frame) × σ_data.

    The tokenizer normalises to unit variance; EDM's preconditioning assumes data of std σ_data.
    Apply this to the video latent and to the hint latent alike.
    """
    return latent * sigma_data


def latent_from_x0(x0: torch.Tensor, *, sigma_data: float) -> torch.Tensor:
    """Inverse of ``x0_from_latent``: the latent to hand to the tokenizer's decoder."""
    return x0 / sigma_data
