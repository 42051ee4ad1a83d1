"""`embed`'s float16 pass over bench/embed.py's caption mix, variants timed in alternation
while ``nvidia-smi`` logs power and SM clock: is the whole pass at the GPU's power limit, and
does a change that speeds up a kernel alone speed up the pass?

Variants: ``lean`` (what `embed` runs), ``lean-bf16`` (the same with bf16 weights),
``lean-no-tma`` (the attention kernel on computed addresses instead of tensor descriptors),
``lean-gather`` (the attention kernel reading each score's bias by its own offset, as before
the bias run: bench/attention_variants.py's ``tma``), ``lean-bn32`` / ``lean-bn16`` (the kernel
with 32 / 16 keys per tile), ``lean-bm128`` (128 queries per tile, 8 warps), ``lean-torchnorm``
(the norms as ``F.rms_norm`` then a cast, as before ``ctrlpost.embed.kernels.fused_norm``),
``lean-split`` / ``lean-split96`` (captions of at most 64 / 96 tokens in 64-query tiles, longer
ones in 128-query tiles: two launches per layer), ``lean-att:<setting>=<int>/…`` (the attention
kernel with other launch settings, e.g. ``lean-att:block_n=64/warps=8``),
``lean-lt:qkv=<rank>/ff_in=<rank>`` (those products on another of cuBLASLt's heuristic
candidates, see :class:`HeuristicPicks`), ``lean-tokens<N>`` (batches of at most N tokens
instead of the recipe's), ``lean-first<N>`` (the first chunk tokenized is N captions instead of
64). Each variant's embeddings are compared with the first's after the warm-up. The logger also
records why the SM clock is lowered (nvidia-smi's clock event reasons: the software power cap,
thermal, power brake). Each pass's energy comes from NVML's counter (it moves every ~100 ms, so
one pass's reading is good to a few %).

    python bench/embed_power.py --variants lean,lean-gather --rounds 5
    python bench/embed_power.py --variants lean --rounds 0 --trace   # where a pass's time goes

``--trace`` profiles one pass of each variant and splits its wall time into kernel time by
kind (products, attention, the rest) and the time the GPU sat idle: before the first kernel,
after the last one, and between kernels (the longest gaps with the kernels around them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import _common as common
import torch

common.ensure_ctrlpost_importable()

import embed  # noqa: E402  (the bench script beside this one)
from ctrlpost.embed import run as embed_module  # noqa: E402
from ctrlpost.embed import t5  # noqa: E402
from ctrlpost.embed.kernels import fused_norm, packed_attention  # noqa: E402
from ctrlpost.embed.run import TextEncoder, lean_network  # noqa: E402
from ctrlpost.recipe import EmbedOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


DEFAULTS = EmbedOptions()  # `embed`'s batching
VARIANTS = ("lean", "lean-no-tma", "lean-gather", "lean-bn32", "lean-bn16", "lean-bm128",
            "lean-torchnorm", "lean-split", "lean-split96")


def torch_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
               dtype: torch.dtype) -> torch.Tensor:
    """The norm as `embed` ran it before the fused kernel: ``F.rms_norm``, then a cast."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps).to(dtype)


def gather_attention(qkv: torch.Tensor, bias: torch.Tensor, starts: torch.Tensor,
                     lengths: torch.Tensor, *, max_length: int, heads: int, head_dim: int,
                     **_: Any) -> torch.Tensor:
    import attention_variants

    return attention_variants.tma_variant(
        qkv, bias, {"starts": starts, "lengths": lengths, "longest": max_length},
        heads=heads, head_dim=head_dim, block_m=64, block_n=16, warps=4, stages=3,
        warp_specialize=False, tma_store=False, bias_mode=1)


