"""Leading-frame ("lvg") conditioning and text-embedding dropout."""

from __future__ import annotations

import pytest
import torch

from ctrlpost.diffusion import (
    EDMConfig,
    apply_text_dropout,
    condition_mask,
    condition_network_input,
    precondition,
    sample_augment_sigma,
    sample_num_condition_frames,
    sample_text_keep,
)


def test_number_of_condition_frames_is_uniform_over_0_1_2() -> None:
    cfg = EDMConfig()
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_num_condition_frames(cfg, gen) for _ in range(30_000)])
    counts = torch.bincount(draws, minlength=3).double() / draws.numel()
    assert draws.min().item() == 0 and draws.max().item() == 2
    torch.testing.assert_close(
        counts, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0
    )


def test_number_of_condition_frames_respects_custom_bounds() -> None:
    cfg = EDMConfig(condition_frames_min=1, condition_frames_max=1)
    gen = torch.Generator().manual_seed(0)
    assert {sample_num_condition_frames(cfg, gen) for _ in range(50)} == {1}


@pytest.mark.parametrize("n_frames", [0, 1, 2])
def test_condition_mask_marks_the_first_n_latent_frames(n_frames: int) -> None:
    mask = condition_mask(
        n_frames, batch=2, frames=4, height=3, width=5, device=torch.device("cpu")
    )
    assert mask.shape == (2, 1, 4, 3, 5)
    assert mask.dtype == torch.float32
    assert torch.all(mask[:, :, :n_frames] == 1)
    assert torch.all(mask[:, :, n_frames:] == 0)


def test_condition_mask_rejects_more_frames_than_the_clip() -> None:
    with pytest.raises(ValueError, match="3 of 2"):
        condition_mask(3, batch=1, frames=2, height=1, width=1, device=torch.device("cpu"))


def test_augment_sigma_is_lognormal_minus_3_std_2() -> None:
    cfg = EDMConfig()
    log_sigma = sample_augment_sigma(200_000, cfg, torch.Generator().manual_seed(1)).double().log()
    assert log_sigma.mean().item() == pytest.approx(-3.0, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(2.0, abs=0.02)
    doubled = sample_augment_sigma(
        4, EDMConfig(augment_sigma_multiplier=2.0), torch.Generator().manual_seed(5)
    )
    single = sample_augment_sigma(4, cfg, torch.Generator().manual_seed(5))
    torch.testing.assert_close(doubled, 2 * single)


def _inputs(n_frames: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    sigma_B = torch.tensor([0.3, 9.0])
    x0 = 0.5 * torch.randn(2, 3, 4, 2, 2, generator=gen)
    x_t = x0 + sigma_B.reshape(2, 1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
    return {
        "x0": x0,
        "x_t": x_t,
        "sigma_B": sigma_B,
        "augment_sigma_B": torch.tensor([0.05, 0.2]),
        "augment_eps": torch.randn(2, 3, 2, 2, 2, generator=gen),
    }


@pytest.mark.parametrize("n_frames", [0, 1, 2])
def test_network_input_rescales_conditioning_frames_by_c_in_of_augment_sigma(n_frames: int) -> None:
    t = _inputs(n_frames)
    c_in_B = precondition(t["sigma_B"], sigma_data=0.5).c_in_B
    net_in = condition_network_input(
        x0_B_C_T_H_W=t["x0"],
        x_t_B_C_T_H_W=t["x_t"],
        c_in_B=c_in_B,
        n_frames=n_frames,
        augment_sigma_B=t["augment_sigma_B"],
        augment_epsilon_B_C_N_H_W=t["augment_eps"],
        sigma_data=0.5,
    )
    c_in = c_in_B.reshape(2, 1, 1, 1, 1)
    sigma_aug = t["augment_sigma_B"].reshape(2, 1, 1, 1, 1)
    c_in_aug = 1 / torch.sqrt(sigma_aug**2 + 0.25)
    x_cond = t["x0"][:, :, :n_frames] + sigma_aug * t["augment_eps"][:, :, :n_frames]
    # The reference's form: x_cond·c_in(σ_aug)/c_in(σ), then the network's own c_in(σ).
    reference_form = (x_cond * c_in_aug / c_in) * c_in
    assert net_in.shape == t["x0"].shape
    torch.testing.assert_close(net_in[:, :, :n_frames], reference_form, rtol=1e-6, atol=0)
    torch.testing.assert_close(net_in[:, :, :n_frames], c_in_aug * x_cond, rtol=0, atol=0)
    torch.testing.assert_close(
        net_in[:, :, n_frames:], c_in * t["x_t"][:, :, n_frames:], rtol=0, atol=0
    )


def test_network_input_needs_enough_augment_noise() -> None:
    t = _inputs(2)
    with pytest.raises(ValueError, match="fewer than the 3"):
        condition_network_input(
            x0_B_C_T_H_W=t["x0"],
            x_t_B_C_T_H_W=t["x_t"],
            c_in_B=torch.ones(2),
            n_frames=3,
            augment_sigma_B=t["augment_sigma_B"],
            augment_epsilon_B_C_N_H_W=t["augment_eps"],
            sigma_data=0.5,
        )


def test_text_dropout_zeroes_whole_samples_at_rate_0_2() -> None:
    gen = torch.Generator().manual_seed(11)
    text = torch.randn(100_000, 3, 4, generator=gen) + 10.0  # no accidental zeros
    dropped = apply_text_dropout(text, rate=0.2, generator=gen)
    zero_B = (dropped == 0).flatten(1)
    whole_B = zero_B.all(1)
    assert torch.equal(zero_B.any(1), whole_B)  # a sample is zeroed entirely or not at all
    assert whole_B.double().mean().item() == pytest.approx(0.2, abs=0.005)
    assert torch.equal(dropped[~whole_B], text[~whole_B])
    assert dropped.dtype == text.dtype


def test_text_dropout_is_reproducible_and_matches_keep_mask() -> None:
    text = torch.randn(64, 2, 3, dtype=torch.bfloat16) + 5
    dropped = apply_text_dropout(text, rate=0.5, generator=torch.Generator().manual_seed(3))
    keep_B = sample_text_keep(64, rate=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(dropped != 0, keep_B.reshape(64, 1, 1).expand_as(text))
    assert torch.equal(apply_text_dropout(text, rate=0.0, generator=torch.Generator()), text)
    assert not apply_text_dropout(text, rate=1.0, generator=torch.Generator()).any()
