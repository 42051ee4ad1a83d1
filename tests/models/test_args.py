"""Flavors: the 7b numbers of the reference, derived sizes, and the unknown-name error."""

from __future__ import annotations

import dataclasses

import pytest

from ctrlpost.errors import WeightsError
from ctrlpost.models.args import FLAVOR_NAMES, UnknownFlavorError, get_flavor


def test_7b_flavor_matches_the_reference_numbers() -> None:
    flavor = get_flavor("7b")
    base, control = flavor.base, flavor.control
    assert (base.model_channels, base.num_blocks, base.num_heads, base.head_dim) == (
        4096,
        28,
        32,
        128,
    )
    assert (base.text_dim, base.text_tokens, base.adaln_lora_dim, base.mlp_hidden) == (
        1024,
        512,
        256,
        16384,
    )
    assert base.patch_in_features == 72
    assert base.max_tokens_thw == (128, 120, 120)
    assert base.rope_dims_thw == (44, 42, 42)
    assert (base.rope_t_ratio, base.rope_h_ratio, base.rope_w_ratio) == (2.0, 1.0, 1.0)
    assert control.num_blocks == 3
    assert control.dit.rope_t_ratio == 1.0  # the reference never overrides it for the branch
    assert control.hint_in_features == 516
    # Everything but the block count and the RoPE t ratio is shared with the base.
    assert dataclasses.replace(control.dit, num_blocks=28, rope_t_ratio=2.0) == base


def test_tiny_flavor_has_the_same_structure_at_small_size() -> None:
    flavor = get_flavor("tiny")
    assert flavor.base.head_dim == 32
    assert flavor.base.rope_dims_thw == (12, 10, 10)
    assert flavor.control.num_blocks == 3 < flavor.base.num_blocks
    assert flavor.base.latent_channels == 16


def test_flavors_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_flavor("tiny").base.num_blocks = 2  # type: ignore[misc]


def test_unknown_flavor_names_the_valid_ones() -> None:
    with pytest.raises(UnknownFlavorError) as info:
        get_flavor("7B")
    assert isinstance(info.value, WeightsError) and isinstance(info.value, ValueError)
    assert all(name in str(info.value) for name in FLAVOR_NAMES)
    assert info.value.hint == "did you mean '7b'?"
