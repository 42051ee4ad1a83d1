"""T5 encoder attention over captions packed end to end, as one Triton kernel.

Batches of captions padded to their longest spend matrix products on padding and hand the
attention a dense ``[B, H, L, L]`` bias to read. Here the tokens of a batch sit one caption after
the other (``[T, ·]``, no padding anywhere), and one kernel per layer reads q, k and v where the
fused q/k/v product wrote them (``[T, 3, H, Dk]``), looks T5's relative position bias up by the
key − query offset (it depends on nothing else: a ``[H, 2·max_length − 1]`` float32 table that
stays in L2; a tile reads its run of offsets once), keeps each caption's keys to itself, and
writes ``[T, H·Dk]``, the layout the output product reads. Softmax is online (flash-attention
style) in float32, in base 2; scores are unscaled, as in T5.

On Hopper and later GPUs q, k and v arrive through the tensor memory accelerator: two
descriptors over the whole packed ``[T, 3·H·Dk]``, made once per call on the host (a tile that
runs past its caption reads the next caption's rows; those keys are masked and those queries
never stored), which saves address and load instructions in a kernel bound by its issue rate.

Needs Triton 3.2 or later (it comes with CUDA builds of torch; the descriptors need 3.4, and
older ones take computed addresses); ``TRITON_INTERPRET=1`` runs the same kernel on CPU
tensors, which the tests use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

# Queries and keys per tile and Triton's launch settings: the fastest of the sweeps on an H200
# for T5-11B's caption mix (bench/NOTES.md; `bench/embed.py --kernel-sweep` times others).
BLOCK_M = 64
BLOCK_N = 32
WARPS = 4
STAGES = 3


def supported(head_dim: int) -> bool:
    """Whether the kernel takes this head width (a power of two the tensor cores accept)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def caption_bounds(lengths: Sequence[int], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 (first token, length) of each packed caption on ``device``, as the kernel reads
    them (copied through pinned memory on CUDA, so the copy does not stall the host)."""
    lengths_S = torch.tensor(lengths, dtype=torch.int32)
    starts_S = torch.cumsum(lengths_S, 0, dtype=torch.int32) - lengths_S
    if device.type == "cuda":
        return (starts_S.pin_memory().to(device, non_blocking=True),
                lengths_S.pin_memory().to(device, non_blocking=True))
    return starts_S, lengths_S


def runs(device: torch.device, head_dim: int) -> bool:
    """Whether the kernel builds and runs on ``device`` (Triton present, a GPU it targets)."""
    if device.type != "cuda" or not supported(head_dim):
        return False
    starts_S, lengths_S = caption_bounds([3, 1], device)
    qkv = torch.ones(4, 3 * head_dim, dtype=torch.bfloat16, device=device)
    bias = torch.zeros(1, 5, device=device)
    try:
        out = packed_attention(qkv, bias, starts_S, lengths_S, max_length=3, heads=1,
                               head_dim=head_dim)
    except Exception:  # no Triton, no compiler, a GPU it does not target: not here
        return False
    return bool(torch.equal(out, torch.ones_like(out)))


def copies_by_tma(qkv_T_3HD: torch.Tensor) -> bool:
    """Whether q/k/v can come through tensor descriptors: a Hopper or later GPU, a Triton
    that has them, and rows the copy engine takes (contiguous, 16-byte aligned)."""
    if not qkv_T_3HD.is_cuda or torch.cuda.get_device_capability(qkv_T_3HD.device) < (9, 0):
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return qkv_T_3HD.is_contiguous() and qkv_T_3HD.data_ptr() % 16 == 0


def packed_attention(qkv_T_3HD: torch.Tensor, bias_H_O: torch.Tensor, starts_S: torch.Tensor,
                     lengths_S: torch.Tensor, *, max_length: int, heads: int,
                     head_dim: int, tma: bool | None = None) -> torch.Tensor:
    """Attention of every caption over its own tokens: ``[T, H·Dk]`` in q/k/v's dtype.

    ``qkv_T_3HD``: the fused product's output, q, k and v stacked per token; ``bias_H_O``: the
    position bias of each key − query offset, offset ``o`` at column ``o + (O − 1) / 2``;
    ``starts_S`` / ``lengths_S``: int32 first token and length of each caption; ``max_length``:
    the longest caption (the launch grid is sized by it); ``tma``: q/k/v through tensor
    descriptors (default: where :func:`copies_by_tma`). The heads of a tile of queries run as
    neighbouring programs, so they read neighbouring memory."""
    block_m, block_n = BLOCK_M, BLOCK_N
    tokens = qkv_T_3HD.shape[0]
    out_T_HD = torch.empty(tokens, heads * head_dim, dtype=qkv_T_3HD.dtype,
                           device=qkv_T_3HD.device)
    grid = (heads, -(-max_length // block_m), starts_S.shape[0])
    q_desc = kv_desc = None
    if copies_by_tma(qkv_T_3HD) if tma is None else tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        q_desc = TensorDescriptor.from_tensor(qkv_T_3HD, [block_m, head_dim])
        kv_desc = TensorDescriptor.from_tensor(qkv_T_3HD, [block_n, head_dim])
    _kernel()[grid](qkv_T_3HD, q_desc, kv_desc, out_T_HD, bias_H_O, starts_S, lengths_S,
                    bias_H_O.stride(0), (bias_H_O.shape[1] - 1) // 2,
                    HEADS=heads, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                    TMA=q_desc is not None, WINDOW=_power_of_two_above(block_m + block_n - 1),
                    num_warps=WARPS, num_stages=STAGES)
    return out_T_HD


def _power_of_two_above(n: int) -> int:
    """The smallest power of two ≥ ``n``."""
    return 1 << (n - 1).bit_length()


@functools.cache
def _kernel() -> Any:
    """The jitted kernel, built on first use (so ``TRITON_INTERPRET`` set by then counts)."""
    import triton
    import triton.language as tl

    @triton.jit
    def attention_kernel(qkv_ptr, q_desc, kv_desc, out_ptr, bias_ptr,  # type: ignore[no-untyped-def]
                         starts_ptr, lengths_ptr, bias_stride, max_offset,
                         HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, TMA: tl.constexpr, WINDOW: tl.constexpr):
        head, query_block, caption = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        length = tl.load(lengths_ptr + caption)
        if query_block * BLOCK_M >= length:
            return
        start = tl.load(starts_ptr + caption).to(tl.int64)
        row_width = 3 * HEADS * HEAD_DIM
        dims = tl.arange(0, HEAD_DIM)
        queries = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
        query_real = queries < length
        if TMA:
            q = q_desc.load([start.to(tl.int32) + query_block * BLOCK_M, head * HEAD_DIM])
        else:
            q = tl.load(qkv_ptr + (start + queries)[:, None] * row_width + head * HEAD_DIM
                        + dims[None, :], mask=query_real[:, None], other=0.0)
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        bias_row = bias_ptr + head * bias_stride + max_offset
        log2_e = 1.4426950408889634  # the softmax is in base 2 (see the loop)
        # A tile's bias depends on key − query only: its BLOCK_M + BLOCK_N − 1 offsets are read
        # as one run, then spread over the tile in registers, instead of one gathered load per
        # score.
        spread = tl.reshape(tl.arange(0, BLOCK_N)[None, :] - tl.arange(0, BLOCK_M)[:, None]
                            + (BLOCK_M - 1), [BLOCK_M * BLOCK_N])
        for first_key in range(0, length, BLOCK_N):
            keys = first_key + tl.arange(0, BLOCK_N)
            key_real = keys < length
            if TMA:
                first_row = start.to(tl.int32) + first_key
                k = kv_desc.load([first_row, (HEADS + head) * HEAD_DIM])
                v = kv_desc.load([first_row, (2 * HEADS + head) * HEAD_DIM])
            else:
                key_rows = (start + keys)[:, None] * row_width + dims[None, :]
                k = tl.load(qkv_ptr + key_rows + (HEADS + head) * HEAD_DIM,
                            mask=key_real[:, None], other=0.0)
                v = tl.load(qkv_ptr + key_rows + (2 * HEADS + head) * HEAD_DIM,
                            mask=key_real[:, None], other=0.0)
            lowest = first_key - query_block * BLOCK_M - (BLOCK_M - 1)
            offsets = tl.minimum(tl.maximum(lowest + tl.arange(0, WINDOW), -max_offset),
                                 max_offset)
            # Softmax in base 2: scores and bias scaled by log2(e), so each score costs one
            # multiply-add and one exp2.
            bias_run = tl.load(bias_row + offsets) * log2_e
            bias = tl.reshape(tl.gather(bias_run, spread, 0), [BLOCK_M, BLOCK_N])
            scores = tl.dot(q, tl.trans(k)) * log2_e + bias
            scores = tl.where(key_real[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, 1))
            weights = tl.exp2(scores - new_best[:, None])
            rescale = tl.exp2(best - new_best)
            total = total * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            best = new_best
        out = acc / total[:, None]
        tl.store(out_ptr + (start + queries)[:, None] * (HEADS * HEAD_DIM) + head * HEAD_DIM
                 + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=query_real[:, None])

    return attention_kernel
