"""The ControlNet post-training loss: EDM denoising with leading-frame conditioning.

``training_loss`` wraps any denoiser callable ``F(net_in, c_noise, condition_mask)``; the engine
binds text, hint and padding mask through a closure, so this module knows nothing about the
network. Every random number comes from an explicit ``torch.Generator`` (``draw_noise``) or is
passed in as ``NoiseDraws``, so a step is reproducible and a test can be closed-form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ctrlpost.diffusion.conditioning import (
    condition_mask,
    condition_network_input,
    sample_augment_sigma,
    sample_num_condition_frames,
)
from ctrlpost.diffusion.config import EDMConfig
from ctrlpost.diffusion.edm import denoised, expand_B, loss_weight, precondition, sample_sigma

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``F(net_in_B_C_T_H_W, c_noise_B, condition_mask_B_1_T_H_W) -> F_B_C_T_H_W``: the raw network,
fed the already c_in-scaled input."""


@dataclass(frozen=True)
class NoiseDraws:
    """All the randomness of one loss evaluation.

    Attributes:
        sigma_B: Noise level per sample (already × √T when the config asks for it).
        epsilon_B_C_T_H_W: Standard normal noise of the clip.
        n_condition_frames: Leading latent frames given as conditioning (same for the batch).
        augment_sigma_B: Noise level of the conditioning frames per sample.
        augment_epsilon_B_C_N_H_W: Standard normal noise of the first N ≥ n_condition_frames
            latent frames, used on the conditioning frames.
    """

    sigma_B: torch.Tensor
    epsilon_B_C_T_H_W: torch.Tensor
    n_condition_frames: int
    augment_sigma_B: torch.Tensor
    augment_epsilon_B_C_N_H_W: torch.Tensor


def draw_noise(
    shape_B_C_T_H_W: tuple[int, int, int, int, int], cfg: EDMConfig, generator: torch.Generator
) -> NoiseDraws:
    """Draw everything ``training_loss`` needs, in a fixed order, on ``generator.device``.

    The conditioning noise is always drawn for ``condition_frames_max`` frames, so the
    generator advances by the same amount whatever ``n`` comes out: resuming from a saved
    generator state replays the same stream.
    """
    batch, channels, frames, height, width = shape_B_C_T_H_W
    if cfg.condition_frames_max > frames:
        raise ValueError(
            f"condition_frames_max={cfg.condition_frames_max} exceeds the {frames} latent frames"
        )
    device = generator.device
    sigma_B = sample_sigma(batch, frames, cfg, generator)
    epsilon = torch.randn(shape_B_C_T_H_W, generator=generator, device=device)
    n_frames = sample_num_condition_frames(cfg, generator)
    augment_sigma_B = sample_augment_sigma(batch, cfg, generator)
    augment_shape = (batch, channels, cfg.condition_frames_max, height, width)
    augment_epsilon = torch.randn(augment_shape, generator=generator, device=device)
    return NoiseDraws(sigma_B, epsilon, n_frames, augment_sigma_B, augment_epsilon)


@dataclass(frozen=True)
class LossOutput:
    """The scalar loss and what is worth logging about it.

    Attributes:
        loss: Mean over every element of B×C×T×H×W of ``λ·(x0̂−x0)²·e^(−u) + u``
            (``λ·(x0̂−x0)²`` without logvar); carries the graph.
        sigma_B: Noise level per sample.
        mse_B: Unweighted mean squared x0 error per sample (conditioning frames count as 0).
        logvar_B: The uncertainty u(σ) per sample (zeros when logvar is off).
        n_condition_frames: Leading latent frames that were given as conditioning.
    """

    loss: torch.Tensor
    sigma_B: torch.Tensor
    mse_B: torch.Tensor
    logvar_B: torch.Tensor
    n_condition_frames: int


