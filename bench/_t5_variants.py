"""T5 encoder and attention-kernel variants that only the benchmarks run.

`ctrlpost embed` uses three attention paths of :mod:`ctrlpost.embed.t5` (``packed``, ``cudnn``,
``eager``) and the packed kernel's tuned tile. The bench compares them with:

* :func:`variant`: the lean forward on padded batches with another attention call:
  ``sdpa`` (torch's dispatch, a dense bias in the compute dtype), ``efficient`` (SDPA's
  memory-efficient kernel forced) or ``flex`` (FlexAttention, compiled, the bias as a score
  modifier);
* :func:`packed_attention_with`: the packed attention kernel at other tile and launch settings.

Not a module of the package: the bench scripts import it from their own folder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

from ctrlpost.embed import t5
from ctrlpost.embed.kernels import packed_attention

ATTENTION = ("sdpa", "efficient", "flex")


@dataclass(frozen=True)
class VariantEncoder:
    """The lean forward of ``encoder`` with ``attention`` in place of its own; called like a
    :class:`ctrlpost.embed.t5.T5Encoder` on padded batches."""

    encoder: t5.T5Encoder
    attention: str
    packed = False

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def __call__(self, ids_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> torch.Tensor:
        return encode(self.encoder, self.attention, ids_B_L, mask_B_L)


def variant(model: Any, compute_dtype: torch.dtype, attention: str, *,
            fused_products: bool = False) -> VariantEncoder:
    """The weights of a loaded ``T5EncoderModel`` run with one of :data:`ATTENTION`."""
    if attention not in ATTENTION:
        raise ValueError(f"unknown bench attention {attention!r}: choose one of {ATTENTION}")
    encoder = t5.T5Encoder.from_transformers(model, compute_dtype, fused_products=fused_products)
    return VariantEncoder(encoder, attention)


def encode(encoder: t5.T5Encoder, attention: str, ids_B_L: torch.Tensor,
           mask_B_L: torch.Tensor) -> torch.Tensor:
    """:func:`ctrlpost.embed.t5.encode` with ``attention``: float32 ``[B, L, D]``."""
    batch, length = ids_B_L.shape
    heads, head_dim = encoder.heads, encoder.head_dim
    bias = t5.attention_bias(encoder, mask_B_L)
    dense = None if attention == "flex" else bias.dense(encoder.compute_dtype)

    def attend(qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if attention == "flex":
            out = _flex_attention(q, k, v, bias)
        elif attention == "efficient":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=1.0)
        return out.transpose(1, 2).reshape(batch, length, heads * head_dim)

    def norm(hidden: torch.Tensor, weight_D: torch.Tensor) -> torch.Tensor:
        return t5.rms_norm(hidden, weight_D, encoder.eps).to(encoder.compute_dtype)

    return t5._stack(encoder, encoder.embedding_V_D[ids_B_L], attend, norm)


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    bias: t5.AttentionBias) -> torch.Tensor:
    position_H_L_L, padding_B_L = bias.position_H_L_L, bias.padding_B_L

    def add_bias(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
                 kv_idx: torch.Tensor) -> torch.Tensor:
        return score + position_H_L_L[h, q_idx, kv_idx] + padding_B_L[b, kv_idx]

    out: torch.Tensor = _compiled_flex()(q, k, v, score_mod=add_bias, scale=1.0)
    return out


@functools.cache
def _compiled_flex() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def packed_attention_with(qkv_T_3HD: torch.Tensor, bias_H_O: torch.Tensor,
                          starts_S: torch.Tensor, lengths_S: torch.Tensor, *, max_length: int,
                          heads: int, head_dim: int, block_m: int, block_n: int, warps: int,
                          stages: int, tma: bool | None = None) -> torch.Tensor:
    """:func:`ctrlpost.embed.kernels.packed_attention.packed_attention` with ``block_m`` queries
    and ``block_n`` keys per tile and Triton's ``warps`` and ``stages`` in place of the tuned
    settings."""
    with mock.patch.multiple(packed_attention, BLOCK_M=block_m, BLOCK_N=block_n, WARPS=warps,
                             STAGES=stages):
        return packed_attention.packed_attention(qkv_T_3HD, bias_H_O, starts_S, lengths_S,
                                                 max_length=max_length, heads=heads,
                                                 head_dim=head_dim, tma=tma)
