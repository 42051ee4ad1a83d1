"""Every cuBLASLt algorithm its heuristic offers for the T5-11B layer's four products, timed
against torch's own call: is there a faster kernel than the one cuBLAS picks?

cuBLASLt is the library torch already loads; it is reached here through ctypes. Each product
is written as torch computes it (row-major ``Y[M, N] = X[M, K] · W[N, K]ᵀ``), which in
cuBLAS's column-major terms is ``Yᵀ = op(W)ᵀ-layout · X``: A = W transposed, B = X.

    python bench/cublaslt_algos.py --tokens 8160 --dtypes float16,bfloat16
    python bench/cublaslt_algos.py --energy 1.0 --rounds 2   # joules per product instead
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as common
import torch

RESULTS = Path(__file__).resolve().parent / "results"

COMPUTE_32F = 68
CUDA_TYPE = {torch.float16: 2, torch.bfloat16: 14, torch.float32: 0}
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
EPILOGUE = {"default": 1, "relu": 2, "relu_bias": 6}
PREF_MAX_WORKSPACE = 1
OP_N, OP_T = 0, 1
WORKSPACE_BYTES = 32 << 20


class HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t),
                ("state", ctypes.c_int), ("waves", ctypes.c_float),
                ("reserved", ctypes.c_int * 4)]


def load_cublaslt() -> ctypes.CDLL:
    """The libcublasLt torch has loaded (found in this process's memory map)."""
    a = torch.ones(8, 8, device="cuda", dtype=torch.float16)
    torch._addmm_activation(torch.zeros(8, device="cuda", dtype=torch.float16), a, a)
    torch.cuda.synchronize()
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libcublasLt" in line}
    if not paths:
        raise RuntimeError("torch has not loaded libcublasLt")
    lib = ctypes.CDLL(sorted(paths)[0])
    p, i, u64, i64, sz = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64,
                          ctypes.c_size_t)
    lib.cublasLtCreate.argtypes = [ctypes.POINTER(p)]
    lib.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(p), i, i]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [p, i, p, sz]
    lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(p), i, u64, u64, i64]
    lib.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(p)]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [p, i, p, sz]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [p, p, p, p, p, p, p, i,
                                                   ctypes.POINTER(HeuristicResult),
                                                   ctypes.POINTER(i)]
    lib.cublasLtMatmul.argtypes = [p, p, p, p, p, p, p, p, p, p, p, p, p, p, sz, p]
    return lib


def check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what}: cuBLAS status {status}")


class Product:
    """One product ``out = act(X · Wᵀ + bias) (+ out)`` set up for cuBLASLt."""

    def __init__(self, lib: ctypes.CDLL, handle: ctypes.c_void_p, x: torch.Tensor,
                 w: torch.Tensor, out: torch.Tensor, *, epilogue: str, accumulate: bool):
        self.lib, self.handle, self.x, self.w, self.out = lib, handle, x, w, out
        m, k = x.shape
        n = w.shape[0]
        self.desc = ctypes.c_void_p()
        check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), COMPUTE_32F,
                                           CUDA_TYPE[torch.float32]), "desc")
        for attr, value in ((DESC_TRANSA, OP_T), (DESC_TRANSB, OP_N),
                            (DESC_EPILOGUE, EPILOGUE[epilogue])):
            v = ctypes.c_int32(value)
            check(lib.cublasLtMatmulDescSetAttribute(self.desc, attr, ctypes.byref(v), 4),
                  "desc attr")
        self.bias = None
        if epilogue == "relu_bias":
            self.bias = torch.zeros(n, dtype=out.dtype, device=out.device)
            ptr = ctypes.c_void_p(self.bias.data_ptr())
            check(lib.cublasLtMatmulDescSetAttribute(self.desc, DESC_BIAS_POINTER,
                                                     ctypes.byref(ptr), 8), "bias")
        self.layouts = []
        for dtype, rows, cols, ld in ((w.dtype, k, n, k), (x.dtype, k, m, k),
                                      (out.dtype, n, m, n)):
            layout = ctypes.c_void_p()
            check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), CUDA_TYPE[dtype], rows,
                                                 cols, ld), "layout")
            self.layouts.append(layout)
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(1.0 if accumulate else 0.0)
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=out.device)

    def algorithms(self, count: int) -> list[HeuristicResult]:
        pref = ctypes.c_void_p()
        check(self.lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "pref")
        size = ctypes.c_uint64(WORKSPACE_BYTES)
        check(self.lib.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE,
                                                            ctypes.byref(size), 8), "pref attr")
        results = (HeuristicResult * count)()
        returned = ctypes.c_int()
        a, b, d = self.layouts
        check(self.lib.cublasLtMatmulAlgoGetHeuristic(self.handle, self.desc, a, b, d, d, pref,
                                                      count, results, ctypes.byref(returned)),
              "heuristic")
        return [results[i] for i in range(returned.value) if results[i].state == 0]

    def run(self, algo: HeuristicResult) -> None:
        a, b, d = self.layouts
        out = ctypes.c_void_p(self.out.data_ptr())
        check(self.lib.cublasLtMatmul(
            self.handle, self.desc, ctypes.byref(self.alpha), ctypes.c_void_p(self.w.data_ptr()),
            a, ctypes.c_void_p(self.x.data_ptr()), b, ctypes.byref(self.beta), out, d, out, d,
            ctypes.byref(algo.algo), ctypes.c_void_p(self.workspace.data_ptr()),
            WORKSPACE_BYTES, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)),
            "matmul")


