"""The T5-11B encoder layer's four products, each written several ways, in float16 and bf16.

``bench/embed.py --gemm-check`` showed the float16 products ~5-16 % behind their bf16 twins
(cuBLAS / cuBLASLt as torch calls them), and the products are ~88 % of an ``embed`` pass. This
script asks where that gap comes from and whether another kernel closes it:

- ``cublas``: the call the lean forward makes today (the ReLU in cuBLASLt's epilogue, the
  residual products adding into the float32 stream in place).
- ``split``: the plain float16 product, then the ReLU / float32 add as a separate pass.
- ``inductor``: the same expression compiled with ``mode="max-autotune-no-cudagraphs"``, which
  benchmarks Triton templates against cuBLAS and keeps the fastest (``--persistent`` also offers
  the Hopper persistent TMA template).
- ``layouts``: the weights stored transposed, and the feed-forward pair on transposed
  activations (other operand layouts, other cuBLAS kernels).
- ``chunks``: the feed-forward pair in 2 or 4 slices of d_ff (other shapes, other kernels).
- ``bf16-valued``: float16 inputs whose values are all exactly representable in bf16 (3 low
  mantissa bits zero), timed with the ``cublas`` call: if these run at the bf16 rate the gap is
  the data (switching power), not the kernel choice.

Timing: wall time of 10 calls with the device drained before and after, median of 5, after
``--warmup-s`` of products. FLOPs = 2 · tokens · weights.

    python bench/embed_gemms.py            # on the device tool's GPU
    python bench/embed_gemms.py --tokens 256 --model tiny --device cpu   # smoke run (the
        # float32-output products are CUDA-only: on CPU they are recorded as errors)

Writes ``bench/results/embed-gemms-<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common
import torch

T5_11B_SHAPES = {"d_model": 1024, "inner": 128 * 128, "d_ff": 65536}
TINY_SHAPES = {"d_model": 64, "inner": 4 * 16, "d_ff": 256}


def operands(shapes: dict[str, int], tokens: int, dtype: torch.dtype, device: torch.device,
             *, bf16_valued: bool = False) -> dict[str, torch.Tensor]:
    dim, inner, ff = shapes["d_model"], shapes["inner"], shapes["d_ff"]
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, device=device, generator=gen) * 0.02
        if bf16_valued:
            t = t.bfloat16()
        return t.to(dtype)

    return {"x": randn(tokens, dim), "attended": randn(tokens, inner),
            "inner_act": randn(tokens, ff).relu_(), "w_qkv": randn(3 * inner, dim),
            "w_out": randn(dim, inner), "w_in": randn(ff, dim), "w_ff": randn(dim, ff),
            "hidden": torch.randn(tokens, dim, device=device, generator=gen),
            "zero": torch.zeros(ff, device=device, dtype=dtype)}


def weights_of(shapes: dict[str, int]) -> dict[str, int]:
    dim, inner, ff = shapes["d_model"], shapes["inner"], shapes["d_ff"]
    return {"qkv": 3 * inner * dim, "ff_in_relu": ff * dim, "out_add_fp32": dim * inner,
            "ff_out_add_fp32": dim * ff, "ff_in_relu_transposed_out": ff * dim,
            "ff_out_add_fp32_transposed_in": dim * ff,
            **{f"ff_in_relu_x{c}": ff * dim for c in (2, 4)},
            **{f"ff_out_add_fp32_x{c}": dim * ff for c in (2, 4)}}


def qkv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w.t()


def relu_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ w.t())


def residual_product(hidden: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return hidden + (a @ w.t()).float()


def cublas_calls(o: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    h = o["hidden"]
    return {
        "qkv": lambda: torch.mm(o["x"], o["w_qkv"].t()),
        "ff_in_relu": lambda: torch._addmm_activation(o["zero"], o["x"], o["w_in"].t()),
        "out_add_fp32": lambda: torch.addmm(h, o["attended"], o["w_out"].t(),
                                            out_dtype=torch.float32, out=h),
        "ff_out_add_fp32": lambda: torch.addmm(h, o["inner_act"], o["w_ff"].t(),
                                               out_dtype=torch.float32, out=h)}


def split_calls(o: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    h = o["hidden"]
    return {
        "ff_in_relu": lambda: torch.mm(o["x"], o["w_in"].t()).relu_(),
        "out_add_fp32": lambda: h.add_(torch.mm(o["attended"], o["w_out"].t())),
        "ff_out_add_fp32": lambda: h.add_(torch.mm(o["inner_act"], o["w_ff"].t()))}


def layout_calls(o: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """The same products with each weight stored transposed (``[in, out]`` contiguous), and the
    feed-forward pair computed on the transposed activations (``[d_ff, tokens]``), so cuBLAS
    sees other operand layouts and may choose other kernels."""
    h = o["hidden"]
    w_qkv_t, w_in_t = o["w_qkv"].t().contiguous(), o["w_in"].t().contiguous()
    w_out_t, w_ff_t = o["w_out"].t().contiguous(), o["w_ff"].t().contiguous()
    zero_t = torch.zeros(o["x"].shape[0], device=h.device, dtype=o["x"].dtype)
    inner_t = o["inner_act"].t().contiguous()
    return {
        "qkv": lambda: torch.mm(o["x"], w_qkv_t),
        "ff_in_relu": lambda: torch._addmm_activation(o["zero"], o["x"], w_in_t),
        "ff_in_relu_transposed_out": lambda: torch._addmm_activation(zero_t, o["w_in"],
                                                                   o["x"].t()),
        "out_add_fp32": lambda: torch.addmm(h, o["attended"], w_out_t, out_dtype=torch.float32,
                                            out=h),
        "ff_out_add_fp32": lambda: torch.addmm(h, o["inner_act"], w_ff_t,
                                               out_dtype=torch.float32, out=h),
        "ff_out_add_fp32_transposed_in": lambda: torch.addmm(
            h, inner_t.t(), o["w_ff"].t(), out_dtype=torch.float32, out=h)}


def chunked_calls(o: dict[str, torch.Tensor], chunks: int) -> dict[str, Callable[[], Any]]:
    """The feed-forward pair in ``chunks`` slices of d_ff: each slice's ReLU product, then its
    share of the output product added into the float32 stream (other shapes, other kernels)."""
    h, ff = o["hidden"], o["w_in"].shape[0]
    width = ff // chunks
    w_in = [o["w_in"][c * width:(c + 1) * width] for c in range(chunks)]
    w_ff = [o["w_ff"][:, c * width:(c + 1) * width] for c in range(chunks)]
    acts = [o["inner_act"][:, c * width:(c + 1) * width].contiguous() for c in range(chunks)]
    zero = o["zero"][:width]
    return {
        f"ff_in_relu_x{chunks}": lambda: [torch._addmm_activation(zero, o["x"], w.t())
                                          for w in w_in],
        f"ff_out_add_fp32_x{chunks}": lambda: [torch.addmm(h, a, w.t(), out_dtype=torch.float32,
                                                           out=h)
                                               for a, w in zip(acts, w_ff, strict=True)]}


def inductor_calls(o: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    mode = "max-autotune-no-cudagraphs"
    c_qkv = torch.compile(qkv, mode=mode, dynamic=False)
    c_relu = torch.compile(relu_product, mode=mode, dynamic=False)
    c_res = torch.compile(residual_product, mode=mode, dynamic=False)
    return {
        "qkv": lambda: c_qkv(o["x"], o["w_qkv"]),
        "ff_in_relu": lambda: c_relu(o["x"], o["w_in"]),
        "out_add_fp32": lambda: c_res(o["hidden"], o["attended"], o["w_out"]),
        "ff_out_add_fp32": lambda: c_res(o["hidden"], o["inner_act"], o["w_ff"])}


ATTENTION_SETTINGS = (  # (block_m, block_n, warps, stages)
    (64, 16, 4, 3), (64, 32, 4, 3), (64, 16, 4, 4), (64, 16, 4, 2), (64, 32, 4, 1),
    (64, 32, 2, 3), (64, 16, 2, 3), (32, 32, 2, 3), (128, 16, 4, 3), (64, 64, 4, 1))


def attention_settings(device: torch.device) -> dict[str, Any]:
    """The packed attention kernel over one layer of bench/embed.py's caption mix, in more
    launch settings than its ``--kernel-sweep`` tried."""
    import embed  # the bench script beside this one: its caption mix and sweep

    settings = [{"block_m": m, "block_n": n, "warps": w, "stages": st, "heads_inner": True}
                for m, n, w, st in ATTENTION_SETTINGS]
    return embed.kernel_sweep(embed.T5_11B, embed.mixed_caption_lengths(), 128, 4096, device,
                              settings, torch.float16)


def warm_up(shapes: dict[str, int], device: torch.device, seconds: float) -> None:
    """Products for ``seconds``: a GPU just handed out runs its first seconds at other clocks."""
    o = operands(shapes, 4096, torch.bfloat16 if device.type == "cuda" else torch.float32,
                 device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        common.timed(lambda: [torch.mm(o["x"], o["w_in"].t()) for _ in range(10)], device)


def seconds_per_call(run: Callable[[], Any], device: torch.device) -> float:
    run()
    return common.median([common.timed(lambda: [run() for _ in range(10)], device)[0] / 10
                          for _ in range(5)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("t5-11b", "tiny"), default="t5-11b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", default="3968",
                        help="rows of each product, comma-separated (a packed 4,096-token batch "
                             "holds ~3,968)")
    parser.add_argument("--reductions", default="on",
                        help="cuBLAS reduced-precision reductions allowed (on) / forbidden (off), "
                             "comma-separated: each is timed (its kernel choice may change)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time everything this many times over, interleaved")
    parser.add_argument("--warmup-s", type=float, default=10.0,
                        help="run products this long first, so clocks have settled")
    parser.add_argument("--ways", default="cublas,split,bf16-valued,inductor",
                        help="comma-separated, of: cublas, split, bf16-valued, inductor, "
                             "layouts, chunks (see the module docstring)")
    parser.add_argument("--persistent", action="store_true",
                        help="let inductor try its persistent TMA matmul template too")
    parser.add_argument("--attention", action="store_true",
                        help="also time the packed attention kernel in more launch settings "
                             "(float16, the caption mix of bench/embed.py)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    shapes = T5_11B_SHAPES if args.model == "t5-11b" else TINY_SHAPES
    weights = weights_of(shapes)
    name = common.device_name(device)
    if args.persistent:
        import torch._inductor.config as inductor_config

        inductor_config.triton.enable_persistent_tma_matmul = True
    record: dict[str, Any] = {"benchmark": "embed-gemms", "device": name,
                              "torch": torch.__version__, "date": common.now(),
                              "command": " ".join(sys.argv),
                              "shapes": shapes, "rows": [], "errors": []}
    out_path = args.out or common.RESULTS / f"embed-gemms-{common.slug(name.split(' (')[0])}.json"
    ways = args.ways.split(",")
    dtypes = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    warm_up(shapes, device, args.warmup_s)
    for _, tokens, dtype, way, reduction in itertools.product(
            range(args.rounds), [int(t) for t in args.tokens.split(",")], dtypes, ways,
            args.reductions.split(",")):
        if way == "bf16-valued" and dtype != torch.float16:
            continue
        matmul = torch.backends.cuda.matmul
        matmul.allow_fp16_reduced_precision_reduction = reduction == "on"
        matmul.allow_bf16_reduced_precision_reduction = reduction == "on"
        o = operands(shapes, tokens, dtype, device, bf16_valued=way == "bf16-valued")
        try:
            t0 = time.perf_counter()
            calls = {"cublas": cublas_calls, "bf16-valued": cublas_calls,
                     "split": split_calls, "inductor": inductor_calls,
                     "layouts": layout_calls,
                     "chunks": lambda o: {**chunked_calls(o, 2), **chunked_calls(o, 4)}
                     }[way](o)
            for product, run in calls.items():
                seconds = seconds_per_call(run, device)
                row = {"way": way, "dtype": str(dtype).removeprefix("torch."),
                       "tokens": tokens, "reduced_reduction": reduction,
                       "product": product, "ms": seconds * 1e3,
                       "tflops": 2 * tokens * weights[product] / seconds / 1e12,
                       "setup_and_timing_s": time.perf_counter() - t0}
                record["rows"].append(row)
                print(f"{tokens:5d} {row['dtype']:9s} {way:12s} {reduction:3s} {product:16s} "
                      f"{row['ms']:7.3f} ms "
                      f"{row['tflops']:5.0f} TFLOP/s", flush=True)
        except Exception as exc:  # one failing way must not lose the others' figures
            record["errors"].append({"way": way, "dtype": str(dtype),
                                     "error": f"{type(exc).__name__}: {exc}"})
            print(f"ERROR {way} {dtype}: {exc}", flush=True)
        common.write_json(record, out_path)
        del o
    if args.attention:
        record["attention"] = attention_settings(device)
        common.write_json(record, out_path)
    layer = {}
    for row in record["rows"]:
        key = (row["tokens"], row["dtype"], row["way"], row["reduced_reduction"])
        layer.setdefault(key, {}).setdefault(row["product"], []).append(row["ms"])
    record["layer_ms"] = [{"tokens": t, "dtype": d, "way": w, "reduced_reduction": r,
                           "ms": sum(common.median(v) for v in ms.values()),
                           "products": sorted(ms)} for (t, d, w, r), ms in layer.items()]
    common.write_json(record, out_path)
    common.print_table([(str(r["tokens"]), r["dtype"], r["way"], r["reduced_reduction"],
                         f"{r['ms']:.3f}", ",".join(r["products"])) for r in record["layer_ms"]],
                       ("tokens", "dtype", "way", "reduced", "ms (sum of medians)",
                        "products"))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
