"""Packed T5 attention kernels written differently from ``ctrlpost.embed.kernels.packed_attention``,
timed beside it over one layer of bench/embed.py's caption mix (fp16, ``embed``'s default
batches), each checked against it.

The variants ask where the kernel's time goes:

- ``nobias``: no position bias at all (wrong output; how much the bias lookup costs);
- ``rows``: the bias read from a table pre-shifted per query row, so a tile's bias is a plain
  2-D load of aligned rows instead of a gather;
- ``packed``: tiles of consecutive packed tokens that may span captions (no query tile is
  mostly padding; keys of other captions are masked), bias looked up as today;
- ``bias16``: today's gather from a table in the activations' dtype (half the bytes);
- ``tma`` / ``tma-bias16``: q, k and v fetched by the tensor memory accelerator through two
  descriptors made once on the host over the whole packed ``[T, 3·H·Dk]`` (a tile may run into
  the next caption's rows: those keys are masked, those queries never stored);
  ``tma-store``: tiles wholly inside their caption also stored by it; ``tma-ws``: Triton's
  warp specialization of the key loop (a producer warp for the copies); ``tma-nobias``: no
  position bias (a diagnostic); ``tma-window``: each tile's bias read as one run of
  BLOCK_M + BLOCK_N - 1 offsets, then spread over the tile by ``tl.gather``.

    python bench/attention_variants.py                # on the GPU
    TRITON_INTERPRET=1 python bench/attention_variants.py --device cpu --captions 6 --tiny
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as common
import torch

common.ensure_ctrlpost_importable()

import embed  # noqa: E402  (the bench script beside this one: its caption mix)
from ctrlpost.embed.kernels.packed_attention import caption_bounds, packed_attention  # noqa: E402
from ctrlpost.embed.run import length_batches  # noqa: E402
from ctrlpost.recipe import EmbedOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("current", "nobias", "rows", "packed", "bias16", "tma", "tma-bias16")


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def variant_kernel(qkv_ptr, out_ptr, bias_ptr, starts_ptr, lengths_ptr,  # type: ignore[no-untyped-def]
                       first_ptr, end_ptr, tokens, bias_stride, bias_row_stride, max_offset,
                       HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BIAS: tl.constexpr, PACKED: tl.constexpr):
        head = tl.program_id(0)
        row_width = 3 * HEADS * HEAD_DIM
        dims = tl.arange(0, HEAD_DIM)
        if PACKED:  # a tile of consecutive tokens; each query keeps to its own caption's keys
            tile_start = tl.program_id(1) * BLOCK_M
            queries = tile_start + tl.arange(0, BLOCK_M)
            query_real = queries < tokens
            query_first = tl.load(first_ptr + queries, mask=query_real, other=0)
            query_end = tl.load(end_ptr + queries, mask=query_real, other=0)
            key_lo = tl.load(first_ptr + tile_start)
            key_hi = tl.load(end_ptr + tl.minimum(tile_start + BLOCK_M, tokens) - 1)
            base = 0
        else:
            query_block, caption = tl.program_id(1), tl.program_id(2)
            length = tl.load(lengths_ptr + caption)
            if query_block * BLOCK_M >= length:
                return
            base = tl.load(starts_ptr + caption).to(tl.int64)
            queries = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
            query_real = queries < length
            key_lo = 0
            key_hi = length
        q = tl.load(qkv_ptr + (base + queries)[:, None] * row_width + head * HEAD_DIM
                    + dims[None, :], mask=query_real[:, None], other=0.0)
        best = tl.full([BLOCK_M], -1e30, tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for first_key in range(key_lo, key_hi, BLOCK_N):
            keys = first_key + tl.arange(0, BLOCK_N)
            key_real = keys < key_hi
            key_rows = (base + keys)[:, None] * row_width + dims[None, :]
            k = tl.load(qkv_ptr + key_rows + (HEADS + head) * HEAD_DIM,
                        mask=key_real[:, None], other=0.0)
            v = tl.load(qkv_ptr + key_rows + (2 * HEADS + head) * HEAD_DIM,
                        mask=key_real[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k))
            if BIAS == 1:  # gather by key - query offset, as the shipped kernel does
                offset = keys[None, :] - queries[:, None]
                offset = tl.minimum(tl.maximum(offset, -max_offset), max_offset)
                scores += tl.load(bias_ptr + head * bias_stride + max_offset + offset)
            if BIAS == 2:  # row i of the pre-shifted table holds offset y - i at column y
                column = max_offset + first_key - query_block * BLOCK_M
                rows = tl.arange(0, BLOCK_M)
                scores += tl.load(bias_ptr + head * bias_stride + rows[:, None] * bias_row_stride
                                  + column + tl.arange(0, BLOCK_N)[None, :])
            if PACKED:
                mine = ((keys[None, :] >= query_first[:, None])
                        & (keys[None, :] < query_end[:, None]))
            else:
                mine = key_real[None, :] & (queries[:, None] >= 0)
            scores = tl.where(mine, scores, -1e30)
            new_best = tl.maximum(best, tl.max(scores, 1))
            weights = tl.exp(scores - new_best[:, None])
            rescale = tl.exp(best - new_best)
            total = total * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            best = new_best
        out = acc / total[:, None]
        tl.store(out_ptr + (base + queries)[:, None] * (HEADS * HEAD_DIM) + head * HEAD_DIM
                 + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=query_real[:, None])

    @triton.jit
    def tma_kernel(q_desc, kv_desc, out_desc, out_ptr, bias_ptr,  # type: ignore[no-untyped-def]
                   starts_ptr, lengths_ptr, bias_stride, max_offset, HEADS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   WARP_SPECIALIZE: tl.constexpr, TMA_STORE: tl.constexpr,
                   BIAS: tl.constexpr, WINDOW: tl.constexpr):
        head, query_block, caption = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        length = tl.load(lengths_ptr + caption)
        if query_block * BLOCK_M >= length:
            return
        start = tl.load(starts_ptr + caption)
        dims = tl.arange(0, HEAD_DIM)
        queries = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
        q = q_desc.load([start + query_block * BLOCK_M, head * HEAD_DIM])
        best = tl.full([BLOCK_M], -1e30, tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        bias_row = bias_ptr + head * bias_stride + max_offset
        for first_key in tl.range(0, length, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
            keys = first_key + tl.arange(0, BLOCK_N)
            k = kv_desc.load([start + first_key, (HEADS + head) * HEAD_DIM])
            v = kv_desc.load([start + first_key, (2 * HEADS + head) * HEAD_DIM])
            scores = tl.dot(q, tl.trans(k))
            if BIAS == 1:  # gather by key - query offset, as the shipped kernel does
                offset = keys[None, :] - queries[:, None]
                offset = tl.minimum(tl.maximum(offset, -max_offset), max_offset)
                scores += tl.load(bias_row + offset)
            if BIAS == 3:  # the tile's BLOCK_M + BLOCK_N - 1 offsets in one load, then spread
                lowest = first_key - query_block * BLOCK_M - (BLOCK_M - 1)
                window = tl.load(bias_row + tl.minimum(tl.maximum(
                    lowest + tl.arange(0, WINDOW), -max_offset), max_offset))
                spread = (tl.arange(0, BLOCK_N)[None, :] - tl.arange(0, BLOCK_M)[:, None]
                          + (BLOCK_M - 1))
                scores += tl.reshape(tl.gather(window, tl.reshape(spread, [BLOCK_M * BLOCK_N]),
                                               0), [BLOCK_M, BLOCK_N])
            scores = tl.where((keys < length)[None, :], scores, -1e30)
            new_best = tl.maximum(best, tl.max(scores, 1))
            weights = tl.exp(scores - new_best[:, None])
            rescale = tl.exp(best - new_best)
            total = total * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            best = new_best
        out = (acc / total[:, None]).to(out_ptr.dtype.element_ty)
        if TMA_STORE and (query_block + 1) * BLOCK_M <= length:
            out_desc.store([start + query_block * BLOCK_M, head * HEAD_DIM], out)
        else:
            tl.store(out_ptr + (start.to(tl.int64) + queries)[:, None] * (HEADS * HEAD_DIM)
                     + head * HEAD_DIM + dims[None, :], out, mask=(queries < length)[:, None])

    return variant_kernel, tma_kernel


def shifted_rows(bias_H_O: torch.Tensor, block_m: int) -> tuple[torch.Tensor, int]:
    """(``[H, block_m, ·]`` table, column of offset 0 in row 0): row i, column y holds the bias
    of table column y - i - pad (clamped), so a tile's rows start at one shared column, and
    ``pad`` puts offset 0 of row 0 on a multiple of 16 (aligned vector loads)."""
    width = bias_H_O.shape[1]
    max_offset = (width - 1) // 2
    pad = -max_offset % 16
    row_width = -(-(width + block_m + pad + 16) // 16) * 16
    y = torch.arange(row_width, device=bias_H_O.device)
    i = torch.arange(block_m, device=bias_H_O.device)
    columns = (y[None, :] - i[:, None] - pad).clamp(0, width - 1)
    return bias_H_O[:, columns].contiguous(), max_offset + pad


def token_bounds(lengths: Sequence[int], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 first token and end (one past the last) of each token's caption."""
    lengths_S = torch.tensor(lengths, dtype=torch.int64)
    ends_S = torch.cumsum(lengths_S, 0)
    first_T = torch.repeat_interleave(ends_S - lengths_S, lengths_S)
    end_T = torch.repeat_interleave(ends_S, lengths_S)
    return first_T.to(torch.int32).to(device), end_T.to(torch.int32).to(device)


