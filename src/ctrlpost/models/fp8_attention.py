"""The frozen base's self-attention in FP8: cuDNN's fused FP8 attention, forward and backward.

``model.base_precision = "fp8-attention"``: on GPUs that have the fused kernel (Hopper or
newer, with ``nvidia-cudnn-frontend``: ``pip install 'ctrlpost[fp8]'``) for heads of 128 channels
(the released models'); elsewhere the same numbers are computed by a reference implementation in
float32 (the scores held in memory, so only for short sequences: tests, tiny models), so CPU
runs see FP8's rounding too.

Every FP8 tensor has one float32 scale (per tensor, a power of two, so scaling is exact):

* forward: ``q``, ``k``, ``v`` are scaled from their own maxima; the softmax probabilities
  (≤ 1) are stored as ``256 · P``; the output, a convex combination of ``v``'s rows, is scaled
  from ``max |v|`` — every forward scale is known before the kernel runs;
* backward: ``dO`` is scaled from its own maximum; the score gradient (cuDNN's ``dP``:
  ``P·(dO·vᵀ − rowsum(dO·O))`` times the softmax scale), ``dQ``, ``dK``, ``dV`` only exist
  inside the kernel, so their scales are *delayed*: each call site keeps the maxima the kernel
  reported last time (a float32 ``[4]`` buffer) and scales with :data:`HEADROOM` to spare. A
  call whose values outgrew a scale (or the first call, which has no history) is redone with
  the maxima it just reported, so nothing saturates.

Gradients leave the kernel as FP8 (on Hopper cuDNN writes no bf16 ``dQ/dK/dV`` for FP8
attention) and are widened to bf16 for the layers before it. A block whose output projection is
an FP8 product (:func:`fp8_self_attention_projected`) feeds it the e4m3 output as it is.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import torch
from torch import Tensor

from ctrlpost.models.fp8 import FP8, FP8_MAX, input_gradient, quantize_rows, scaled_product

PROBABILITY_SCALE = 256.0  # P ≤ 1 is stored as 256·P: the largest power of two under 448
O_HEADROOM = 1.0625  # the quantized P's row sums exceed 1 by at most e4m3's rounding
HEADROOM = 2.0  # a delayed scale leaves the last reported maximum this far below 448
_BACKWARD_SCALES = ("dP", "dQ", "dK", "dV")
FUSED_HEAD_DIM = 128  # cuDNN's FP8 attention on Hopper takes no other head size


def power_of_two_scale(amax: Tensor, headroom: float = 1.0) -> Tensor:
    """The largest power of two ``s`` with ``amax · headroom · s ≤ 448``, as float32."""
    ratio = FP8_MAX / (amax.float().clamp_min(2.0**-60) * headroom)
    return torch.exp2(torch.floor(torch.log2(ratio)))


def _frontend_loads() -> bool:
    """Whether cuDNN's frontend (``nvidia-cudnn-frontend``, the ``fp8`` extra) imports."""
    try:
        import cudnn  # noqa: F401
    except (ImportError, OSError):  # OSError: it loads libcudnn at import, absent on CPU builds
        return False
    return True


