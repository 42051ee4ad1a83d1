"""Control branch construction: initialising it from the base, and the block-count guard."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrlpost.models import ControlledDiT, ControlNet, DiT, get_flavor, init_control_from_base

FLAVOR = get_flavor("tiny")


def test_init_from_base_copies_every_shared_tensor_and_nothing_else() -> None:
    torch.manual_seed(0)
    base, control = DiT(FLAVOR.base), ControlNet(FLAVOR.control)
    base.init_weights()
    control.init_weights()
    with torch.no_grad():
        for param in base.parameters():
            param.normal_()
    hint_before = {
        k: v.clone() for k, v in control.state_dict().items() if k not in base.state_dict()
    }

    copied = init_control_from_base(control, base)

    own = {"x_embedder2.", "input_hint_block.", "zero_blocks."}
    assert set(copied) == {k for k in control.state_dict() if not k.startswith(tuple(own))}
    assert "blocks.block2.blocks.2.block.layer2.weight" in copied
    assert "final_layer.linear.weight" in copied and "affline_norm.weight" in copied
    assert not any(k.startswith("blocks.block3.") for k in copied)
    control_state, base_state = control.state_dict(), base.state_dict()
    for name in copied:
        assert torch.equal(control_state[name], base_state[name]), name
    for name, before in hint_before.items():
        assert torch.equal(control_state[name], before), name


def test_control_branch_uses_rope_t_ratio_one() -> None:
    control, base = ControlNet(FLAVOR.control), DiT(FLAVOR.base)
    assert control.pos_embedder.thetas_thw[0] == 10000.0
    assert base.pos_embedder.thetas_thw[0] > 10000.0


def test_wrapper_refuses_more_control_blocks_than_base_blocks() -> None:
    deep = dataclasses.replace(
        FLAVOR.control, dit=dataclasses.replace(FLAVOR.control.dit, num_blocks=5)
    )
    with pytest.raises(ValueError, match="more blocks"):
        ControlledDiT(base=DiT(FLAVOR.base), control=ControlNet(deep))


def test_hint_with_more_channels_than_the_branch_accepts_is_refused() -> None:
    control = ControlNet(FLAVOR.control)
    too_wide = torch.zeros(1, FLAVOR.control.hint_channels + 1, 2, 4, 4)
    with pytest.raises(ValueError, match="hint_channels"):
        control.encode_hint(too_wide, None)


def test_meta_build_then_to_empty_and_init_gives_a_working_model() -> None:
    with torch.device("meta"):
        control = ControlNet(FLAVOR.control)
    control.to_empty(device="cpu")
    control.init_weights()
    assert control.pos_embedder.seq.tolist() == list(range(control.pos_embedder.seq.numel()))
    assert all(torch.isfinite(p).all() for p in control.parameters())
    assert torch.all(control.affline_norm.weight == 1)
    x = torch.randn(1, 16, 2, 4, 4)
    residuals = control(
        x, torch.zeros(1), torch.randn(1, 3, FLAVOR.base.text_dim), hint_B_C_T_H_W=x
    )
    assert len(residuals) == 3 and all(torch.equal(r, torch.zeros(1, 8, 128)) for r in residuals)
