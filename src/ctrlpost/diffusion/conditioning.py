"""Conditioning of the EDM objective: leading clean frames ("lvg") and text-embedding dropout.

Video-to-world training gives the network the first ``n`` latent frames (lightly noised) and
asks it to denoise the rest; ``n`` is drawn once per batch. Classifier-free guidance needs the
network to also work without text, so each sample's T5 embedding is zeroed with a fixed
probability. See docs/reference.md#conditioning.
"""

from __future__ import annotations

import torch

from ctrlpost.diffusion.config import EDMConfig
from ctrlpost.diffusion.edm import expand_B


def sample_num_condition_frames(cfg: EDMConfig, generator: torch.Generator) -> int:
    """Number of conditioning latent frames, uniform in ``{min..max}`` — one draw per batch."""
    low, high = cfg.condition_frames_min, cfg.condition_frames_max
    draw = torch.randint(low, high + 1, (1,), generator=generator, device=generator.device)
    return int(draw.item())


def sample_augment_sigma(batch: int, cfg: EDMConfig, generator: torch.Generator) -> torch.Tensor:
    """Noise level of the conditioning frames, per sample:
    ``σ_aug = exp(N(augment_sigma_p_mean, augment_sigma_p_std))·augment_sigma_multiplier``.

    The mostly small noise (median e^−3 ≈ 0.05) teaches the network not to trust the given
    frames pixel for pixel, so it copes with imperfect ones, such as its own earlier output
    when a video is extended chunk by chunk.
    """
    normal_B = torch.randn(batch, generator=generator, device=generator.device)
    log_sigma_B = cfg.augment_sigma_p_mean + cfg.augment_sigma_p_std * normal_B
    return log_sigma_B.exp() * cfg.augment_sigma_multiplier


def condition_mask(
    n_frames: int, *, batch: int, frames: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """The 0/1 mask [B, 1, T, H, W] (float32) that is 1 on the first ``n_frames`` latent frames."""
    if not 0 <= n_frames <= frames:
        raise ValueError(f"cannot condition on {n_frames} of {frames} latent frames")
    mask_T = (torch.arange(frames, device=device) < n_frames).to(torch.float32)
    return mask_T.reshape(1, 1, frames, 1, 1).expand(batch, 1, frames, height, width).contiguous()


def condition_network_input(
    *,
    x0_B_C_T_H_W: torch.Tensor,
    x_t_B_C_T_H_W: torch.Tensor,
    c_in_B: torch.Tensor,
    n_frames: int,
    augment_sigma_B: torch.Tensor,
    augment_epsilon_B_C_N_H_W: torch.Tensor,
    sigma_data: float,
) -> torch.Tensor:
    """The c_in-scaled network input: ``c_in(σ_aug)·x_cond`` on the first ``n_frames`` latent
    frames, ``c_in(σ)·x_t`` on the others (float32, [B, C, T, H, W]).

    ``x_cond = x0 + σ_aug·ε'``. Scaling the conditioning frames by their own ``c_in(σ_aug)``
    (the reference's ``x_cond·c_in(σ_aug)/c_in(σ)`` followed by the network's ``c_in(σ)``) keeps
    them at unit variance whatever σ the rest of the clip has. ``augment_epsilon`` ε' may cover
    more leading frames than ``n_frames`` (it is drawn for the largest n); only the first
    ``n_frames`` are used.
    """
    if augment_epsilon_B_C_N_H_W.shape[2] < n_frames:
        raise ValueError(
            f"augment noise covers {augment_epsilon_B_C_N_H_W.shape[2]} frames, "
            f"fewer than the {n_frames} conditioning frames"
        )
    net_in_B_C_T_H_W = expand_B(c_in_B.float(), x_t_B_C_T_H_W) * x_t_B_C_T_H_W.float()
    if n_frames == 0:
        return net_in_B_C_T_H_W
    x0_B_C_N_H_W = x0_B_C_T_H_W[:, :, :n_frames].float()
    sigma_aug = expand_B(augment_sigma_B.float(), x0_B_C_N_H_W)
    x_cond_B_C_N_H_W = x0_B_C_N_H_W + sigma_aug * augment_epsilon_B_C_N_H_W[:, :, :n_frames].float()
    c_in_aug = (sigma_aug**2 + sigma_data**2).rsqrt()
    return torch.cat([c_in_aug * x_cond_B_C_N_H_W, net_in_B_C_T_H_W[:, :, n_frames:]], dim=2)


def sample_text_keep(batch: int, *, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample bool [B]: True where the text embedding is kept (probability ``1 − rate``)."""
    return torch.rand(batch, generator=generator, device=generator.device) >= rate


def apply_text_dropout(
    text_B_L_D: torch.Tensor, *, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Zero whole samples of a T5 embedding [B, L, D] with probability ``rate`` each.

    The attention mask is deliberately left alone, as in the reference: the dropped sample
    still attends to L zero vectors, which is the "empty prompt" the model is guided away from.
    """
    keep_B = sample_text_keep(text_B_L_D.shape[0], rate=rate, generator=generator)
    keep_B_1_1 = keep_B.to(text_B_L_D.device).reshape(-1, 1, 1)
    return torch.where(keep_B_1_1, text_B_L_D, torch.zeros_like(text_B_L_D))
