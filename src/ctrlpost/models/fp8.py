"""A frozen linear layer computed in FP8: the opt-in ``model.base_precision = "fp8"``.

The base is frozen, so its linear layers need the forward product and the input gradient only
(no weight gradient). Both run as FP8 (e4m3) products with row-wise scales on ``torch._scaled_mm``,
accumulating in float32 and writing bf16:

* forward ``y = x Wᵀ``: ``x`` quantized per token (row), ``W`` per output feature;
* input gradient ``dx = dy W``: ``dy`` per token, ``W`` per input feature (a transposed copy).

Scales are computed from each tensor's current values at every call ("dynamic" scaling): the
weights are the FSDP-gathered bf16 parameters themselves, so the layer keeps the released
``weight`` key and dtype (strict loading, sharding and checkpoints are unchanged) and quantizing
them costs a read of each weight per product, small next to the product itself.

A row is scaled so its largest magnitude maps to e4m3's largest finite value (448); an all-zero
row gets scale 1. The float32 scales multiply the float32 accumulator in the product's epilogue.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def quantize_rows(x_M_K: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_fp8 [M, K], scale [M, 1] float32)`` with ``x ≈ x_fp8 · scale`` row by row."""
    amax_M_1 = x_M_K.abs().amax(dim=1, keepdim=True).float()
    scale_M_1 = torch.where(amax_M_1 > 0, amax_M_1 / FP8_MAX, torch.ones_like(amax_M_1))
    x_fp8 = (x_M_K.float() / scale_M_1).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return x_fp8, scale_M_1


def scaled_product(a_fp8_M_K: Tensor, a_scale_M_1: Tensor, b_fp8_N_K: Tensor,
                   b_scale_N_1: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ bᵀ`` of row-quantized operands (:func:`quantize_rows`), in ``out_dtype``."""
    # _scaled_mm wants its second operand column-major: b_fp8 [N, K] row-major, transposed.
    return torch._scaled_mm(a_fp8_M_K, b_fp8_N_K.t(), scale_a=a_scale_M_1,
                            scale_b=b_scale_N_1.t(), out_dtype=out_dtype)


def fp8_matmul(a_M_K: Tensor, b_N_K: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ bᵀ`` through FP8 with row-wise scales of ``a`` (per M) and of ``b`` (per N)."""
    return scaled_product(*quantize_rows(a_M_K), *quantize_rows(b_N_K), out_dtype)


@torch.library.custom_op("ctrlpost::fp8_frozen_linear", mutates_args=())
def fp8_frozen_linear_op(x_M_K: Tensor, x_fp8_M_K: Tensor, x_scale_M_1: Tensor,
                         weight_N_K: Tensor, weight_fp8_N_K: Tensor,
                         weight_scale_N_1: Tensor) -> Tensor:
    """``x Wᵀ`` from the quantized operands, in ``x``'s dtype.

    ``x`` and ``W`` themselves are carried for autograd only: gradients flow to ``x`` through
    this op, and the backward reads ``W``. Being one opaque op (not an ``autograd.Function``),
    torch.compile's activation checkpointing treats the product like any other op of a block:
    recomputed in the backward under "full" and "selective" (a traced ``autograd.Function``'s
    products were kept on the GPU: bench/NOTES.md). The quantization stays outside, in the
    traced graph, where the compiler fuses it with the ops that produce its input."""
    del weight_N_K
    return scaled_product(x_fp8_M_K, x_scale_M_1, weight_fp8_N_K, weight_scale_N_1,
                          x_M_K.dtype)


@fp8_frozen_linear_op.register_fake
def _fp8_frozen_linear_fake(x_M_K: Tensor, x_fp8_M_K: Tensor, x_scale_M_1: Tensor,
                            weight_N_K: Tensor, weight_fp8_N_K: Tensor,
                            weight_scale_N_1: Tensor) -> Tensor:
    return x_M_K.new_empty(x_M_K.shape[0], weight_N_K.shape[0])


def _save_weight(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(inputs[3])


def input_gradient(grad_y_M_N: Tensor, weight_N_K: Tensor) -> Tensor:
    """``dx = dy W`` of a frozen ``y = x Wᵀ`` through FP8, in ``dy``'s dtype."""
    # W's rows become columns, so it is quantized per input feature (per K).
    return fp8_matmul(grad_y_M_N, weight_N_K.t().contiguous(), grad_y_M_N.dtype)


def _input_gradient(ctx: Any, grad_y_M_N: Tensor) -> tuple[Tensor | None, ...]:
    (weight_N_K,) = ctx.saved_tensors
    return input_gradient(grad_y_M_N, weight_N_K), None, None, None, None, None


fp8_frozen_linear_op.register_autograd(_input_gradient, setup_context=_save_weight)


class Fp8FrozenLinear(nn.Linear):
    """An ``nn.Linear`` without bias whose (frozen) product runs in FP8; same parameters."""

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is not None or self.weight.requires_grad:
            raise RuntimeError("Fp8FrozenLinear is for frozen layers without bias")
        x_M_K = x.reshape(-1, x.shape[-1])
        x_fp8, x_scale = quantize_rows(x_M_K.detach())
        weight_fp8, weight_scale = quantize_rows(self.weight.detach())
        y_M_N = fp8_frozen_linear_op(x_M_K, x_fp8, x_scale, self.weight, weight_fp8,
                                     weight_scale)
        return y_M_N.reshape(*x.shape[:-1], self.weight.shape[0])