def split_encode_packed(encoder: t5.T5Encoder, ids_T: torch.Tensor, lengths: list[int], *,
                        short: int = 64) -> torch.Tensor:
    """``encode_packed`` with two attention launches per layer (``lean-split``): captions of
    at most ``short`` tokens in 64-query tiles (4 warps), longer ones in 128-query tiles
    (8 warps), so a caption of 65–128 tokens is one program reading its keys once, not two."""
    import numpy as np
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from ctrlpost.embed.kernels.fused_norm import rms_norm_to

    device, heads, head_dim = ids_T.device, encoder.heads, encoder.head_dim
    starts = np.cumsum([0, *lengths[:-1]])
    groups = []
    for chosen, block_m, warps in (([i for i, n in enumerate(lengths) if n <= short], 64, 4),
                                   ([i for i, n in enumerate(lengths) if n > short], 128, 8)):
        if not chosen:
            continue
        starts_S = torch.tensor([int(starts[i]) for i in chosen], dtype=torch.int32)
        lengths_S = torch.tensor([lengths[i] for i in chosen], dtype=torch.int32)
        if device.type == "cuda":
            starts_S, lengths_S = starts_S.pin_memory(), lengths_S.pin_memory()
        groups.append((starts_S.to(device, non_blocking=True),
                       lengths_S.to(device, non_blocking=True),
                       max(lengths[i] for i in chosen), block_m, warps))
    bias_H_O = t5.offset_bias(encoder, max(lengths), device)

    def attention(qkv: torch.Tensor) -> torch.Tensor:
        out = torch.empty(qkv.shape[0], heads * head_dim, dtype=qkv.dtype, device=device)
        kv_desc = TensorDescriptor.from_tensor(qkv, [32, head_dim])
        for starts_S, lengths_S, longest, block_m, warps in groups:
            q_desc = TensorDescriptor.from_tensor(qkv, [block_m, head_dim])
            grid = (heads, -(-longest // block_m), starts_S.shape[0])
            packed_attention._kernel()[grid](
                qkv, q_desc, kv_desc, out, bias_H_O, starts_S, lengths_S, bias_H_O.stride(0),
                (bias_H_O.shape[1] - 1) // 2, HEADS=heads, HEAD_DIM=head_dim, BLOCK_M=block_m,
                BLOCK_N=32, HEADS_INNER=True, TMA=True,
                WINDOW=triton.next_power_of_2(block_m + 31), num_warps=warps, num_stages=3)
        return out

    def norm(hidden: torch.Tensor, weight_D: torch.Tensor) -> torch.Tensor:
        return rms_norm_to(hidden, weight_D, encoder.eps, encoder.compute_dtype)

    return t5._stack(encoder, encoder.embedding_V_D[ids_T], attention, norm)


class HeuristicPicks:
    """The q/k/v and the ReLU feed-forward products on a chosen candidate of cuBLASLt's
    heuristic (by rank, per product: ``lean-lt:qkv=5/ff_in=2``) instead of torch's call; the
    other products stay torch's. bench/cublaslt_algos.py's ``--energy`` run ranks them by time
    held at the power limit. One descriptor set per (product, rows), made on first use."""

    def __init__(self, picks: dict[str, int]):
        import ctypes

        import cublaslt_algos as lt

        self.lt, self.picks = lt, picks
        self.lib = lt.load_cublaslt()
        self.handle = ctypes.c_void_p()
        lt.check(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "create")
        self.ready: dict[tuple[str, int], tuple[Any, Any]] = {}

    def _run(self, name: str, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
             epilogue: str) -> None:
        key = (name, x.shape[0])
        if key not in self.ready:
            product = self.lt.Product(self.lib, self.handle, x, w, out, epilogue=epilogue,
                                      accumulate=False)
            algos = product.algorithms(8)
            self.ready[key] = (product, algos[min(self.picks[name], len(algos) - 1)])
        product, algo = self.ready[key]
        product.x, product.w, product.out = x, w, out
        product.run(algo)

    def _product(self, name: str, x: torch.Tensor, weight: torch.Tensor,
                 epilogue: str) -> torch.Tensor:
        x_2d = x.reshape(-1, x.shape[-1])
        out = torch.empty(x_2d.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
        self._run(name, x_2d, weight, out, epilogue)
        return out.view(*x.shape[:-1], weight.shape[0])

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if "qkv" not in self.picks:  # the T5 stack's only plain product is the fused q/k/v
            return torch.nn.functional.linear(x, weight)
        return self._product("qkv", x, weight, "default")

    def linear_relu(self, x: torch.Tensor, weight: torch.Tensor,
                    zero_bias: torch.Tensor | None) -> torch.Tensor:
        if "ff_in" not in self.picks:
            return t5.linear_relu(x, weight, zero_bias)
        return self._product("ff_in", x, weight, "relu_bias")

    def patched(self) -> contextlib.ExitStack:
        functional = type("Functional", (), {
            "__getattr__": lambda _, name: getattr(torch.nn.functional, name),
            "linear": staticmethod(self.linear)})()
        stack = contextlib.ExitStack()
        stack.enter_context(mock.patch.object(t5, "F", functional))
        stack.enter_context(mock.patch.object(t5, "linear_relu", self.linear_relu))
        return stack


_PICKS: dict[str, HeuristicPicks] = {}


def run_variant(variant: str, encoder: TextEncoder, captions: list[str]) -> Any:
    """One pass as `embed` batches it, with ``variant``'s change patched in."""
    patches = {"lean-no-tma": ("copies_by_tma", lambda qkv: False),
               "lean-gather": ("packed_attention", gather_attention),
               "lean-bn32": ("packed_attention",
                             functools.partial(packed_attention.packed_attention, block_n=32)),
               "lean-bn16": ("packed_attention",
                             functools.partial(packed_attention.packed_attention, block_n=16)),
               "lean-bm128": ("packed_attention",
                              functools.partial(packed_attention.packed_attention,
                                                block_m=128, warps=8))}
    max_tokens = DEFAULTS.batch_tokens
    patch: Any = contextlib.nullcontext()
    if variant in patches:
        patch = mock.patch.object(packed_attention, *patches[variant])
    elif variant.startswith("lean-att:"):
        settings = dict(kv.split("=") for kv in variant.removeprefix("lean-att:").split("/"))
        patch = mock.patch.object(packed_attention, "packed_attention", functools.partial(
            packed_attention.packed_attention, **{k: int(v) for k, v in settings.items()}))
    elif variant.startswith("lean-lt:"):
        if variant not in _PICKS:
            _PICKS[variant] = HeuristicPicks({
                k: int(v) for k, v in (kv.split("=") for kv in
                                       variant.removeprefix("lean-lt:").split("/"))})
        patch = _PICKS[variant].patched()
    elif variant.startswith("lean-split"):
        patch = mock.patch.object(embed_module, "encode_packed", functools.partial(
            split_encode_packed, short=int(variant.removeprefix("lean-split") or 64)))
    elif variant == "lean-torchnorm":
        patch = mock.patch.object(fused_norm, "rms_norm_to", torch_norm)
    elif variant.startswith("lean-tokens"):
        max_tokens = int(variant.removeprefix("lean-tokens"))
    elif variant.startswith("lean-first"):
        patch = mock.patch.object(embed_module, "FIRST_CHUNK",
                                  int(variant.removeprefix("lean-first")))
    elif variant != "lean":
        raise SystemExit(f"unknown variant {variant!r}")
    with patch:
        return embed.ctrlpost_pass(encoder, captions, DEFAULTS.batch_size,
                                   max_tokens=max_tokens)


CLOCK_REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal_slowdown",
                 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake"}  # nvidia-smi's bits


def max_difference(ours: dict[int, Any], theirs: dict[int, Any]) -> float:
    """Largest |ours − theirs| over all captions, relative to each caption's output RMS."""
    worst = 0.0
    for i, a in ours.items():
        b = theirs[i].astype("float32")
        rms = float((b * b).mean() ** 0.5)
        worst = max(worst, float(abs(a.astype("float32") - b).max()) / max(rms, 1e-30))
    return worst


def samples_between(log: Path, start: float, end: float) -> dict[str, float]:
    """Mean power (W) and SM clock (MHz) of the samples logged in [start, end] (Unix s), and
    the fraction of samples in which each clock-lowering reason was active."""
    power, clock, reasons = [], [], []
    for line in log.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3:
            continue
        try:
            stamp, watts, mhz = float(fields[0]), float(fields[1]), float(fields[2])
            mask = int(fields[3], 16) if len(fields) > 3 else None
        except ValueError:
            continue
        if start <= stamp <= end:
            power.append(watts)
            clock.append(mhz)
            if mask is not None:
                reasons.append(mask)
    if not power:
        return {"samples": 0}
    record: dict[str, float] = {"samples": len(power), "power_w": sum(power) / len(power),
                                "power_max_w": max(power), "sm_mhz": sum(clock) / len(clock)}
    for bit, name in CLOCK_REASONS.items():
        if reasons:
            record[f"{name}_fraction"] = sum(1 for r in reasons if r & bit) / len(reasons)
    return record


def kind(kernel: str) -> str:
    if kernel.startswith("attention_kernel"):
        return "attention"
    if any(tag in kernel for tag in ("nvjet", "gemm", "cutlass", "xmma", "cublas")):
        return "products"
    return "other"


def trace_pass(variant: str, run: Any) -> dict[str, Any]:
    """One profiled pass: wall time, kernel time by kind and by name, idle time and gaps."""
    import json

    from torch.profiler import ProfilerActivity, profile, record_function

    torch.cuda.synchronize()
    def marked(name: str, method: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with record_function(name):
                return method(*args, **kwargs)
        return run

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with (mock.patch.object(TextEncoder, "tokenize", marked("tokenize", TextEncoder.tokenize)),
          mock.patch.object(TextEncoder, "_launch", marked("launch", TextEncoder._launch)),
          profile(activities=activities) as prof, record_function("embed_pass")):
        run()
        torch.cuda.synchronize()
    path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    marks = [e for e in events if e.get("name") == "embed_pass" and e.get("ph") == "X"
             and e.get("cat") == "user_annotation"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"),
                     key=lambda e: e["ts"])
    start, wall = marks[0]["ts"], marks[0]["dur"]
    by_kind: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    gaps: list[tuple[float, str, str, float]] = []
    busy_until = kernels[0]["ts"]
    busy = 0.0
    for previous, kernel in zip([None, *kernels[:-1]], kernels, strict=True):
        begin, end = kernel["ts"], kernel["ts"] + kernel["dur"]
        if previous is not None and begin > busy_until:
            gaps.append((begin - busy_until, previous["name"][:60], kernel["name"][:60],
                         busy_until - start))
        busy += max(0.0, end - max(begin, busy_until))
        busy_until = max(busy_until, end)
        by_kind[kind(kernel["name"])] = by_kind.get(kind(kernel["name"]), 0.0) + kernel["dur"]
        by_name.setdefault(kernel["name"][:90], []).append(kernel["dur"])
    lead = kernels[0]["ts"] - start
    tail = start + wall - busy_until
    gaps.sort(reverse=True)
    ms = 1e-3
    record = {
        "network": variant, "wall_ms": wall * ms, "kernel_busy_ms": busy * ms,
        "idle_before_first_kernel_ms": lead * ms, "idle_after_last_kernel_ms": tail * ms,
        "idle_between_kernels_ms": sum(g[0] for g in gaps) * ms,
        "gaps_over_20us": sum(1 for g in gaps if g[0] > 20),
        "kernel_ms_by_kind": {k: v * ms for k, v in sorted(by_kind.items())},
        "kernels": [{"name": n, "calls": len(d), "ms": sum(d) * ms}
                    for n, d in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:25]],
        "first_host_ops": [{"name": e["name"][:60], "at_ms": (e["ts"] - start) * ms,
                            "ms": e["dur"] * ms}
                           for e in sorted((e for e in events if e.get("ph") == "X"
                                            and e.get("cat") in ("cpu_op", "user_annotation")
                                            and e.get("name") != "embed_pass"),
                                           key=lambda e: e["ts"])
                           if e["ts"] - start < lead][:40],
        "longest_gaps": [{"us": g, "after": a, "before": b, "at_ms": at * ms}
                         for g, a, b, at in gaps[:15]],
    }
    print(f"trace {variant}: wall {record['wall_ms']:.1f} ms, kernels busy "
          f"{record['kernel_busy_ms']:.1f} ms, idle before {lead * ms:.2f} / between "
          f"{record['idle_between_kernels_ms']:.2f} / after {tail * ms:.2f} ms; by kind "
          + ", ".join(f"{k} {v:.1f}" for k, v in record["kernel_ms_by_kind"].items()),
          flush=True)
    for k in record["kernels"]:
        print(f"    {k['ms']:8.1f} ms {k['calls']:5d}  {k['name']}")
    for op in record["first_host_ops"]:
        print(f"    host {op['at_ms']:7.2f} ms (+{op['ms']:.2f})  {op['name']}")
    for g in record["longest_gaps"]:
        print(f"    gap {g['us']:8.1f} us at {g['at_ms']:7.1f} ms  {g['after']} -> {g['before']}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--captions", type=int, default=1024)
    parser.add_argument("--trace", action="store_true",
                        help="also profile one pass of each variant (see above)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from ctrlpost.weights.tiny import caption_tokenizer

    device = torch.device("cuda")
    tokenizer = caption_tokenizer()
    tokenizer.padding_side = "right"
    captions = embed.make_captions(tokenizer, args.captions, median=64.0, seed=0)
    fp32, _ = embed.build_encoders(embed.T5_11B, device)
    variants = args.variants.split(",")
    encoders = {dtype: TextEncoder(tokenizer, lean_network(embed.cast_copy(fp32, dtype)),
                                   device, embed.MAX_LENGTH)
                for dtype in (torch.float16, torch.bfloat16)
                if dtype == torch.float16 or "lean-bf16" in variants}
    del fp32

    def run_pass(name: str) -> Any:
        if name == "lean-bf16":
            return run_variant("lean", encoders[torch.bfloat16], captions)
        return run_variant(name, encoders[torch.float16], captions)

    meter = common.EnergyMeter.open()

    def measure(fn: Any) -> tuple[float, float, Any]:
        if meter is not None:
            return meter.measured(fn, device)
        seconds, out = common.timed(fn, device)
        return seconds, float("nan"), out

    log = Path(tempfile.mkdtemp()) / "smi.csv"
    fields = "power.draw,clocks.sm"
    reasons = "clocks_event_reasons.active"  # older drivers do not know it: then left out
    if subprocess.run(["nvidia-smi", f"--query-gpu={reasons}", "--format=csv"],
                      capture_output=True).returncode == 0:
        fields += "," + reasons
    script = (f"while true; do echo \"$(date +%s.%N), $(nvidia-smi --query-gpu={fields} "
              "--format=csv,noheader,nounits)\"; sleep 0.05; done")
    with log.open("w") as sink:
        logger = subprocess.Popen(["bash", "-c", script], stdout=sink)
    try:
        outputs = {name: run_pass(name) for name in variants}  # warm-up
        agreement = {name: max_difference(outputs[name], outputs[variants[0]])
                     for name in variants[1:]}
        del outputs
        print("largest difference from", variants[0], agreement, flush=True)
        rows: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for name in variants:
                torch.cuda.synchronize()
                start = time.time()
                seconds, joules, _ = measure(lambda n=name: run_pass(n))
                end = time.time()
                time.sleep(0.3)  # the logger's last samples of this pass
                row = {"round": round_, "network": name, "seconds": seconds,
                       "captions_per_s": args.captions / seconds,
                       **samples_between(log, start, end)}
                if meter is not None:
                    row |= {"joules": joules, "energy_power_w": joules / seconds,
                            "joules_per_caption": joules / args.captions}
                rows.append(row)
                print(f"round {round_} {name:12} {row['captions_per_s']:7.1f} captions/s  "
                      f"{row.get('energy_power_w', float('nan')):5.0f} W by energy, "
                      f"{row.get('joules_per_caption', float('nan')):.3f} J/caption  "
                      f"smi {row.get('power_w', 0):5.0f} W (max {row.get('power_max_w', 0):.0f})  "
                      f"{row.get('sm_mhz', 0):5.0f} MHz  power cap "
                      f"{row.get('sw_power_cap_fraction', float('nan')):.0%} of samples",
                      flush=True)
    finally:
        logger.terminate()
    traces = ([trace_pass(name, lambda n=name: run_pass(n))
               for name in variants] if args.trace else [])
    summary = {name: common.median([r["captions_per_s"] for r in rows if r["network"] == name])
               for name in variants} if rows else {}
    print("medians:", {k: round(v, 1) for k, v in summary.items()})
    energy = {name: {key: common.median([r[key] for r in rows if r["network"] == name])
                     for key in ("energy_power_w", "joules_per_caption")}
              for name in variants} if rows and meter is not None else {}
    if energy:
        print("median energy:", energy)
    record = {"benchmark": "embed-power", "device": common.device_name(device),
              "torch": torch.__version__, "date": common.now(),
              "command": "bench/embed_power.py " + " ".join(argv or sys.argv[1:]),
              "rows": rows, "median_captions_per_s": summary, "median_energy": energy,
              "traces": traces,
              "max_abs_difference_over_rms_vs_first": agreement}
    out = args.out or RESULTS / f"embed-power-{common.slug(record['device'])}.json"
    print(common.write_json(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
