"""Base DiT and base+control forward: exact zero-control identity, pinned numbers, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlpost.models import ControlledDiT, build_controlled_dit, get_flavor

FLAVOR = get_flavor("tiny")
B, C, T, H, W = 1, 16, 2, 8, 8


@torch.no_grad()
def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter a seeded, non-degenerate value (the reference init zeroes gates)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(module.named_parameters()):
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 2:
            param.copy_(noise / math.sqrt(param.shape[1]))
        elif name.endswith("weight"):  # RMSNorm gains
            param.copy_(1 + 0.1 * noise)
        else:
            param.copy_(0.1 * noise)


def build(*, seed: int = 0, randomise: bool = False) -> ControlledDiT:
    torch.manual_seed(seed)
    model = build_controlled_dit(FLAVOR)
    model.init_weights()
    if randomise:
        randomise_(model, seed)
    return model


def inputs(batch: int = B, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    condition = torch.zeros(batch, 1, T, H, W)
    condition[:, :, 0] = 1
    padding = torch.zeros(batch, 1, 8 * H, 8 * W)
    padding[..., -8:] = 1  # the last latent column is padding
    return {
        "x_B_C_T_H_W": torch.randn(batch, C, T, H, W, generator=generator),
        "c_noise": torch.randn(batch, generator=generator),
        "text_B_M_C": torch.randn(
            batch, FLAVOR.base.text_tokens, FLAVOR.base.text_dim, generator=generator
        ),
        "hint_B_C_T_H_W": torch.randn(batch, C, T, H, W, generator=generator),
        "condition_mask_B_1_T_H_W": condition,
        "padding_mask_B_1_H_W": padding,
        "fps_B": torch.full((batch,), 30.0),
    }


def base_only(model: ControlledDiT, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    kwargs = {k: v for k, v in batch.items() if k != "hint_B_C_T_H_W"}
    x, c_noise, text = kwargs.pop("x_B_C_T_H_W"), kwargs.pop("c_noise"), kwargs.pop("text_B_M_C")
    return model.base(x, c_noise, text, **kwargs)


def run(model: ControlledDiT, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    kwargs = dict(batch)
    x, c_noise, text = kwargs.pop("x_B_C_T_H_W"), kwargs.pop("c_noise"), kwargs.pop("text_B_M_C")
    return model(x, c_noise, text, **kwargs)


def test_fresh_control_branch_leaves_the_base_output_unchanged() -> None:
    model = build()
    randomise_(model.base, 3)  # a "pretrained" base; the branch keeps its zero init
    batch = inputs()
    with torch.no_grad():
        out = run(model, batch)
        reference = base_only(model, batch)
    assert out.shape == (B, C, T, H, W)
    assert torch.any(reference != 0)
    assert torch.equal(out, reference)


# Computed once with this code (torch 2.13 CPU, float32); a change here must be deliberate.
GOLDEN_SUM = 304.2252197265625
GOLDEN_ABS_MEAN = 1.258583903312683
GOLDEN_VALUES = {
    (0, 0, 0, 0, 0): 0.5705732703208923,
    (0, 3, 1, 2, 5): 2.0521368980407715,
    (0, 7, 0, 7, 7): 1.189106822013855,
    (0, 15, 1, 4, 1): -2.461197853088379,
}


def test_golden_output_of_the_tiny_flavor() -> None:
    model = build(randomise=True)
    with torch.no_grad():
        out = run(model, inputs())
    assert out.dtype == torch.float32
    assert out.sum().item() == pytest.approx(GOLDEN_SUM, rel=1e-5, abs=1e-4)
    assert out.abs().mean().item() == pytest.approx(GOLDEN_ABS_MEAN, rel=1e-5)
    for index, value in GOLDEN_VALUES.items():
        assert out[index].item() == pytest.approx(value, rel=1e-5, abs=1e-5), index


def test_control_residuals_change_the_output() -> None:
    model = build(randomise=True)
    batch = inputs()
    with torch.no_grad():
        assert not torch.allclose(run(model, batch), base_only(model, batch))
        muted = run(model, batch | {"control_weight": 0.0})
    torch.testing.assert_close(muted, base_only(model, batch))


def test_gradients_reach_only_the_control_branch() -> None:
    model = build()
    randomise_(model.base, 3)
    model.base.requires_grad_(False)
    run(model, inputs()).square().mean().backward()
    assert all(p.grad is None for p in model.base.parameters())
    for name, param in model.control.zero_blocks.named_parameters():
        assert param.grad is not None and torch.any(param.grad != 0), name


def test_every_used_control_parameter_gets_a_gradient() -> None:
    model = build(randomise=True)
    model.base.requires_grad_(False)
    run(model, inputs()).square().mean().backward()
    for name, param in model.control.named_parameters():
        if name.startswith("final_layer."):  # built but unused, as in the reference
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.any(param.grad != 0), name


def test_samples_of_a_batch_are_independent() -> None:
    model = build(randomise=True)
    pair = inputs(batch=2)
    with torch.no_grad():
        together = run(model, pair)
        for i in range(2):
            alone = run(model, {k: v[i : i + 1] for k, v in pair.items()})
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_noise_input_may_be_per_sample_or_per_frame() -> None:
    model = build(randomise=True)
    batch = inputs()
    with torch.no_grad():
        per_sample = run(model, batch)
        for c_noise in (batch["c_noise"][:, None], batch["c_noise"][:, None].expand(B, T)):
            torch.testing.assert_close(run(model, batch | {"c_noise": c_noise}), per_sample)
        per_frame = run(model, batch | {"c_noise": torch.tensor([[0.3, -1.2]])})
        first = run(model, batch | {"c_noise": torch.tensor([0.3])})
    assert not torch.allclose(per_frame, first)
    with pytest.raises(ValueError, match="c_noise"):
        run(model, batch | {"c_noise": torch.zeros(B, T + 1)})


def test_padding_mask_is_resized_to_the_latent_grid() -> None:
    model = build(randomise=True)
    batch = inputs()
    latent_mask = batch["padding_mask_B_1_H_W"][..., ::8, ::8]
    with torch.no_grad():
        at_pixels = run(model, batch)
        at_latent = run(model, batch | {"padding_mask_B_1_H_W": latent_mask})
        unpadded = run(model, batch | {"padding_mask_B_1_H_W": torch.zeros_like(latent_mask)})
    torch.testing.assert_close(at_pixels, at_latent)
    assert not torch.allclose(at_pixels, unpadded)


def test_grid_larger_than_the_position_tables_is_refused() -> None:
    model = build()
    too_long = FLAVOR.base.max_frames + 1
    with pytest.raises(ValueError, match="position tables"):
        model.base(
            torch.zeros(1, C, too_long, 4, 4),
            torch.zeros(1),
            torch.zeros(1, 4, FLAVOR.base.text_dim),
        )


def test_latent_with_the_wrong_channel_count_is_refused() -> None:
    model = build()
    with pytest.raises(ValueError, match="channels"):
        model.base(
            torch.zeros(1, C + 1, 2, 4, 4), torch.zeros(1), torch.zeros(1, 4, FLAVOR.base.text_dim)
        )
