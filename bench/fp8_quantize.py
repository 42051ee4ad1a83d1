"""The FP8 base's costliest quantization, several ways: the MLP's GELU output and its gradient,
row-quantized to e4m3 for the next product, at the 7B base's shape (56,320 tokens × 16,384).

In the FP8 step at 56,320 tokens these two compiled reductions took 0.23 s of 9.78 (bench/NOTES.md:
3.5 ms a block forward, 4.7 ms backward, against 1.6 and 2.2 ms for bf16's GELU kernels), about
what the step lacks for 1.3x bf16. Each reads its input twice (the rows' maxima, then the scaled
cast) and computes the GELU (or its derivative) in both passes. Variants, each compiled alone:

* ``shipped``: :func:`ctrlpost.models.fp8.quantize_rows` of the GELU output (scale = max / 448,
  divide, clamp), as ``model.base_precision = "fp8"`` runs it;
* ``pow2``: the same maxima, the scale rounded up to a power of two: multiplying by its
  reciprocal is exact (no division, no clamp), at most one bit of e4m3's range left unused;
* ``pow2-bound``: ``pow2`` whose forward maxima come from the GELU's input (``GELU(x) ≤ max(x,
  0)`` and ``|GELU(x)| < 0.17`` below zero), so the first pass computes no erf; the gradient's
  maxima from ``|GELU'(x)| ≤ 1.13``.

Each: median of ``--repeats`` calls, and the relative L2 distance of the dequantized tensor from
the bf16 one (e4m3 keeps 3 mantissa bits: ~2-3 % for every variant; a variant that lost range
would show more).

Then the weights: one block's token-wise linear weights at the ``--flavor``'s sizes, quantized
as every FP8 product does at each call (forward: per output feature; input gradient: the
transposed copy per input feature, for the eight layers whose input needs a gradient), one
compiled op each way, each once per block (the backward's recomputation quantizes some forward
weights again): what caching them across calls (the base is frozen) would save at least,
against the e4m3 bytes the cache would hold.

Usage (on the GPU): ``python bench/fp8_quantize.py --out bench/results/fp8_quantize-<gpu>.json``;
on the CPU, small: ``python bench/fp8_quantize.py --device cpu --tokens 256 --hidden 512``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

common.ensure_ctrlpost_importable()
from ctrlpost.models.fp8 import FP8, quantize_rows  # noqa: E402
from ctrlpost.models.fp8_attention import power_of_two_scale  # noqa: E402

GELU_NEGATIVE_BOUND = 0.17  # |GELU(x)| < 0.17 for x < 0 (its minimum is -0.16997 at x ≈ -0.75)
GELU_SLOPE_BOUND = 1.13  # |GELU'(x)| ≤ 1.1289 (its maximum, at x ≈ 1.41)

Quantizer = Callable[..., tuple[Tensor, Tensor]]


def _pow2_rows(x_M_K: Tensor, amax_M_1: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` in e4m3 with power-of-two row scales covering ``amax`` (a bound on each row's
    largest magnitude), and the scales (``x ≈ x_fp8 · scale``)."""
    multiplier_M_1 = power_of_two_scale(amax_M_1)  # the FP8 attention's per-tensor rule, by row
    return (x_M_K.float() * multiplier_M_1).to(FP8), multiplier_M_1.reciprocal()


def gelu_shipped(h: Tensor) -> tuple[Tensor, Tensor]:
    return quantize_rows(F.gelu(h))


def gelu_pow2(h: Tensor) -> tuple[Tensor, Tensor]:
    y = F.gelu(h)
    return _pow2_rows(y, y.abs().amax(dim=1, keepdim=True))


def gelu_pow2_bound(h: Tensor) -> tuple[Tensor, Tensor]:
    bound = h.amax(dim=1, keepdim=True).float().clamp_min(GELU_NEGATIVE_BOUND)
    return _pow2_rows(F.gelu(h), bound)


def _gelu_grad(grad: Tensor, h: Tensor) -> Tensor:
    return torch.ops.aten.gelu_backward(grad, h)


