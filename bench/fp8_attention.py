"""Self-attention of the 7B base (32 heads of 128) in FP8 against bf16, kernel by kernel.

At each length, one process, one GPU, medians of ``--repeats``:

* bf16: ``scaled_dot_product_attention`` with the cuDNN and the flash backends, forward and
  forward + backward, on q/k/v in the model's ``[B, L, H, Dh]`` storage;
* FP8: :mod:`ctrlpost.models.fp8_attention` — the fused cuDNN kernels alone (inputs already
  quantized; cuDNN's first-ranked plans, then every plan timed and the fastest kept, with each
  plan's time), and the whole attention function with a bf16 output (``fp8_self_attention``:
  quantizing q/k/v/dO, widening the output and the gradients, the delayed-scale check; the
  model's blocks run ``fp8_self_attention_projected``, which hands the e4m3 output to the FP8
  output projection instead of widening it);
* error of the FP8 output and gradients against the bf16 cuDNN ones (relative L2); and, at
  2,048 tokens, the fused kernels against ctrlpost's float32 reference of the same FP8 steps.

Attention FLOPs (what runs): forward 4·B·H·L²·Dh, backward 2.5x that (the scores recomputed).

Usage (on the GPU): ``python bench/fp8_attention.py --lengths 56320,14080 --out FILE``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

common.ensure_ctrlpost_importable()

from ctrlpost.models import fp8_attention as fa  # noqa: E402


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def timed_median(fn: Any, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (graph build, autotuning)
    return common.median([common.timed(fn, device)[0] for _ in range(repeats)])


def inputs(length: int, heads: int, head_dim: int, device: torch.device, seed: int
           ) -> tuple[torch.Tensor, ...]:
    """q, k (RMS-normalised, as after the model's q/k norm), v, dO; [B, H, L, Dh] views of
    [B, L, H, Dh] storage."""
    g = torch.Generator(device=device).manual_seed(seed)

    def t(std: float) -> torch.Tensor:
        x = torch.randn(1, length, heads, head_dim, device=device, generator=g) * std
        return x.to(torch.bfloat16).transpose(1, 2)

    return t(1.0), t(1.0), t(0.5), t(1e-3)


def measure(length: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v, d_o = inputs(length, args.heads, args.head_dim, device, seed=length)
    fwd_flops = 4 * args.heads * length**2 * args.head_dim
    row: dict[str, Any] = {"tokens": length, "fwd_flops": fwd_flops,
                           "bwd_flops": 2.5 * fwd_flops}
    reference: dict[str, torch.Tensor] = {}
    backends = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION))
    for name, backend in backends:
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]

        def fwd(backend: Any = backend, leaves: list[torch.Tensor] = leaves) -> torch.Tensor:
            with sdpa_kernel([backend]), torch.no_grad():
                return sdpa(*leaves)

        def fwd_bwd(backend: Any = backend, leaves: list[torch.Tensor] = leaves) -> None:
            with sdpa_kernel([backend]):
                out = sdpa(*leaves)
            torch.autograd.backward(out, d_o)

        try:
            t_f = timed_median(fwd, device, args.repeats)
            t_fb = timed_median(fwd_bwd, device, args.repeats)
        except RuntimeError as error:
            row[f"bf16_{name}"] = {"error": str(error).splitlines()[0]}
            continue
        row[f"bf16_{name}"] = {"fwd_s": t_f, "bwd_s": t_fb - t_f, "fwd_bwd_s": t_fb}
        if name == "cudnn":
            for leaf in leaves:
                leaf.grad = None
            with sdpa_kernel([backend]):
                out = sdpa(*leaves)
            torch.autograd.backward(out, d_o)
            reference = {"out": out.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad,
                         "dv": leaves[2].grad}

    # FP8, the whole attention function (the output widened to bf16).
    scales = torch.zeros(4, device=device)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    # The function as a block calls it: eager, and compiled (the quantization of q, k, v and dO
    # and the widening of the gradients fused into a few kernels, as in a compiled block).
    for name, attend in (("fp8_function", fa.fp8_self_attention),
                         ("fp8_function_compiled", torch.compile(fa.fp8_self_attention))):
        def fp8_fwd(attend: Any = attend) -> torch.Tensor:
            with torch.no_grad():
                return attend(*leaves, scales)

        def fp8_fwd_bwd(attend: Any = attend) -> None:
            torch.autograd.backward(attend(*leaves, scales), d_o)

        redone = fa.REDONE[0]
        t_f = timed_median(fp8_fwd, device, args.repeats)
        t_fb = timed_median(fp8_fwd_bwd, device, args.repeats)
        row[name] = {"fwd_s": t_f, "bwd_s": t_fb - t_f, "fwd_bwd_s": t_fb,
                     "redone": fa.REDONE[0] - redone}
    for leaf in leaves:
        leaf.grad = None
    out = fa.fp8_self_attention(*leaves, scales)
    torch.autograd.backward(out, d_o)
    got = {"out": out.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
    row["backward_scales"] = scales.tolist()
    if reference:
        row["fp8_error_vs_bf16"] = {name: rel_l2(got[name], reference[name]) for name in got}
        row["reference_amax"] = {name: float(reference[name].abs().max()) for name in reference}

    # The fused kernels alone (inputs quantized once, outside the timing).
    with torch.no_grad():
        q8, k8, v8, descales = fa.quantize_inputs(q, k, v)
        out8, stats = fa.fp8_attention_op(q8, k8, v8, descales)
    fwd_scalars = fa.forward_scalars(descales)
    amax_fwd = {name: torch.zeros(1, 1, 1, 1, device=device) for name in ("amax_s", "amax_o")}

    def kernel_fwd() -> None:
        fa._GRAPHS.forward(q8, k8, v8, out8, stats, fwd_scalars, amax_fwd)

    do_scale = fa.power_of_two_scale(d_o.abs().amax())
    bwd_inputs = {"q": q8, "k": k8, "v": v8, "o": out8, "stats": stats,
                  "dO": (d_o * do_scale.to(d_o.dtype)).to(fa.FP8)}
    grads = {"dQ": torch.empty_like(q8), "dK": torch.empty_like(k8), "dV": torch.empty_like(v8)}
    bwd_scalars = fa.backward_scalars(descales, do_scale.reciprocal(), scales)
    amax_bwd = {f"amax_{n}": torch.zeros(1, 1, 1, 1, device=device)
                for n in ("dP", "dQ", "dK", "dV")}

    def kernel_bwd() -> None:
        fa._GRAPHS.backward(bwd_inputs, grads, bwd_scalars, amax_bwd)

    k_f = timed_median(kernel_fwd, device, args.repeats)
    k_b = timed_median(kernel_bwd, device, args.repeats)
    row["fp8_kernels"] = {"fwd_s": k_f, "bwd_s": k_b, "fwd_bwd_s": k_f + k_b}

    # The same kernels with every plan of cuDNN's ranked list timed and the fastest kept (the
    # first call of each graph tunes it: inside timed_median's warm-up).
    tuned = fa._CudnnGraphs(autotune=True)
    t_f = timed_median(lambda: tuned.forward(q8, k8, v8, out8, stats, fwd_scalars, amax_fwd),
                       device, args.repeats)
    t_b = timed_median(lambda: tuned.backward(bwd_inputs, grads, bwd_scalars, amax_bwd),
                       device, args.repeats)
    row["fp8_kernels_autotuned"] = {
        "fwd_s": t_f, "bwd_s": t_b, "fwd_bwd_s": t_f + t_b,
        "plans": {key[0]: rows for key, rows in tuned.plan_times.items()}}
    for which, rows in row["fp8_kernels_autotuned"]["plans"].items():
        print(f"{length} fp8 {which} plans: " + "; ".join(
            f"{r['index']} {r['plan']} {r['ms']:.1f} ms" if "ms" in r else f"{r['index']} -"
            for r in rows), flush=True)
    row["reported_amax"] = {name: float(x) for name, x in amax_bwd.items()}
    base = row.get("bf16_cudnn", {})
    if "fwd_s" in base:
        row["speedup_vs_bf16_cudnn"] = {
            "function_fwd_bwd": base["fwd_bwd_s"] / row["fp8_function"]["fwd_bwd_s"],
            "compiled_function_fwd_bwd":
                base["fwd_bwd_s"] / row["fp8_function_compiled"]["fwd_bwd_s"],
            "function_fwd": base["fwd_s"] / row["fp8_function"]["fwd_s"],
            "kernels_fwd": base["fwd_s"] / k_f, "kernels_bwd": base["bwd_s"] / k_b,
            "kernels_fwd_bwd": base["fwd_bwd_s"] / (k_f + k_b),
            "autotuned_kernels_fwd": base["fwd_s"] / t_f,
            "autotuned_kernels_bwd": base["bwd_s"] / t_b}
        row["bf16_cudnn_tflops"] = {"fwd": fwd_flops / base["fwd_s"] / 1e12,
                                    "bwd": 2.5 * fwd_flops / base["bwd_s"] / 1e12}
        row["fp8_kernel_tflops"] = {"fwd": fwd_flops / k_f / 1e12,
                                    "bwd": 2.5 * fwd_flops / k_b / 1e12}
    return row


def fused_against_reference(length: int, args: argparse.Namespace, device: torch.device
                            ) -> dict[str, Any]:
    """The fused kernels against ctrlpost's float32 reference of the same FP8 computation
    (same quantized inputs and scales), at a length the reference holds in memory."""
    q, k, v, d_o = inputs(length, args.heads, args.head_dim, device, seed=7)
    results = {}
    for name, fused in (("fused", True), ("reference", False)):
        available = fa.cudnn_available
        fa.cudnn_available = lambda _device, fused=fused: fused  # type: ignore[assignment]
        try:
            scales = torch.zeros(4, device=device)
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]
            for _ in range(2):  # the second call runs on delayed scales
                for leaf in leaves:
                    leaf.grad = None
                out = fa.fp8_self_attention(*leaves, scales)
                torch.autograd.backward(out, d_o)
            results[name] = {"out": out.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad,
                             "dv": leaves[2].grad, "scales": scales.clone()}
        finally:
            fa.cudnn_available = available  # type: ignore[assignment]
    fused_r, ref_r = results["fused"], results["reference"]
    errors = {n: rel_l2(fused_r[n], ref_r[n]) for n in ("out", "dq", "dk", "dv")}
    return {"tokens": length, "fused_vs_reference": errors,
            "scales_fused": fused_r["scales"].tolist(),
            "scales_reference": ref_r["scales"].tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="56320,14080")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    import cudnn

    record: dict[str, Any] = {"bench": "fp8_attention", "when": common.now(),
                              "device": common.device_name(device), "torch": torch.__version__,
                              "cudnn_backend": cudnn.backend_version(),
                              "cudnn_frontend": getattr(cudnn, "__version__", "?"),
                              "what": "self-attention kernels, B=1, [B,L,H,Dh] storage",
                              "ceiling": common.matmul_ceiling(device), "rows": []}
    try:
        record["fused_vs_reference"] = fused_against_reference(2048, args, device)
        print(record["fused_vs_reference"], flush=True)
    except Exception as error:
        traceback.print_exc()
        record["fused_vs_reference"] = {"error": f"{type(error).__name__}: {error}"}
    for length in [int(x) for x in args.lengths.split(",")]:
        try:
            row = measure(length, args, device)
        except Exception as error:
            traceback.print_exc()
            row = {"tokens": length, "error": f"{type(error).__name__}: {error}"}
        record["rows"].append(row)
        print(row, flush=True)
        common.write_json(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
