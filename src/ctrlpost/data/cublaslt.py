"""Matrix products through cuBLASLt, each shape on the fastest of the algorithms cuBLASLt's
heuristic offers for it.

torch runs the heuristic's first choice. For T5-11B's products another of its candidates is
often faster: ~5 % for the ReLU feed-forward product at 8k rows, up to ~20 % for the q/k/v and
feed-forward products at 4k rows (bench/cublaslt_algos.py, bench/NOTES.md). So, as cuDNN's
benchmark mode does for convolutions, each class of shapes times the candidates once on its
real operands and keeps the fastest; later shapes of the class run that algorithm when
cuBLASLt accepts it for them (else the heuristic's first).

The library is the libcublasLt torch has already loaded, reached through ctypes: no build
step and no new dependency. Where it cannot be reached, :meth:`TunedProducts.load` says so
and callers keep torch's own products.
"""

from __future__ import annotations

import ctypes
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

_COMPUTE_32F = 68  # cublasComputeType_t: float32 accumulation
_CUDA_TYPE = {torch.float16: 2, torch.bfloat16: 14, torch.float32: 0}  # cudaDataType_t
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE = 3, 4, 7  # cublasLtMatmulDescAttributes_t
_EPILOGUE_DEFAULT, _EPILOGUE_RELU = 1, 2  # cublasLtEpilogue_t
_PREF_MAX_WORKSPACE = 1  # cublasLtMatmulPreferenceAttributes_t, then the A/B/C/D alignments:
_PREF_ALIGNMENT = (5, 6, 7, 8)
_OP_N, _OP_T = 0, 1
_WORKSPACE_BYTES = 32 << 20
_CANDIDATES = 8  # what the heuristic returns at most for these products
_ROW_CLASS = 512  # rows per shape class: one timing serves a class's shapes
_TIMED_RUNS = 3


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t),
                ("state", ctypes.c_int), ("waves", ctypes.c_float),
                ("reserved", ctypes.c_int * 4)]


def _library() -> ctypes.CDLL | None:
    """torch's libcublasLt with the signatures used here, or None where it is not loaded."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libcublasLt" in line})
    except OSError:
        return None
    if not paths:
        return None
    lib = ctypes.CDLL(paths[0])
    p, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    pp, result_p = ctypes.POINTER(p), ctypes.POINTER(_HeuristicResult)
    signatures: dict[str, list[Any]] = {
        "cublasLtCreate": [pp],
        "cublasLtMatmulDescCreate": [pp, i, i],
        "cublasLtMatmulDescSetAttribute": [p, i, p, sz],
        "cublasLtMatrixLayoutCreate": [pp, i, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
        "cublasLtMatmulPreferenceCreate": [pp],
        "cublasLtMatmulPreferenceSetAttribute": [p, i, p, sz],
        "cublasLtMatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, i, result_p, ctypes.POINTER(i)],
        "cublasLtMatmulAlgoCheck": [p, p, p, p, p, p, p, result_p],
        "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, p, p, sz, p],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return lib


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLASLt {call} failed with status {status}")


def _alignment(t: torch.Tensor) -> int:
    """The largest power of two up to 256 dividing the tensor's address."""
    address = t.data_ptr()
    return min(256, address & -address) if address else 256