def grad_shipped(grad: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return quantize_rows(_gelu_grad(grad, h))


def grad_pow2(grad: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    d = _gelu_grad(grad, h)
    return _pow2_rows(d, d.abs().amax(dim=1, keepdim=True))


def grad_pow2_bound(grad: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    bound = grad.abs().amax(dim=1, keepdim=True).float() * GELU_SLOPE_BOUND
    return _pow2_rows(_gelu_grad(grad, h), bound)


VARIANTS: dict[str, tuple[Quantizer, Quantizer]] = {
    "shipped": (gelu_shipped, grad_shipped),
    "pow2": (gelu_pow2, grad_pow2),
    "pow2-bound": (gelu_pow2_bound, grad_pow2_bound),
}
"""name → (forward quantizer of GELU(h), backward quantizer of GELU'(h)·grad)."""


def block_weights(flavor: str, device: torch.device) -> dict[str, Tensor]:
    """One DiT block's token-wise linear weights (``[out, in]``, bf16) at ``flavor``'s sizes."""
    from ctrlpost.models.args import get_flavor

    base = get_flavor(flavor).base
    d, hidden, text = base.model_channels, base.mlp_hidden, base.text_dim
    shapes = {"self_q": (d, d), "self_k": (d, d), "self_v": (d, d), "self_out": (d, d),
              "cross_q": (d, d), "cross_k": (d, text), "cross_v": (d, text),
              "cross_out": (d, d), "mlp_in": (hidden, d), "mlp_out": (d, hidden)}
    generator = torch.Generator(device=device).manual_seed(1)
    return {name: torch.randn(*shape, device=device, dtype=torch.bfloat16,
                              generator=generator) * 0.02 for name, shape in shapes.items()}


def quantize_weights(weights: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    return [quantize_rows(w) for w in weights]


def quantize_weights_transposed(weights: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    return [quantize_rows(w.t().contiguous()) for w in weights]


def _rel_l2(quantized: tuple[Tensor, Tensor], exact: Tensor) -> float:
    x_fp8, scale = quantized
    diff = x_fp8.float() * scale - exact.float()
    return float(diff.norm() / exact.float().norm().clamp_min(1e-30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=56_320)
    parser.add_argument("--hidden", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--flavor", default="7b", help="the block whose weights are quantized")
    parser.add_argument("--blocks", type=int, default=28, help="blocks per step (the 7b base)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    # pre-activations and gradients of the scale a trained MLP sees (unit pre-activations)
    h = torch.randn(args.tokens, args.hidden, device=device, dtype=torch.bfloat16,
                    generator=generator)
    grad = torch.randn(args.tokens, args.hidden, device=device, dtype=torch.bfloat16,
                       generator=generator) * 1e-3
    exact = {"forward": F.gelu(h), "backward": _gelu_grad(grad, h)}
    record: dict[str, Any] = {
        "benchmark": "fp8_quantize", "device": common.device_name(device),
        "torch": torch.__version__, "date": common.now(), "command": " ".join(sys.argv),
        "shape": [args.tokens, args.hidden], "rows": []}
    for name in args.variants.split(","):
        forward, backward = VARIANTS[name]
        for direction, fn, inputs in (("forward", forward, (h,)),
                                      ("backward", backward, (grad, h))):
            compiled = torch.compile(fn, dynamic=False, fullgraph=True)
            compiled(*inputs)  # compiles
            seconds, times, result = common.timed_median(
                lambda: compiled(*inputs), device, repeats=args.repeats)  # noqa: B023
            row = {"variant": name, "direction": direction, "median_ms": seconds * 1e3,
                   "times_s": times, "rel_l2_vs_bf16": _rel_l2(result, exact[direction]),
                   "max_abs_fp8": float(result[0].float().abs().max())}
            record["rows"].append(row)
            print(f"{name:12s} {direction:8s} {row['median_ms']:8.3f} ms  "
                  f"rel L2 {row['rel_l2_vs_bf16']:.2e}  max |e4m3| {row['max_abs_fp8']:.0f}",
                  flush=True)
    weights = block_weights(args.flavor, device)
    needs_gradient = [w for name, w in weights.items() if name not in ("cross_k", "cross_v")]
    record["weights"] = {"flavor": args.flavor, "blocks": args.blocks,
                         "cache_bytes_per_block": sum(2 * w.numel() for w in needs_gradient)
                         + sum(w.numel() for name, w in weights.items()
                               if name in ("cross_k", "cross_v"))}
    for direction, fn, group in (("forward", quantize_weights, list(weights.values())),
                                 ("input gradient", quantize_weights_transposed, needs_gradient)):
        compiled = torch.compile(fn, dynamic=False)
        compiled(group)
        seconds, _, _ = common.timed_median(lambda: compiled(group), device,  # noqa: B023
                                            repeats=args.repeats)
        record["weights"][direction] = {"layers": len(group), "median_ms": seconds * 1e3,
                                        "per_step_ms": seconds * 1e3 * args.blocks}
        print(f"weights {direction:14s} {len(group):2d} layers {seconds * 1e3:8.3f} ms a block, "
              f"{seconds * args.blocks:.3f} s a step of {args.blocks} blocks", flush=True)
    print(f"a cache of both: {record['weights']['cache_bytes_per_block'] * args.blocks / 1e9:.1f}"
          f" GB of e4m3 for {args.blocks} blocks")
    if args.out:
        common.write_json(record, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
