"""The logvar head: released-checkpoint keys, formula, frozen by default."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlpost.diffusion import FourierFeatures, UncertaintyHead


def test_state_dict_matches_released_logvar_keys_and_shapes() -> None:
    head = UncertaintyHead()
    shapes = {key: tuple(value.shape) for key, value in head.state_dict().items()}
    assert shapes == {"0.freqs": (128,), "0.phases": (128,), "1.weight": (1, 128)}
    released = {
        f"logvar.{key}": value.clone() for key, value in UncertaintyHead().state_dict().items()
    }
    head.load_state_dict({k.removeprefix("logvar."): v for k, v in released.items()}, strict=True)
    assert torch.equal(head.features.freqs, released["logvar.0.freqs"])


def test_head_is_frozen_unless_asked() -> None:
    assert not any(p.requires_grad for p in UncertaintyHead().parameters())
    assert all(p.requires_grad for p in UncertaintyHead(trainable=True).parameters())
    assert [name for name, _ in UncertaintyHead().named_buffers()] == ["0.freqs", "0.phases"]


def test_fourier_features_formula_and_random_init() -> None:
    features = FourierFeatures(4096, generator=torch.Generator().manual_seed(0))
    assert features.freqs.std().item() / (2 * math.pi) == pytest.approx(1.0, rel=0.05)
    assert features.phases.min().item() >= 0 and features.phases.max().item() < 2 * math.pi
    x_B = torch.tensor([-1.0, 0.0, 0.3])
    expected = torch.cos(x_B[:, None] * features.freqs[None] + features.phases[None]) * math.sqrt(2)
    torch.testing.assert_close(features(x_B), expected)
    plain = FourierFeatures(8, normalize=False)
    torch.testing.assert_close(plain(x_B), torch.cos(torch.outer(x_B, plain.freqs) + plain.phases))


def test_head_output_is_linear_of_features() -> None:
    head = UncertaintyHead(generator=torch.Generator().manual_seed(1))
    c_noise_B = torch.tensor([-0.5, 0.1, 0.9])
    features = math.sqrt(2) * torch.cos(
        torch.outer(c_noise_B, head.features.freqs) + head.features.phases
    )
    expected_B = (features @ head.linear.weight.t()).squeeze(1)
    u_B = head(c_noise_B)
    assert u_B.shape == (3,)
    torch.testing.assert_close(u_B, expected_B)


def test_bf16_head_still_computes_in_float32() -> None:
    head = UncertaintyHead(generator=torch.Generator().manual_seed(2))
    reference = head(torch.tensor([0.2]))
    head_bf16 = UncertaintyHead(generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    head_bf16.features.freqs = (
        head.features.freqs.clone()
    )  # keep the exact frequencies, as a checkpoint would
    head_bf16.features.phases = head.features.phases.clone()
    out = head_bf16(torch.tensor([0.2]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0.02)