def cudnn_available(device: torch.device) -> bool:
    """Whether ``device`` can run the fused FP8 attention (CUDA capability 9.0+, frontend)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    return _frontend_loads()


def runs_fused_kernel(x: Tensor) -> bool:
    """Whether attention over ``x`` (``[..., L, Dh]``) runs cuDNN's fused kernel rather than the
    reference: a device that has it, and the one head size it takes."""
    return x.shape[-1] == FUSED_HEAD_DIM and cudnn_available(x.device)


class _CudnnGraphs:
    """cuDNN's FP8 attention graphs, built once per shape and layout, and a handle per device.

    Each graph runs the plan cuDNN's heuristics rank first; with ``autotune``, the first call
    of each graph times every plan that builds on that call's tensors and keeps the fastest
    (:func:`fastest_plan`; the timings in ``plan_times``, by graph)."""

    def __init__(self, *, autotune: bool = False) -> None:
        self._lock = threading.Lock()
        self._graphs: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
        self._handles: dict[int, Any] = {}
        self.autotune = autotune
        self.plan_times: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def _handle(self, cudnn: Any, device: torch.device) -> Any:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._handles:
            with torch.cuda.device(index):
                self._handles[index] = cudnn.create_handle()
        return self._handles[index]

    def _new_graph(self, cudnn: Any, handle: Any) -> Any:
        return cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3,
                             intermediate_data_type=cudnn.data_type.FLOAT,
                             compute_data_type=cudnn.data_type.FLOAT, handle=handle)

    @staticmethod
    def _scalars(graph: Any, cudnn: Any, names: tuple[str, ...]) -> dict[str, Any]:
        return {name: graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1],
                                   data_type=cudnn.data_type.FLOAT) for name in names}

    @staticmethod
    def _like(graph: Any, cudnn: Any, name: str, x: Tensor) -> Any:
        dtype = cudnn.data_type.FP8_E4M3 if x.dtype == FP8 else cudnn.data_type.FLOAT
        return graph.tensor(name=name, dim=list(x.shape), stride=list(x.stride()),
                            data_type=dtype)

    @staticmethod
    def _finish(graph: Any, cudnn: Any) -> None:
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, stats: Tensor,
                scalars: dict[str, Tensor], amax: dict[str, Tensor]) -> None:
        import cudnn

        key = ("fwd", q.device, *(tuple(t.shape) + t.stride() for t in (q, k, v, out)))
        with self._lock:
            if key not in self._graphs:
                handle = self._handle(cudnn, q.device)
                graph = self._new_graph(cudnn, handle)
                t = {name: self._like(graph, cudnn, name, x)
                     for name, x in (("q", q), ("k", k), ("v", v))}
                t |= self._scalars(graph, cudnn, tuple(scalars))
                o, st, amax_s, amax_o = graph.sdpa_fp8(
                    q=t["q"], k=t["k"], v=t["v"], descale_q=t["descale_q"],
                    descale_k=t["descale_k"], descale_v=t["descale_v"],
                    descale_s=t["descale_s"], scale_s=t["scale_s"], scale_o=t["scale_o"],
                    generate_stats=True, attn_scale=1.0 / math.sqrt(q.shape[-1]),
                    use_causal_mask=False)
                o.set_output(True).set_dim(list(out.shape)).set_stride(list(out.stride())) \
                    .set_data_type(cudnn.data_type.FP8_E4M3)
                st.set_output(True).set_dim(list(stats.shape)).set_stride(list(stats.stride())) \
                    .set_data_type(cudnn.data_type.FLOAT)
                for a in (amax_s, amax_o):
                    a.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]) \
                        .set_data_type(cudnn.data_type.FLOAT)
                t |= {"o": o, "stats": st, "amax_s": amax_s, "amax_o": amax_o}
                self._finish(graph, cudnn)
                self._graphs[key] = (graph, t)
            graph, t = self._graphs[key]
        pack = {t["q"]: q, t["k"]: k, t["v"]: v, t["o"]: out, t["stats"]: stats}
        pack |= {t[name]: value for name, value in scalars.items()}
        pack |= {t[name]: value for name, value in amax.items()}
        self._execute(cudnn, graph, pack, q.device, key)

    def backward(self, saved: dict[str, Tensor], grads: dict[str, Tensor],
                 scalars: dict[str, Tensor], amax: dict[str, Tensor]) -> None:
        import cudnn

        q = saved["q"]
        key = ("bwd", q.device, *(tuple(x.shape) + x.stride()
                                  for x in (*saved.values(), *grads.values())))
        with self._lock:
            if key not in self._graphs:
                handle = self._handle(cudnn, q.device)
                graph = self._new_graph(cudnn, handle)
                t = {name: self._like(graph, cudnn, name, x) for name, x in saved.items()}
                t |= self._scalars(graph, cudnn, tuple(scalars))
                outs = graph.sdpa_fp8_backward(
                    q=t["q"], k=t["k"], v=t["v"], o=t["o"], dO=t["dO"], stats=t["stats"],
                    descale_q=t["descale_q"], descale_k=t["descale_k"],
                    descale_v=t["descale_v"], descale_o=t["descale_o"],
                    descale_dO=t["descale_dO"], descale_s=t["descale_s"],
                    descale_dP=t["descale_dP"], scale_s=t["scale_s"], scale_dQ=t["scale_dQ"],
                    scale_dK=t["scale_dK"], scale_dV=t["scale_dV"], scale_dP=t["scale_dP"],
                    attn_scale=1.0 / math.sqrt(q.shape[-1]), use_causal_mask=False)
                for name, tensor in zip(("dQ", "dK", "dV"), outs[:3], strict=True):
                    x = grads[name]
                    tensor.set_output(True).set_dim(list(x.shape)).set_stride(list(x.stride())) \
                        .set_data_type(cudnn.data_type.FP8_E4M3)
                    t[name] = tensor
                for name, tensor in zip(("amax_dQ", "amax_dK", "amax_dV", "amax_dP"), outs[3:],
                                        strict=True):
                    tensor.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]) \
                        .set_data_type(cudnn.data_type.FLOAT)
                    t[name] = tensor
                self._finish(graph, cudnn)
                self._graphs[key] = (graph, t)
            graph, t = self._graphs[key]
        pack = {t[name]: value for name, value in (saved | grads | scalars | amax).items()}
        self._execute(cudnn, graph, pack, q.device, key)

    def _execute(self, cudnn: Any, graph: Any, pack: dict[Any, Tensor],
                 device: torch.device, key: tuple[Any, ...]) -> None:
        handle = self._handle(cudnn, device)
        cudnn.set_stream(handle, torch.cuda.current_stream(device).cuda_stream)
        self._tune_once(graph, pack, handle, device, key)
        workspace = torch.empty(graph.get_workspace_size(), device=device, dtype=torch.uint8)
        graph.execute(pack, workspace, handle=handle)

    def _tune_once(self, graph: Any, pack: dict[Any, Tensor], handle: Any,
                   device: torch.device, key: tuple[Any, ...]) -> None:
        """With ``autotune``, select ``graph``'s fastest plan on its first call's tensors."""
        if self.autotune and key not in self.plan_times:
            self.plan_times[key] = fastest_plan(graph, pack, handle, device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest_plan(graph: Any, pack: dict[Any, Tensor], handle: Any, device: torch.device,
                 repeats: int = 3) -> list[dict[str, Any]]:
    """Time every plan of a cuDNN ``graph`` (its heuristics' ranked list) on ``pack``'s tensors
    and select the fastest; returns each plan's index, name and median milliseconds (or why it
    did not build). The outputs in ``pack`` are overwritten by every run."""
    rows: list[dict[str, Any]] = []
    for index in range(graph.get_execution_plan_count()):
        try:
            graph.build_plan_at_index(index)  # selects it
        except Exception as exc:  # a plan that declines this graph is skipped
            rows.append({"index": index, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        workspace = torch.empty(graph.get_workspace_size(), device=device, dtype=torch.uint8)
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            _synchronize(device)
            start = time.perf_counter()
            graph.execute(pack, workspace, handle=handle)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        times = times[1:]
        rows.append({"index": index, "plan": graph.get_plan_name_at_index(index),
                     "ms": 1e3 * sorted(times)[len(times) // 2]})
    timed = [row for row in rows if "ms" in row]
    if not timed:
        raise RuntimeError(f"no plan of the cuDNN graph builds: {rows}")
    graph.build_plan_at_index(min(timed, key=lambda row: row["ms"])["index"])
    return rows


_GRAPHS = _CudnnGraphs()


REFERENCE_MAX_TOKENS = 16384  # the reference kernel holds L x L scores


def _check_reference_length(x: Tensor) -> None:
    length, head_dim = x.shape[-2:]
    if length > REFERENCE_MAX_TOKENS:
        raise RuntimeError(
            f"FP8 attention over {length} tokens on {x.device} needs cuDNN's fused FP8 "
            f"attention: a Hopper (or newer) GPU, pip install 'ctrlpost[fp8]' and heads of "
            f"{FUSED_HEAD_DIM} channels (these have {head_dim}); or set "
            'model.base_precision = "fp8" (FP8 linears, bf16 attention)')


def unmet_requirements(head_dim: int, tokens: int) -> list[str]:
    """What keeps FP8 attention over ``tokens`` tokens, heads of ``head_dim`` channels, from
    running on this installation, a line each with its fix: beyond the reference computation's
    length it needs the fused kernel, which needs the cuDNN frontend and heads it takes."""
    if tokens <= REFERENCE_MAX_TOKENS:  # shorter ones run the reference computation
        return []
    needs = f'"fp8-attention" over {tokens:,} tokens needs cuDNN\'s fused FP8 attention'
    fallback = 'model.base_precision = "fp8" (FP8 linears, bf16 attention)'
    if head_dim != FUSED_HEAD_DIM:
        return [f"{needs}, which takes heads of {FUSED_HEAD_DIM} channels; these have "
                f"{head_dim}: set {fallback}"]
    if not _frontend_loads():
        return [f"{needs}: pip install 'ctrlpost[fp8]' (and a Hopper or newer GPU), or set "
                f"{fallback}"]
    return []


def _round_fp8(x: Tensor, scale: float | Tensor) -> Tensor:
    """``x`` rounded to e4m3 at ``scale`` and scaled back (float32)."""
    return (x * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() / scale


def _reference_forward(q8: Tensor, k8: Tensor, v8: Tensor, out8: Tensor, stats: Tensor,
                       scalars: dict[str, Tensor]) -> None:
    """What the fused forward computes, in float32 with the L x L scores in memory."""
    _check_reference_length(q8)
    q, k, v = (x.float() * scalars[f"descale_{n}"] for x, n in ((q8, "q"), (k8, "k"), (v8, "v")))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probabilities = _round_fp8(torch.exp(scores - lse), PROBABILITY_SCALE)
    out = probabilities @ v
    out8.copy_((out * scalars["scale_o"]).clamp(-FP8_MAX, FP8_MAX).to(FP8))
    stats.copy_(lse)


def _reference_backward(inputs: dict[str, Tensor], grads: dict[str, Tensor],
                        scalars: dict[str, Tensor]) -> Tensor:
    """What the fused backward computes (float32, L x L in memory); returns the maxima of
    ``dP, dQ, dK, dV`` before scaling."""
    _check_reference_length(inputs["q"])
    q, k, v, o, d_o = (inputs[n].float() * scalars[f"descale_{n}"]
                       for n in ("q", "k", "v", "o", "dO"))
    attn_scale = 1.0 / math.sqrt(q.shape[-1])
    probabilities = torch.exp(q @ k.transpose(-1, -2) * attn_scale - inputs["stats"])
    d_v = _round_fp8(probabilities, PROBABILITY_SCALE).transpose(-1, -2) @ d_o
    delta = (o * d_o).sum(dim=-1, keepdim=True)
    # The score gradient; cuDNN names it dP and reports its maximum as amax_dP.
    d_s = probabilities * (d_o @ v.transpose(-1, -2) - delta) * attn_scale
    d_s_fp8 = _round_fp8(d_s, scalars["scale_dP"])
    d_q, d_k = d_s_fp8 @ k, d_s_fp8.transpose(-1, -2) @ q
    for name, value in (("dQ", d_q), ("dK", d_k), ("dV", d_v)):
        grads[name].copy_((value * scalars[f"scale_{name}"]).clamp(-FP8_MAX, FP8_MAX).to(FP8))
    return torch.stack([x.abs().amax() for x in (d_s, d_q, d_k, d_v)])


def _ones(device: torch.device, value: float) -> Tensor:
    return torch.full((1, 1, 1, 1), value, device=device, dtype=torch.float32)


def _scaled_to_fp8(x: Tensor, scale: Tensor) -> Tensor:
    # Power-of-two scales make the bf16 product exact; the cast does the one rounding.
    return (x * scale.to(x.dtype)).to(FP8)


def _blhd_like(q: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty ``[B, H, L, Dh]`` tensor stored as ``[B, L, H, Dh]`` (heads interleaved per
    token, so the output projection reads it without a copy)."""
    batch, heads, length, head_dim = q.shape
    return q.new_empty(batch, length, heads, head_dim, dtype=dtype).transpose(1, 2)


