"""T5's RMS norm of the float32 residual stream, written in the products' dtype by one Triton
kernel.

Each layer normalizes the stream twice, and the products take the result in float16 or bf16.
``F.rms_norm`` followed by a cast reads the ``[T, D]`` float32 stream, writes it normalized in
float32, reads that back and writes the low-precision copy: 14 bytes per element. This kernel
reads the stream once and writes the low-precision copy: 6 bytes (its effect on an `embed` pass
is in bench/NOTES.md).

Used by the packed encoder (:func:`ctrlpost.embed.t5.encode_packed`), which already needs
Triton; ``TRITON_INTERPRET=1`` runs it on CPU tensors, which the tests use.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

ROWS_PER_PROGRAM = 4


def rms_norm_to(x: torch.Tensor, weight_D: torch.Tensor, eps: float,
                dtype: torch.dtype) -> torch.Tensor:
    """``F.rms_norm(x, weight_D, eps)`` computed in float32 and returned in ``dtype``
    (``x``: contiguous float32 ``[..., D]``; ``weight_D``: float32 ``[D]``)."""
    if x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError("rms_norm_to takes the contiguous float32 residual stream")
    width = x.shape[-1]
    x_R_D = x.view(-1, width)
    out_R_D = torch.empty(x_R_D.shape, dtype=dtype, device=x.device)
    rows = x_R_D.shape[0]
    if rows:
        grid = (-(-rows // ROWS_PER_PROGRAM),)
        _kernel()[grid](x_R_D, weight_D, out_R_D, rows, width, eps,
                        BLOCK_D=1 << (width - 1).bit_length(), ROWS=ROWS_PER_PROGRAM,
                        num_warps=4)
    return out_R_D.view(x.shape)


@functools.cache
def _kernel() -> Any:
    """The jitted kernel, built on first use (so ``TRITON_INTERPRET`` set by then counts)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(x_ptr, weight_ptr, out_ptr, rows, width, eps,  # type: ignore[no-untyped-def]
                        BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        col = tl.arange(0, BLOCK_D)
        inside = (row[:, None] < rows) & (col[None, :] < width)
        at = row[:, None].to(tl.int64) * width + col[None, :]
        x = tl.load(x_ptr + at, mask=inside, other=0.0)
        scale = tl.rsqrt(tl.sum(x * x, 1) / width + eps)
        weight = tl.load(weight_ptr + col, mask=col < width, other=0.0)
        out = x * scale[:, None] * weight[None, :]
        tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=inside)

    return rms_norm_kernel