def training_loss(
    denoiser: Denoiser,
    x0_B_C_T_H_W: torch.Tensor,
    *,
    cfg: EDMConfig,
    uncertainty: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    draws: NoiseDraws | None = None,
    input_dtype: torch.dtype | None = None,
) -> LossOutput:
    """One evaluation of the post-training objective on clean latents ``x0`` (already × σ_data).

    Pass exactly one of ``generator`` (noise drawn by ``draw_noise``) and ``draws``.
    ``uncertainty`` maps ``c_noise_B`` to ``u_B`` (an ``UncertaintyHead``) and is required when
    ``cfg.loss_add_logvar``. The network input and condition mask are cast to ``input_dtype``
    (default: the dtype of ``x0``); the EDM arithmetic itself runs in float32.
    """
    draws = _resolve_draws(x0_B_C_T_H_W, cfg=cfg, generator=generator, draws=draws)
    if cfg.loss_add_logvar and uncertainty is None:
        raise ValueError("cfg.loss_add_logvar is on: pass uncertainty= (the logvar head)")
    batch, _, frames, height, width = x0_B_C_T_H_W.shape
    device = x0_B_C_T_H_W.device

    x0 = x0_B_C_T_H_W.float()
    sigma_B = draws.sigma_B.to(device, torch.float32)
    coeffs = precondition(sigma_B, sigma_data=cfg.sigma_data)
    x_t = x0 + expand_B(sigma_B, x0) * draws.epsilon_B_C_T_H_W.to(device, torch.float32)
    n_frames = draws.n_condition_frames
    mask_B_1_T_H_W = condition_mask(
        n_frames, batch=batch, frames=frames, height=height, width=width, device=device
    )
    net_in = condition_network_input(
        x0_B_C_T_H_W=x0,
        x_t_B_C_T_H_W=x_t,
        c_in_B=coeffs.c_in_B,
        n_frames=n_frames,
        augment_sigma_B=draws.augment_sigma_B.to(device),
        augment_epsilon_B_C_N_H_W=draws.augment_epsilon_B_C_N_H_W.to(device),
        sigma_data=cfg.sigma_data,
    )
    input_dtype = input_dtype or x0_B_C_T_H_W.dtype
    net_out = denoiser(net_in.to(input_dtype), coeffs.c_noise_B, mask_B_1_T_H_W.to(input_dtype))

    x0_hat = denoised(x_t, net_out, coeffs)
    # Conditioning frames are given, not predicted: their error is exactly 0, yet they stay in
    # the mean's denominator, as in the reference (compute_loss_for_condition_region=False).
    x0_hat = torch.cat([x0[:, :, :n_frames], x0_hat[:, :, n_frames:]], dim=2)
    sq_err = (x0_hat - x0) ** 2
    weighted = expand_B(loss_weight(sigma_B, sigma_data=cfg.sigma_data), sq_err) * sq_err
    if uncertainty is not None and cfg.loss_add_logvar:
        logvar_B = uncertainty(coeffs.c_noise_B).float().reshape(batch)
        logvar = expand_B(logvar_B, weighted)
        weighted = weighted * torch.exp(-logvar) + logvar
    else:
        logvar_B = torch.zeros_like(sigma_B)
    return LossOutput(
        loss=weighted.mean(),
        sigma_B=sigma_B.detach(),
        mse_B=sq_err.detach().mean(dim=(1, 2, 3, 4)),
        logvar_B=logvar_B.detach(),
        n_condition_frames=n_frames,
    )


def _resolve_draws(
    x0_B_C_T_H_W: torch.Tensor,
    *,
    cfg: EDMConfig,
    generator: torch.Generator | None,
    draws: NoiseDraws | None,
) -> NoiseDraws:
    if (generator is None) == (draws is None):
        raise ValueError("pass exactly one of generator= and draws=")
    if draws is None:
        assert generator is not None
        batch, channels, frames, height, width = x0_B_C_T_H_W.shape
        return draw_noise((batch, channels, frames, height, width), cfg, generator)
    if draws.epsilon_B_C_T_H_W.shape != x0_B_C_T_H_W.shape:
        raise ValueError(
            f"draws are for shape {tuple(draws.epsilon_B_C_T_H_W.shape)}, "
            f"x0 is {tuple(x0_B_C_T_H_W.shape)}"
        )
    return draws