def ms_per_call(run: Callable[[], Any], repeats: int = 10) -> float:
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / repeats)
    return common.median(times)


def products(tokens: int, dtype: torch.dtype) -> dict[str, dict[str, Any]]:
    """The layer's products: operands, torch's own call, and the cuBLASLt form."""
    d, inner, ff = 1024, 16384, 65536
    dev = torch.device("cuda")

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, device=dev) / shape[-1] ** 0.5).to(dtype)

    x, attended, inner_act = rand(tokens, d), rand(tokens, inner), rand(tokens, ff).relu()
    w_qkv, w_out, w_in, w_ff = rand(3 * inner, d), rand(d, inner), rand(ff, d), rand(d, ff)
    hidden = torch.randn(tokens, d, device=dev)
    zero = torch.zeros(ff, dtype=dtype, device=dev)
    qkv_out = torch.empty(tokens, 3 * inner, dtype=dtype, device=dev)
    in_out = torch.empty(tokens, ff, dtype=dtype, device=dev)
    return {
        "qkv": {"x": x, "w": w_qkv, "out": qkv_out, "epilogue": "default", "acc": False,
                "torch": lambda: torch.mm(x, w_qkv.t(), out=qkv_out)},
        "ff_in_relu": {"x": x, "w": w_in, "out": in_out, "epilogue": "relu_bias", "acc": False,
                       "torch": lambda: torch._addmm_activation(zero, x, w_in.t())},
        "ff_in_relu_nobias": {"x": x, "w": w_in, "out": in_out, "epilogue": "relu",
                              "acc": False,
                              "torch": lambda: torch._addmm_activation(zero, x, w_in.t())},
        "out_add_fp32": {"x": attended, "w": w_out, "out": hidden, "epilogue": "default",
                         "acc": True, "torch": lambda: torch.addmm(
                             hidden, attended, w_out.t(), out_dtype=torch.float32, out=hidden)},
        "ff_out_add_fp32": {"x": inner_act, "w": w_ff, "out": hidden, "epilogue": "default",
                            "acc": True, "torch": lambda: torch.addmm(
                                hidden, inner_act, w_ff.t(), out_dtype=torch.float32,
                                out=hidden)},
    }


def selected_products(
    lib: ctypes.CDLL, handle: ctypes.c_void_p, tokens: int, dtype: torch.dtype,
    only: set[str] | None,
) -> Iterator[tuple[str, dict[str, Any], Product, int, int]]:
    """(name, spec, cuBLASLt product, rows, FLOPs per call) of each product ``only`` keeps."""
    for name, spec in products(tokens, dtype).items():
        if only and name not in only:
            continue
        m, k = spec["x"].shape
        yield name, spec, Product(lib, handle, spec["x"], spec["w"], spec["out"],
                                  epilogue=spec["epilogue"], accumulate=spec["acc"]), \
            m, 2 * m * k * spec["w"].shape[0]