def quantize_inputs(q: Tensor, k: Tensor, v: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``q, k, v`` in e4m3 and the descales of ``q, k, v, o`` (float32 ``[4]``).

    Plain tensor code, outside the ops, so torch.compile fuses it with the ops that produce
    ``q, k, v`` and checkpointing recomputes it like them (it is cheap; keeping the e4m3 copies
    would cost 3 bytes per token and channel in every selective block)."""
    q, k, v = q.detach(), k.detach(), v.detach()
    amax = torch.stack([x.abs().amax() for x in (q, k, v)]).float()
    scale = power_of_two_scale(amax)  # q, k, v
    # |O| ≤ max|v|·Σ P, so O's scale is known before the kernel.
    scale_o = power_of_two_scale(amax[2], O_HEADROOM).reshape(1)
    q8, k8, v8 = (_scaled_to_fp8(x, s) for x, s in zip((q, k, v), scale, strict=True))
    return q8, k8, v8, torch.cat([scale, scale_o]).reciprocal()


@torch.library.custom_op("ctrlpost::fp8_attention", mutates_args=())
def fp8_attention_op(q8: Tensor, k8: Tensor, v8: Tensor, descales: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """The fused forward: self-attention of e4m3 ``[B, H, L, Dh]`` tensors (unit last stride)
    given the descales of ``q, k, v, o`` (:func:`quantize_inputs`). Returns the output in e4m3
    and the softmax statistics (log-sum-exp per query). No autograd of its own: selective
    checkpointing keeps these two (half the bytes of a bf16 output) and
    :func:`fp8_attention_output_op` carries the gradients."""
    out8, stats = _blhd_like(q8, FP8), q8.new_empty(*q8.shape[:-1], 1, dtype=torch.float32)
    scalars = forward_scalars(descales)
    if runs_fused_kernel(q8):
        amax_out = {name: _ones(q8.device, 0.0) for name in ("amax_s", "amax_o")}
        _GRAPHS.forward(q8, k8, v8, out8, stats, scalars, amax_out)
    else:
        _reference_forward(q8, k8, v8, out8, stats, scalars)
    return out8, stats


@fp8_attention_op.register_fake
def _fp8_attention_fake(q8: Tensor, k8: Tensor, v8: Tensor, descales: Tensor
                        ) -> tuple[Tensor, Tensor]:
    return _blhd_like(q8, FP8), q8.new_empty(*q8.shape[:-1], 1, dtype=torch.float32)


@torch.library.custom_op("ctrlpost::fp8_attention_output", mutates_args=())
def fp8_attention_output_op(q: Tensor, k: Tensor, v: Tensor, out8: Tensor, stats: Tensor,
                            q8: Tensor, k8: Tensor, v8: Tensor, descales: Tensor,
                            backward_scales: Tensor) -> Tensor:
    """The attention output in ``q``'s dtype (``out8`` widened, exactly: the scale is a power
    of two), differentiable in ``q, k, v``: its backward is the fused FP8 backward, which reads
    the e4m3 tensors and ``backward_scales`` (the call site's :data:`HEADROOM`-delayed
    scales). A cheap op of its own, so checkpointing recomputes it from the kept ``out8``
    instead of keeping a bf16 copy."""
    del k, v, stats, q8, k8, v8, backward_scales
    return out8.to(q.dtype) * descales[3].to(q.dtype)


@fp8_attention_output_op.register_fake
def _fp8_attention_output_fake(q: Tensor, k: Tensor, v: Tensor, out8: Tensor, stats: Tensor,
                               q8: Tensor, k8: Tensor, v8: Tensor, descales: Tensor,
                               backward_scales: Tensor) -> Tensor:
    return _blhd_like(q, q.dtype)


def _as_scalar(value: float | Tensor, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.float().reshape(1, 1, 1, 1)
    return _ones(device, value)


def forward_scalars(descales: Tensor) -> dict[str, Tensor]:
    """The forward kernel's scale inputs, by cuDNN's names, from the descales of ``q, k, v, o``
    (``[4]``): each ``[1, 1, 1, 1]`` float32."""
    given: dict[str, float | Tensor] = {
        "descale_q": descales[0], "descale_k": descales[1], "descale_v": descales[2],
        "descale_s": 1 / PROBABILITY_SCALE, "scale_s": PROBABILITY_SCALE,
        "scale_o": descales[3].reciprocal()}
    return {name: _as_scalar(value, descales.device) for name, value in given.items()}


def backward_scalars(descales: Tensor, descale_do: Tensor, scale: Tensor) -> dict[str, Tensor]:
    """The backward kernel's scale inputs, by cuDNN's names: the forward's descales
    (``q, k, v, o``), ``dO``'s and the scales of ``dP, dQ, dK, dV`` (``scale``, ``[4]``)."""
    given: dict[str, float | Tensor] = {
        "descale_q": descales[0], "descale_k": descales[1], "descale_v": descales[2],
        "descale_o": descales[3], "descale_dO": descale_do,
        "descale_s": 1 / PROBABILITY_SCALE, "scale_s": PROBABILITY_SCALE,
        "scale_dP": scale[0], "descale_dP": scale[0].reciprocal(),
        "scale_dQ": scale[1], "scale_dK": scale[2], "scale_dV": scale[3]}
    return {name: _as_scalar(value, descales.device) for name, value in given.items()}


