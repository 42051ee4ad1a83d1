"""EDM coefficients, loss weight and σ sampling against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlpost.diffusion import (
    EDMConfig,
    denoised,
    ideal_network_output,
    latent_from_x0,
    loss_weight,
    precondition,
    sample_sigma,
    x0_from_latent,
)

SIGMAS = [0.002, 0.1, 0.5, 1.0, 4.0, 80.0]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_preconditioning_matches_the_edm_formulas(sigma: float) -> None:
    sd = 0.5
    coeffs = precondition(torch.tensor([sigma], dtype=torch.float64), sigma_data=sd)
    assert coeffs.c_skip_B.item() == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-6)
    assert coeffs.c_out_B.item() == pytest.approx(
        sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-6
    )
    assert coeffs.c_in_B.item() == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-6)
    assert coeffs.c_noise_B.item() == pytest.approx(0.25 * math.log(sigma), rel=1e-6, abs=1e-7)
    assert coeffs.c_in_B.dtype == torch.float32


@pytest.mark.parametrize("sigma", SIGMAS)
def test_loss_weight_matches_formula(sigma: float) -> None:
    weight = loss_weight(torch.tensor([sigma]), sigma_data=0.5).item()
    assert weight == pytest.approx((sigma**2 + 0.25) / (sigma * 0.5) ** 2, rel=1e-6)


def test_loss_weight_is_inverse_square_of_c_out() -> None:
    # λ·c_out² = 1: the weighted x0 error equals the unweighted error of F.
    sigma_B = torch.tensor(SIGMAS)
    product = (
        loss_weight(sigma_B, sigma_data=0.5) * precondition(sigma_B, sigma_data=0.5).c_out_B ** 2
    )
    torch.testing.assert_close(product, torch.ones_like(product))


def test_ideal_network_output_reproduces_x0() -> None:
    gen = torch.Generator().manual_seed(0)
    sigma_B = torch.tensor([0.01, 0.7, 30.0])
    x0 = torch.randn(3, 4, 2, 5, 5, generator=gen) * 0.5
    x_t = x0 + sigma_B.reshape(3, 1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
    coeffs = precondition(sigma_B, sigma_data=0.5)
    x0_hat = denoised(x_t, ideal_network_output(x0, x_t, coeffs), coeffs)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5)


def test_sigma_distribution_is_lognormal_times_sqrt_frames() -> None:
    cfg = EDMConfig()
    sigma_B = sample_sigma(200_000, 16, cfg, torch.Generator().manual_seed(1))
    log_sigma = sigma_B.double().log()
    assert sigma_B.shape == (200_000,)
    assert log_sigma.mean().item() == pytest.approx(cfg.p_mean + math.log(4.0), abs=0.01)
    assert log_sigma.std().item() == pytest.approx(cfg.p_std, abs=0.01)


def test_sigma_without_video_adjustment_and_custom_moments() -> None:
    cfg = EDMConfig(adjust_video_noise=False, p_mean=-1.2, p_std=1.6)
    log_sigma = sample_sigma(200_000, 16, cfg, torch.Generator().manual_seed(2)).double().log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.015)
    assert log_sigma.std().item() == pytest.approx(1.6, abs=0.015)


def test_sigma_draws_are_reproducible_from_the_generator() -> None:
    cfg = EDMConfig()
    first = sample_sigma(8, 16, cfg, torch.Generator().manual_seed(3))
    again = sample_sigma(8, 16, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_latent_scaling_by_sigma_data_round_trips() -> None:
    latent = torch.randn(2, 16, 3, 4, 4)
    x0 = x0_from_latent(latent, sigma_data=0.5)
    torch.testing.assert_close(x0, 0.5 * latent)
    torch.testing.assert_close(latent_from_x0(x0, sigma_data=0.5), latent)


def test_config_defaults_are_the_reference_values() -> None:
    cfg = EDMConfig()
    assert (cfg.sigma_data, cfg.p_mean, cfg.p_std, cfg.adjust_video_noise) == (0.5, 0.0, 1.0, True)
    assert (cfg.sigma_min, cfg.sigma_max) == (0.0002, 80.0)
    assert (cfg.condition_frames_min, cfg.condition_frames_max) == (0, 2)
    assert (cfg.augment_sigma_p_mean, cfg.augment_sigma_p_std) == (-3.0, 2.0)
    assert (cfg.augment_sigma_multiplier, cfg.text_dropout, cfg.loss_add_logvar) == (1.0, 0.2, True)
    assert cfg.video_noise_multiplier(16) == 4.0


def test_config_rejects_every_bad_value_at_once() -> None:
    with pytest.raises(ValueError, match=r"sigma_data.*text_dropout") as info:
        EDMConfig(sigma_data=0.0, text_dropout=1.5)
    assert "condition_frames" not in str(info.value)
    with pytest.raises(ValueError, match="condition_frames_min"):
        EDMConfig(condition_frames_min=3, condition_frames_max=2)
    with pytest.raises(TypeError):
        EDMConfig(0.5)  # type: ignore[misc]  # keyword-only
