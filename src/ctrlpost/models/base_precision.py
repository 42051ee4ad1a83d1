"""The in-place conversions of a frozen base behind the built-in ``model.base_precision`` values
(registered by :mod:`ctrlpost.builtin`; the layers' parameters stay as they are, so strict
loading, sharding and checkpoints are unchanged)."""

from __future__ import annotations

from torch import nn

from ctrlpost.models.blocks import Attention, FeedForward, SubBlock
from ctrlpost.models.fp8 import Fp8FrozenLinear


def token_linears(module: nn.Module) -> list[nn.Linear]:
    """The linear layers of ``module``'s DiT blocks that act on every token: attention's q, k, v
    and output projections and the MLP's two layers (not the AdaLN-LoRA modulation, which acts
    on one vector per sample and frame, nor the embedders and the final layer)."""
    found: list[nn.Module] = []
    for child in module.modules():
        if isinstance(child, Attention):
            found += [child.to_q[0], child.to_k[0], child.to_v[0], child.to_out[0]]
        elif isinstance(child, FeedForward):
            found += [child.layer1, child.layer2]
    assert all(isinstance(layer, nn.Linear) for layer in found)
    return found  # type: ignore[return-value]


def self_attentions(module: nn.Module) -> list[nn.Module]:
    """The self-attention modules of ``module``'s DiT blocks (cross-attention stays bf16: its
    512 text slots make it a small share of a block)."""
    return [child.block.attn for child in module.modules()  # type: ignore[misc]
            if isinstance(child, SubBlock) and child.kind == "fa"]


def to_fp8_attention(module: nn.Module) -> int:
    """``to_fp8``, and the self-attention of a frozen ``module`` in FP8 as well
    (:mod:`ctrlpost.models.fp8_attention`); returns how many layers and attentions changed."""
    attentions = self_attentions(module)
    for attention in attentions:
        attention.use_fp8()  # type: ignore[operator]
    return to_fp8(module) + len(attentions)


def to_fp8(module: nn.Module) -> int:
    """Make the token-wise linear layers of a frozen ``module`` compute in FP8, in place (their
    parameters stay as they are); returns how many were converted."""
    layers = token_linears(module)
    for layer in layers:
        layer.__class__ = Fp8FrozenLinear
    return len(layers)