def compare(lib: ctypes.CDLL, handle: ctypes.c_void_p, tokens: int, dtype: torch.dtype,
            count: int, rounds: int, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Each product's algorithms timed once, then torch's call and the fastest of them timed
    alternately ``rounds`` times (the clock drifts under a power cap: only alternation is
    fair)."""
    rows = []
    for name, spec, product, m, flop in selected_products(lib, handle, tokens, dtype, only):
        algos = product.algorithms(count)
        first = [ms_per_call(functools.partial(product.run, algo)) for algo in algos]
        best = min(range(len(algos)), key=first.__getitem__)
        baseline = spec["torch"] or functools.partial(product.run, algos[0])
        pairs = [(ms_per_call(baseline), ms_per_call(functools.partial(product.run, algos[best])))
                 for _ in range(rounds)]
        base_ms = common.median([a for a, _ in pairs])
        best_ms = common.median([b for _, b in pairs])
        row = {"dtype": str(dtype).removeprefix("torch."), "product": name, "tokens": m,
               "baseline": "torch" if spec["torch"] else "heuristic's first",
               "algorithms": len(algos), "first_pass_ms": first, "best_rank": best,
               "baseline_ms": base_ms, "best_ms": best_ms, "pairs_ms": pairs,
               "gain": base_ms / best_ms - 1, "best_tflops": flop / best_ms / 1e9}
        rows.append(row)
        print(f"{row['dtype']:9} {m:5} {name:18} algos {len(algos):2}  {row['baseline']:17} "
              f"{base_ms:.4f}  best #{best} {best_ms:.4f}  gain {row['gain'] * 100:+.1f} %")
    return rows


def sustained(meter: common.EnergyMeter, run: Callable[[], Any],
              seconds: float) -> tuple[float, float]:
    """(ms, joules) per call of ``run`` held back to back for about ``seconds``: what a
    product costs in energy when the GPU runs it at its power limit, as it does inside a pass."""
    calls = max(10, round(seconds * 1000 / ms_per_call(run, repeats=3)))

    def held(n: int) -> None:
        for _ in range(n):
            run()  # each output dropped at once: torch's ReLU product allocates a new one

    held(calls // 4)  # the clock settles to the power limit before the counter is read
    elapsed, joules, _ = meter.measured(functools.partial(held, calls), torch.device("cuda"))
    return elapsed * 1000 / calls, joules / calls


def compare_energy(lib: ctypes.CDLL, handle: ctypes.c_void_p, meter: common.EnergyMeter,
                   tokens: int, dtype: torch.dtype, count: int, rounds: int,
                   seconds: float, only: set[str] | None = None) -> list[dict[str, Any]]:
    """torch's call and every heuristic candidate, each held for ``seconds`` in turn,
    ``rounds`` times round-robin: time and energy per call. A kernel that finishes sooner
    but draws more power gains nothing at the power limit; one that spends fewer joules per
    product would."""
    rows = []
    for name, spec, product, m, flop in selected_products(lib, handle, tokens, dtype, only):
        runs = {"torch": spec["torch"]} | {
            f"algo{i}": functools.partial(product.run, algo)
            for i, algo in enumerate(product.algorithms(count))}
        readings: dict[str, list[tuple[float, float]]] = {key: [] for key in runs}
        for _ in range(rounds):
            for key, run in runs.items():
                readings[key].append(sustained(meter, run, seconds))
        torch_j = common.median([j for _, j in readings["torch"]])
        for key, pairs in readings.items():
            ms, joules = common.median([a for a, _ in pairs]), common.median([j for _, j in pairs])
            row = {"dtype": str(dtype).removeprefix("torch."), "product": name, "tokens": m,
                   "kernel": key, "ms": ms, "joules": joules, "watts": joules / ms * 1000,
                   "tflop_per_joule": flop / joules / 1e12, "tflops": flop / ms / 1e9,
                   "energy_vs_torch": joules / torch_j - 1, "readings": pairs}
            rows.append(row)
            print(f"{row['dtype']:9} {m:5} {name:18} {key:6} {ms:.4f} ms  {joules:.4f} J  "
                  f"{row['watts']:5.0f} W  {row['tflop_per_joule']:.3f} TFLOP/J  "
                  f"energy {row['energy_vs_torch'] * 100:+.1f} % vs torch", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="8160",
                        help="rows of each product, comma-separated")
    parser.add_argument("--rounds", type=int, default=5,
                        help="torch's call and the fastest algorithm timed alternately")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--count", type=int, default=64, help="algorithms to ask for")
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--energy", type=float, default=0.0, metavar="SECONDS",
                        help="instead of timing: hold each candidate and torch's call for "
                             "SECONDS at a time and read the GPU's energy counter")
    parser.add_argument("--products", default="",
                        help="only these products (comma-separated), e.g. ff_in_relu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    lib = load_cublaslt()
    handle = ctypes.c_void_p()
    check(lib.cublasLtCreate(ctypes.byref(handle)), "create")
    rows: list[dict[str, Any]] = []
    warm = products(4096, torch.bfloat16)["qkv"]["torch"]
    common.timed(lambda: [warm() for _ in range(int(args.warmup_s * 1000 / 1.3))],
                 torch.device("cuda"))
    meter = common.EnergyMeter.open() if args.energy else None
    if args.energy and meter is None:
        raise SystemExit("--energy: NVML's energy counter cannot be read on this machine")
    tick = meter.update_interval_s() if meter is not None else None
    if tick is not None:
        print(f"energy counter updates every {tick * 1000:.1f} ms (median while busy)")
    only = set(args.products.split(",")) if args.products else None
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for dtype_name in args.dtypes.split(","):
            if meter is not None:
                rows.extend(compare_energy(lib, handle, meter, tokens,
                                           getattr(torch, dtype_name), args.count,
                                           args.rounds, args.energy, only))
            else:
                rows.extend(compare(lib, handle, tokens, getattr(torch, dtype_name),
                                    args.count, args.rounds, only))
    record = {"benchmark": "cublaslt-algos", "device": common.device_name(torch.device("cuda")),
              "torch": torch.__version__, "date": common.now(),
              "command": "bench/cublaslt_algos.py " + " ".join(argv or sys.argv[1:]),
              "rows": rows,
              "energy_counter_update_s": tick}
    name = "cublaslt-energy" if args.energy else "cublaslt-algos"
    out = args.out or RESULTS / f"{name}-{common.slug(record['device'])}.json"
    print(common.write_json(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
