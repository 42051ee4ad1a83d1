"""Helpers shared by the bench scripts: device names, the same-run matmul ceiling, timing, JSON.

Not a module of the package: the bench scripts import it from their own folder.
"""

from __future__ import annotations

import datetime
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1024**3


def ensure_ctrlpost_importable() -> None:
    """On a bare GPU box with only the source tree, import ctrlpost from ``src``."""
    try:
        import ctrlpost  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} cpu ({torch.get_num_threads()} torch threads)"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed_median(fn: Callable[[], Any], device: torch.device,
                 repeats: int) -> tuple[float, list[float], Any]:
    """``repeats`` calls of ``fn`` under :func:`timed`: the median seconds, every call's seconds
    and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        seconds, out = timed(fn, device)
        times.append(seconds)
    return median(times), times, out


def matmul_ceiling(device: torch.device, *, n: int = 8192, repeats: int = 20) -> dict[str, Any]:
    """bf16 ``n×n×n`` matrix-product rate (TFLOP/s) through torch on random data, rotating two
    input sets; CUDA events around each product, median and max over ``repeats``."""
    if device.type != "cuda":
        n, repeats = 512, 5
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(1)
    pairs = [
        (torch.randn(n, n, device=device, dtype=dtype, generator=gen),
         torch.randn(n, n, device=device, dtype=dtype, generator=gen))
        for _ in range(2)
    ]
    out = torch.empty(n, n, device=device, dtype=dtype)
    for a, b in pairs * 2:  # warm-up: handles, clocks
        torch.mm(a, b, out=out)
    times = []
    for i in range(repeats):
        a, b = pairs[i % 2]
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    rates = [flops / t / 1e12 for t in times]
    del pairs, out
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
            "tflops_median": statistics.median(rates), "tflops_max": max(rates)}


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def record_allocations(device: torch.device) -> None:
    """Start recording where each CUDA allocation was made (Python frames), for
    :func:`live_allocations`."""
    if device.type == "cuda":
        torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")


# Frames worth naming in an allocation's origin: the project's, the benches' and the code
# torch.compile generated; torch's own frames are the same for every allocation.
_ORIGIN_FRAMES = ("ctrlpost", "torchinductor", "/bench/")


def live_allocations(device: torch.device, *, top: int = 25) -> list[dict[str, Any]]:
    """The live CUDA tensors grouped by the (up to three) innermost project or generated-code
    frames that allocated them, largest total first (needs :func:`record_allocations`)."""
    if device.type != "cuda":
        return []
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for segment in torch.cuda.memory._snapshot()["segments"]:
        for block in segment["blocks"]:
            if block["state"] != "active_allocated":
                continue
            frames = [f"{Path(f['filename']).name}:{f['line']}:{f['name']}"
                      for f in block.get("frames", [])
                      if any(k in f["filename"] for k in _ORIGIN_FRAMES)][:3]
            group = groups.setdefault(tuple(frames) or ("(no project frame)",),
                                      {"gib": 0.0, "count": 0, "sizes_mib": set()})
            group["gib"] += block["size"] / 2**30
            group["count"] += 1
            group["sizes_mib"].add(round(block["requested_size"] / 2**20, 1))
    rows = sorted(groups.items(), key=lambda item: -item[1]["gib"])[:top]
    return [{"frames": list(k), "gib": round(v["gib"], 3), "count": v["count"],
             "sizes_mib": sorted(v["sizes_mib"])[-5:]} for k, v in rows]


# What a kernel (or, on the CPU, an aten op) is, by its name: the first pattern that matches.
# Inductor names its generated kernels after the ops they fuse (``triton_poi_fused_convolution_0``
# is elementwise work), so those come first; attention before convolution and products (cuDNN's
# attention kernels say "fprop", cutlass's say "gemm").
KERNEL_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in (
        ("matmul", r"^triton_tem"),
        ("compiled (triton)", r"^triton_"),
        ("attention", r"flash|fmha|sdpa|attention|mha"),
        ("convolution", r"conv(?!ert)|fprop|dgrad|wgrad|implicit_gemm|winograd"),
        ("matmul", r"gemm|nvjet|cutlass|xmma|wgmma|cublas|_scaled_mm|f8f8"
                   r"|^aten::(mm|addmm|bmm|matmul|linear|baddbmm)$"),
        ("copy", r"memcpy|memset|copy_|^aten::(to|_to_copy|contiguous|clone|cat)$"),
        ("collective", r"nccl|gloo|all_?reduce|all_?gather|reduce_?scatter"),
        ("elementwise / reduction (aten)", r"elementwise|reduce_kernel|vectorized|unrolled"
                                           r"|at::native|^aten::"),
    ))


def kernel_kind(name: str) -> str:
    """The :data:`KERNEL_KINDS` class of a kernel or op name; ``"other"`` when none matches."""
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")


def kernel_profile(fn: Callable[[], Any], device: torch.device, *, top: int = 20
                   ) -> dict[str, Any]:
    """One call of ``fn`` under torch's profiler: on CUDA its GPU kernels, on the CPU its aten
    ops, by self time: the total, each :func:`kernel_kind`'s time and share, and the ``top``
    names with their calls and share."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        synchronize(device)

    def self_us(event: Any) -> float:
        return float(event.self_device_time_total if cuda else event.self_cpu_time_total)

    events = [e for e in prof.key_averages() if self_us(e) > 0
              and (cuda or e.key.startswith("aten::"))]
    total = sum(self_us(e) for e in events) or 1.0
    kinds: dict[str, float] = {}
    for event in events:
        kind = kernel_kind(event.key)
        kinds[kind] = kinds.get(kind, 0.0) + self_us(event)
    rows = sorted(events, key=self_us, reverse=True)[:top]
    return {
        "unit": "GPU kernels" if cuda else "aten ops (CPU)", "kernel_ms": total / 1e3,
        "kinds": {kind: {"ms": us / 1e3, "share": us / total}
                  for kind, us in sorted(kinds.items(), key=lambda item: -item[1])},
        "top": [{"kernel": e.key[:120], "kind": kernel_kind(e.key), "calls": e.count,
                 "ms": self_us(e) / 1e3, "share": self_us(e) / total} for e in rows]}


def print_profile(profile: dict[str, Any], *, top: int = 8) -> None:
    """The kinds' shares, then the ``top`` kernels."""
    print(f"{profile['unit']}: {profile['kernel_ms']:.1f} ms")
    for kind, row in profile["kinds"].items():
        print(f"  {row['share']:6.1%} {row['ms']:9.1f} ms  {kind}")
    for row in profile["top"][:top]:
        print(f"  {row['share']:6.1%} {row['ms']:9.1f} ms x{row['calls']:<5} {row['kernel']}")


def write_json(record: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> None:
    """Left-aligned first column, right-aligned others."""
    table = [header, *rows] if header else rows
    widths = [max(len(str(r[i])) for r in table if i < len(r)) for i in range(len(table[0]))]
    for k, row in enumerate(table):
        cells = [f"{row[0]!s:<{widths[0]}}"]
        cells += [f"{c!s:>{widths[i + 1]}}" for i, c in enumerate(row[1:])]
        print("  ".join(cells))
        if header and k == 0:
            print("  ".join("-" * w for w in widths))
