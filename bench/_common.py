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