@dataclass
class _Plan:
    """One exact shape, set up: descriptor, A/B/D layouts, the algorithm it runs."""

    desc: ctypes.c_void_p
    layouts: tuple[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    candidates: list[_HeuristicResult]
    algo: _HeuristicResult | None = None


@dataclass
class TunedProducts:
    """``relu?(x · Wᵀ)`` and ``hidden += x · Wᵀ`` on one CUDA device, through cuBLASLt."""

    lib: ctypes.CDLL
    handle: ctypes.c_void_p
    workspace: torch.Tensor
    plans: dict[tuple[Any, ...], _Plan | None] = field(default_factory=dict)
    fastest: dict[tuple[Any, ...], _HeuristicResult] = field(default_factory=dict)

    @classmethod
    def load(cls, device: torch.device) -> TunedProducts | None:
        """The products on ``device``, or None where cuBLASLt cannot be reached (not CUDA, or
        torch runs without it)."""
        if device.type != "cuda":
            return None
        a = torch.ones(16, 16, device=device, dtype=torch.float16)
        torch._addmm_activation(torch.zeros(16, device=device, dtype=torch.float16), a, a)
        torch.cuda.synchronize(device)  # torch loads cuBLASLt on its first such product
        lib = _library()
        if lib is None:
            return None
        handle = ctypes.c_void_p()
        if lib.cublasLtCreate(ctypes.byref(handle)) != 0:
            return None
        workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return cls(lib, handle, workspace)

    def linear(self, x_M_K: torch.Tensor, weight_N_K: torch.Tensor, *,
               relu: bool = False) -> torch.Tensor:
        """``x · Wᵀ`` (then ReLU) in x's dtype, float32 accumulation."""
        out = torch.empty(x_M_K.shape[0], weight_N_K.shape[0], dtype=x_M_K.dtype,
                          device=x_M_K.device)
        if not self._run(x_M_K, weight_N_K, out, relu=relu, accumulate=False):
            if relu:
                return torch._addmm_activation(torch.zeros_like(out[0]), x_M_K, weight_N_K.t())
            return torch.mm(x_M_K, weight_N_K.t())
        return out

    def add_linear(self, hidden_M_N: torch.Tensor, x_M_K: torch.Tensor,
                   weight_N_K: torch.Tensor) -> torch.Tensor:
        """``hidden += x · Wᵀ`` in place, ``hidden`` float32 (no rounding of the update)."""
        if not self._run(x_M_K, weight_N_K, hidden_M_N, relu=False, accumulate=True):
            torch.addmm(hidden_M_N, x_M_K, weight_N_K.t(), out_dtype=torch.float32,
                        out=hidden_M_N)
        return hidden_M_N

    def _run(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, *, relu: bool,
             accumulate: bool) -> bool:
        """Run the product; False where cuBLASLt offers no algorithm for it."""
        if not (x.is_contiguous() and weight.is_contiguous() and out.is_contiguous()):
            return False
        rows, inner = x.shape
        shape = (weight.shape[0], inner, x.dtype, weight.dtype, out.dtype, relu, accumulate,
                 _alignment(x), _alignment(weight), _alignment(out))
        key = (rows, *shape)
        if key not in self.plans:
            self.plans[key] = self._plan(rows, shape)
        plan = self.plans[key]
        if plan is None:
            return False
        if plan.algo is None:
            plan.algo = self._choose(plan, (-(-rows // _ROW_CLASS), *shape), x, weight, out,
                                     accumulate)
        self._matmul(plan, plan.algo, x, weight, out, accumulate)
        return True

    def _plan(self, rows: int, shape: tuple[Any, ...]) -> _Plan | None:
        columns, inner, x_dtype, w_dtype, out_dtype, relu, _, *alignments = shape
        lib = self.lib
        desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F,
                                            _CUDA_TYPE[torch.float32]), "MatmulDescCreate")
        # Row-major Y[M, N] = X[M, K]·W[N, K]ᵀ is column-major Yᵀ[N, M] = op(A)·B with A the
        # weight (stored K × N, transposed) and B the activations (stored K × M).
        for attribute, value in ((_DESC_TRANSA, _OP_T), (_DESC_TRANSB, _OP_N),
                                 (_DESC_EPILOGUE, _EPILOGUE_RELU if relu else _EPILOGUE_DEFAULT)):
            v = ctypes.c_int32(value)
            _check(lib.cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(v), 4),
                   "MatmulDescSetAttribute")
        layouts = []
        for dtype, stored_rows, stored_columns in ((w_dtype, inner, columns),
                                                   (x_dtype, inner, rows),
                                                   (out_dtype, columns, rows)):
            layout = ctypes.c_void_p()
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), _CUDA_TYPE[dtype],
                                                  stored_rows, stored_columns, stored_rows),
                   "MatrixLayoutCreate")
            layouts.append(layout)
        preference = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)),
               "MatmulPreferenceCreate")
        a_align, b_align, out_align = alignments[1], alignments[0], alignments[2]
        settings: list[tuple[int, ctypes.c_uint64 | ctypes.c_uint32]] = [
            (_PREF_MAX_WORKSPACE, ctypes.c_uint64(_WORKSPACE_BYTES))]
        settings += [(attribute, ctypes.c_uint32(value)) for attribute, value in
                     zip(_PREF_ALIGNMENT, (a_align, b_align, out_align, out_align),
                         strict=True)]
        for attribute, setting in settings:
            _check(lib.cublasLtMatmulPreferenceSetAttribute(
                preference, attribute, ctypes.byref(setting), ctypes.sizeof(setting)),
                "MatmulPreferenceSetAttribute")
        results = (_HeuristicResult * _CANDIDATES)()
        returned = ctypes.c_int()
        a, b, d = layouts
        status = lib.cublasLtMatmulAlgoGetHeuristic(self.handle, desc, a, b, d, d, preference,
                                                    _CANDIDATES, results,
                                                    ctypes.byref(returned))
        candidates = [results[i] for i in range(returned.value)
                      if status == 0 and results[i].state == 0
                      and results[i].workspace_size <= _WORKSPACE_BYTES]
        if not candidates:
            return None
        return _Plan(desc, (a, b, d), candidates)

    def _choose(self, plan: _Plan, shape_class: tuple[Any, ...], x: torch.Tensor,
                weight: torch.Tensor, out: torch.Tensor, accumulate: bool) -> _HeuristicResult:
        """The class's fastest algorithm where cuBLASLt takes it for this shape (timed now if
        the class has none yet), else the heuristic's first."""
        if shape_class not in self.fastest:
            self.fastest[shape_class] = self._fastest(plan, x, weight, out, accumulate)
        fastest = self.fastest[shape_class]
        checked = _HeuristicResult()
        a, b, d = plan.layouts
        if self.lib.cublasLtMatmulAlgoCheck(self.handle, plan.desc, a, b, d, d,
                                            ctypes.byref(fastest), ctypes.byref(checked)) == 0 \
                and checked.workspace_size <= _WORKSPACE_BYTES:
            return fastest
        return plan.candidates[0]

    def _fastest(self, plan: _Plan, x: torch.Tensor, weight: torch.Tensor,
                 out: torch.Tensor, accumulate: bool) -> _HeuristicResult:
        """Each candidate timed on the real operands (an accumulating product writes into a
        scratch copy, so ``out`` gets its update once, from the caller)."""
        if len(plan.candidates) == 1:
            return plan.candidates[0]
        scratch = out.clone() if accumulate else out
        seconds = []
        for algo in plan.candidates:
            self._matmul(plan, algo, x, weight, scratch, accumulate)
            runs = []
            for _ in range(_TIMED_RUNS):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                self._matmul(plan, algo, x, weight, scratch, accumulate)
                end.record()
                end.synchronize()
                runs.append(start.elapsed_time(end))
            seconds.append(statistics.median(runs))
        return plan.candidates[seconds.index(min(seconds))]

    def _matmul(self, plan: _Plan, algo: _HeuristicResult, x: torch.Tensor,
                weight: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(1.0 if accumulate else 0.0)
        a, b, d = plan.layouts
        out_ptr = ctypes.c_void_p(out.data_ptr())
        stream = torch.cuda.current_stream(out.device).cuda_stream
        _check(self.lib.cublasLtMatmul(
            self.handle, plan.desc, ctypes.byref(alpha), ctypes.c_void_p(weight.data_ptr()), a,
            ctypes.c_void_p(x.data_ptr()), b, ctypes.byref(beta), out_ptr, d, out_ptr, d,
            ctypes.byref(algo.algo), ctypes.c_void_p(self.workspace.data_ptr()),
            _WORKSPACE_BYTES, ctypes.c_void_p(stream)), "Matmul")