@torch.library.custom_op("ctrlpost::fp8_attention_backward", mutates_args=("backward_scales",))
def fp8_attention_backward_op(d_o8: Tensor, descale_do: Tensor, out8: Tensor, q8: Tensor,
                              k8: Tensor, v8: Tensor, stats: Tensor, descales: Tensor,
                              backward_scales: Tensor
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` in e4m3 of :func:`fp8_attention_op`, and the scales of ``dP, dQ, dK,
    dV`` they were computed with (float32 ``[4]``).

    ``backward_scales`` (float32 ``[4]``; zeros before the first call) are the scales to use,
    updated in place from the maxima this call reports. A call whose values outgrew them, or
    the first, is run again with the new ones (one host sync per run)."""
    if d_o8.stride(-1) != 1:
        d_o8 = d_o8.contiguous()
    device = d_o8.device
    inputs = {"q": q8, "k": k8, "v": v8, "o": out8, "stats": stats, "dO": d_o8}
    grads = {"dQ": torch.empty_like(q8), "dK": torch.empty_like(k8), "dV": torch.empty_like(v8)}
    on_cudnn = runs_fused_kernel(q8)
    # Zeros: the site's first call. Read with the run's maxima, after the kernel: one host sync
    # per run instead of a second one before the kernel, which left the GPU idle while the
    # kernel's scalars were built.
    had_scales: Tensor | bool = (backward_scales > 0).all()
    # Without history the score gradient first runs at scale 1 and may vanish in e4m3, and dQ
    # and dK with it: their maxima are known only from the run after; hence up to three.
    for _attempt in range(3):
        scale = torch.where(backward_scales > 0, backward_scales, torch.ones_like(backward_scales))
        scalars = backward_scalars(descales, descale_do, scale)
        if on_cudnn:
            amax_out = {f"amax_{n}": _ones(device, 0.0) for n in _BACKWARD_SCALES}
            _GRAPHS.backward(inputs, grads, scalars, amax_out)
            amax = torch.cat([amax_out[f"amax_{n}"].reshape(1) for n in _BACKWARD_SCALES])
        else:
            amax = _reference_backward(inputs, grads, scalars)
        fits = bool((amax * scale <= FP8_MAX).all() & had_scales)
        backward_scales.copy_(power_of_two_scale(amax, HEADROOM))
        had_scales = True  # from here on the scales come from a run's maxima
        if fits:
            break
        REDONE[0] += 1
    return grads["dQ"], grads["dK"], grads["dV"], scale


REDONE = [0]  # backward calls run twice (first call of a site, or a value outgrew its scale)


@fp8_attention_backward_op.register_fake
def _fp8_attention_backward_fake(d_o8: Tensor, descale_do: Tensor, out8: Tensor, q8: Tensor,
                                 k8: Tensor, v8: Tensor, stats: Tensor, descales: Tensor,
                                 backward_scales: Tensor
                                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(q8), torch.empty_like(k8), torch.empty_like(v8),
            backward_scales.new_empty(4))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    _q, _k, _v, out8, stats, q8, k8, v8, descales, backward_scales = inputs
    ctx.save_for_backward(q8, k8, v8, out8, stats, descales, backward_scales)


def _attention_input_gradients(grad_out: Tensor, saved: tuple[Tensor, ...]
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` in ``grad_out``'s dtype from the output's gradient ``[B, H, L, Dh]`` and
    the forward's ``q8, k8, v8, out8, stats, descales, backward_scales``.

    dO's quantization and the gradients' widening are tensor code around the kernel's op:
    compiled with the block's backward."""
    q8, k8, v8, out8, stats, descales, backward_scales = saved
    scale_do = power_of_two_scale(grad_out.abs().amax())
    d_o8 = _scaled_to_fp8(grad_out, scale_do)
    *grads, scale = fp8_attention_backward_op(d_o8, scale_do.reciprocal(), out8, q8, k8, v8,
                                              stats, descales, backward_scales)
    dtype = grad_out.dtype
    dq, dk, dv = (g.to(dtype) * scale[i + 1].reciprocal().to(dtype) for i, g in enumerate(grads))
    return dq, dk, dv


def _backward(ctx: Any, grad_out: Tensor, *unused: Any) -> tuple[Tensor | None, ...]:
    return *_attention_input_gradients(grad_out, ctx.saved_tensors), *(None,) * 7


fp8_attention_output_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("ctrlpost::fp8_attention_projected", mutates_args=())
def fp8_attention_projected_op(q: Tensor, k: Tensor, v: Tensor, out8: Tensor, stats: Tensor,
                               q8: Tensor, k8: Tensor, v8: Tensor, descales: Tensor,
                               backward_scales: Tensor, weight_N_K: Tensor,
                               weight_fp8_N_K: Tensor, weight_scale_N_1: Tensor) -> Tensor:
    """The output projection ``O Wᵀ`` (``[B, L, N]``, ``q``'s dtype) straight from the e4m3
    output: its per-tensor scale serves as every token's row scale, so the product reads the
    kernel's bytes as they are — no bf16 copy of ``O`` is written, and none is rounded to e4m3
    a second time (per-row scales of a widened copy would move it off its grid). ``W`` is
    quantized per output feature (:func:`ctrlpost.models.fp8.quantize_rows`).

    Differentiable in ``q, k, v``: the backward is the FP8 input gradient of the projection
    (``dO = dy W``), then the fused FP8 attention backward."""
    del k, v, stats, q8, k8, v8, backward_scales
    batch, heads, length, head_dim = out8.shape
    out8_M_K = out8.transpose(1, 2).reshape(batch * length, heads * head_dim)  # stored so: a view
    scale_M_1 = descales[3].reshape(1, 1).expand(batch * length, 1).contiguous()
    y_M_N = scaled_product(out8_M_K, scale_M_1, weight_fp8_N_K, weight_scale_N_1, q.dtype)
    return y_M_N.view(batch, length, weight_N_K.shape[0])


@fp8_attention_projected_op.register_fake
def _fp8_attention_projected_fake(q: Tensor, k: Tensor, v: Tensor, out8: Tensor,
                                  stats: Tensor, q8: Tensor, k8: Tensor, v8: Tensor,
                                  descales: Tensor, backward_scales: Tensor, weight_N_K: Tensor,
                                  weight_fp8_N_K: Tensor, weight_scale_N_1: Tensor) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[2], weight_N_K.shape[0])