def variant(name: str, qkv: torch.Tensor, bias: torch.Tensor, prepared: dict[str, Any], *,
            heads: int, head_dim: int, block_m: int = 64, block_n: int = 16, warps: int = 4,
            stages: int = 3) -> torch.Tensor:
    """``[T, H·Dk]`` from kernel ``name`` (``prepared``: its per-batch inputs)."""
    if name.startswith("tma"):
        return tma_variant(qkv, bias.to(qkv.dtype) if "bias16" in name else bias, prepared,
                           heads=heads, head_dim=head_dim, block_m=block_m, block_n=block_n,
                           warps=warps, stages=stages, warp_specialize="-ws" in name,
                           tma_store="-store" in name,
                           bias_mode=0 if "nobias" in name else 3 if "window" in name else 1)
    if name == "bias16":
        bias = bias.to(qkv.dtype)
        name = "current"
    if name == "current":
        return packed_attention(qkv, bias, prepared["starts"], prepared["lengths"],
                                max_length=prepared["longest"], heads=heads, head_dim=head_dim,
                                block_m=block_m, block_n=block_n, warps=warps, stages=stages)
    tokens = qkv.shape[0]
    out = torch.empty(tokens, heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    packed = name == "packed"
    table, max_offset = (prepared["rows"] if name == "rows" else
                         (bias, (bias.shape[1] - 1) // 2))
    grid = ((heads, -(-tokens // block_m)) if packed else
            (heads, -(-prepared["longest"] // block_m), prepared["starts"].shape[0]))
    _kernel()[0][grid](qkv, out, table, prepared["starts"], prepared["lengths"],
                    prepared["first"], prepared["end"], tokens, table.stride(0),
                    table.stride(1) if name == "rows" else 0, max_offset,
                    HEADS=heads, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                    BIAS={"nobias": 0, "rows": 2}.get(name, 1), PACKED=packed,
                    num_warps=warps, num_stages=stages)
    return out


def tma_variant(qkv: torch.Tensor, bias: torch.Tensor, prepared: dict[str, Any], *,
                heads: int, head_dim: int, block_m: int, block_n: int, warps: int,
                stages: int, warp_specialize: bool, tma_store: bool,
                bias_mode: int) -> torch.Tensor:
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    tokens = qkv.shape[0]
    out = torch.empty(tokens, heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    q_desc = TensorDescriptor.from_tensor(qkv, [block_m, head_dim])
    kv_desc = TensorDescriptor.from_tensor(qkv, [block_n, head_dim])
    out_desc = TensorDescriptor.from_tensor(out, [block_m, head_dim])
    grid = (heads, -(-prepared["longest"] // block_m), prepared["starts"].shape[0])
    _kernel()[1][grid](q_desc, kv_desc, out_desc, out, bias, prepared["starts"],
                       prepared["lengths"], bias.stride(0), (bias.shape[1] - 1) // 2, HEADS=heads,
                       HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                       WARP_SPECIALIZE=warp_specialize, TMA_STORE=tma_store,
                       BIAS=bias_mode, WINDOW=triton.next_power_of_2(block_m + block_n - 1),
                       num_warps=warps, num_stages=stages)
    return out


def prepare(batch: Sequence[int], bias: torch.Tensor, block_m: int,
            device: torch.device) -> dict[str, Any]:
    starts, lengths = caption_bounds(batch, device)
    first, end = token_bounds(batch, device)
    return {"starts": starts, "lengths": lengths, "first": first, "end": end,
            "longest": max(batch), "rows": shifted_rows(bias, block_m)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--settings", default="64x16x4x3,64x32x4x3,32x16x4x3,128x16x8x3",
                        help="block_m x block_n x warps x stages, comma-separated")
    parser.add_argument("--batch-tokens", type=int, default=EmbedOptions().batch_tokens)
    parser.add_argument("--captions", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--tiny", action="store_true", help="2 heads of 16 (interpreter)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    heads, head_dim = (2, 16) if args.tiny else (embed.T5_11B["num_heads"],
                                                 embed.T5_11B["d_kv"])
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    lengths = embed.mixed_caption_lengths(args.captions)
    batches = [[lengths[i] for i in b] for b in
               length_batches(lengths, max_captions=EmbedOptions().batch_size,
                              max_tokens=args.batch_tokens,
                              packed=True)]
    settings = [tuple(int(x) for x in s.split("x")) for s in args.settings.split(",")]
    names = args.variants.split(",")
    inputs = []
    for batch in batches:
        qkv = torch.randn(sum(batch), 3 * heads * head_dim, device=device, dtype=dtype)
        bias = torch.randn(heads, 2 * max(batch) - 1, device=device)
        inputs.append((qkv, bias, {m: prepare(batch, bias, m, device)
                                   for m in {s[0] for s in settings}}))

    def layer(name: str, setting: tuple[int, ...]) -> list[torch.Tensor]:
        m, n, w, st = setting
        return [variant(name, qkv, bias, prepared[m], heads=heads, head_dim=head_dim,
                        block_m=m, block_n=n, warps=w, stages=st)
                for qkv, bias, prepared in inputs]

    reference = torch.cat(layer("current", settings[0])).float()
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        for setting in settings:
            key = f"{name} {'x'.join(map(str, setting))}"
            try:
                error = (torch.cat(layer(name, setting)).float() - reference).abs().max().item()
                rows[key] = {"variant": name, "setting": setting, "max_abs_diff": error,
                             "ms": []}
            except Exception as exc:
                rows[key] = {"variant": name, "setting": setting,
                             "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    def timed(run: Callable[[], Any]) -> float:
        return common.timed(run, device)[0] * 1e3

    for _ in range(args.rounds):
        for row in rows.values():
            if "error" not in row:
                row["ms"].append(common.median([timed(lambda r=row: layer(r["variant"],
                                                                         r["setting"]))
                                                for _ in range(5)]))
    table = []
    for key, row in rows.items():
        if "error" in row:
            table.append((key, "-", row["error"][:60]))
            continue
        row["ms_per_layer"] = common.median(row["ms"])
        table.append((key, f"{row['ms_per_layer']:.3f}", f"{row['max_abs_diff']:.2e}"))
    common.print_table(table, ("variant", "ms/layer", "max |diff| vs current"))
    record = {"device": common.device_name(device), "torch": torch.__version__,
              "date": common.now(), "captions": args.captions,
              "tokens": sum(lengths), "batches": len(batches), "rows": rows}
    out = args.out or RESULTS / f"embed-attention-variants-{common.slug(record['device'])}.json"
    print(common.write_json(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