def _setup_projected_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    _q, _k, _v, out8, stats, q8, k8, v8, descales, backward_scales, weight, *_ = inputs
    ctx.save_for_backward(q8, k8, v8, out8, stats, descales, backward_scales, weight)


def _projected_backward(ctx: Any, grad_y_B_L_N: Tensor) -> tuple[Tensor | None, ...]:
    *saved, weight_N_K = ctx.saved_tensors
    batch, heads, length, head_dim = saved[3].shape  # out8
    grad_out_M_K = input_gradient(grad_y_B_L_N.reshape(batch * length, -1), weight_N_K)
    grad_out = grad_out_M_K.view(batch, length, heads, head_dim).transpose(1, 2)
    return *_attention_input_gradients(grad_out, tuple(saved)), *(None,) * 10


fp8_attention_projected_op.register_autograd(_projected_backward,
                                             setup_context=_setup_projected_context)


def fp8_self_attention(q: Tensor, k: Tensor, v: Tensor, backward_scales: Tensor) -> Tensor:
    """Self-attention in FP8 of ``[B, H, L, Dh]`` bf16 tensors; the output as ``[B, H, L, Dh]``
    (stored ``[B, L, H, Dh]``). ``backward_scales``: the call site's float32 ``[4]`` buffer."""
    q8, k8, v8, descales = quantize_inputs(q, k, v)
    out8, stats = fp8_attention_op(q8, k8, v8, descales)
    return fp8_attention_output_op(q, k, v, out8, stats, q8, k8, v8, descales, backward_scales)


def fp8_self_attention_projected(q: Tensor, k: Tensor, v: Tensor, backward_scales: Tensor,
                                 weight_N_K: Tensor) -> Tensor:
    """:func:`fp8_self_attention` followed by the frozen output projection ``weight`` (``[N,
    H·Dh]``, no bias) as one FP8 product on the kernel's e4m3 output: ``[B, L, N]``."""
    if weight_N_K.requires_grad:
        raise RuntimeError("the FP8 output projection is for a frozen weight")
    q8, k8, v8, descales = quantize_inputs(q, k, v)
    out8, stats = fp8_attention_op(q8, k8, v8, descales)
    weight_fp8, weight_scale = quantize_rows(weight_N_K.detach())
    return fp8_attention_projected_op(q, k, v, out8, stats, q8, k8, v8, descales,
                                      backward_scales, weight_N_K, weight_fp8, weight_scale)
