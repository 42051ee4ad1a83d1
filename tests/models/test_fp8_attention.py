"""FP8 self-attention of the frozen base: the per-tensor scales, the delayed backward scales,
the reference computation (CPU), its place in selective checkpointing and torch.compile, and on
a Hopper GPU the fused cuDNN kernels against that reference (``-m gpu``)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from ctrlpost.engine import parallel
from ctrlpost.models import blocks
from ctrlpost.models import fp8_attention as fa
from ctrlpost.models.base_precision import self_attentions, to_fp8_attention
from ctrlpost.models.fp8 import Fp8FrozenLinear, quantize_rows

from .test_fp8 import frozen_tiny_base


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.float()).norm() / b.float().norm())


def qkv(length: int = 192, heads: int = 2, head_dim: int = 32, device: str = "cpu"
        ) -> tuple[torch.Tensor, ...]:
    """q, k, v as the model hands them over ([B, H, L, Dh] views of [B, L, H, Dh]) and dO."""
    g = torch.Generator(device=device).manual_seed(0)

    def t(std: float, grad: bool = True) -> torch.Tensor:
        x = torch.randn(1, length, heads, head_dim, generator=g, device=device) * std
        return x.to(torch.bfloat16).transpose(1, 2).requires_grad_(grad)

    return t(1.0), t(1.0), t(0.5), t(1e-3, grad=False)


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, d_o: torch.Tensor
          ) -> tuple[torch.Tensor, ...]:
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    out = F.scaled_dot_product_attention(*leaves)
    out.backward(d_o.float())
    return (out.detach(), *(x.grad for x in leaves))


def test_power_of_two_scales_fill_the_range_without_overflow() -> None:
    amax = torch.tensor([1.0, 3.0, 448.0, 1e-3, 0.0])
    scale = fa.power_of_two_scale(amax)
    assert torch.equal(torch.log2(scale), torch.log2(scale).round())  # exact powers of two
    assert bool((amax * scale <= fa.FP8_MAX).all())
    assert bool((amax * scale * 2 > fa.FP8_MAX)[:4].all())  # the largest such power
    assert torch.isfinite(scale).all()  # an all-zero tensor gets a finite scale


def test_reference_fp8_attention_is_close_to_exact_attention_and_keeps_the_layout() -> None:
    q, k, v, d_o = qkv()
    scales = torch.zeros(4)
    out = fa.fp8_self_attention(q, k, v, scales)
    out.backward(d_o)
    assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()  # [B, L, H, Dh] storage
    truth = exact(q, k, v, d_o)
    got = (out, q.grad, k.grad, v.grad)
    errors = [rel(value, want) for value, want in zip(got, truth, strict=True)]
    # e4m3 keeps 3 mantissa bits: a few percent, not more (and never the gradients' vanishing).
    assert max(errors) < 0.12, errors
    assert bool((scales > 0).all())


def test_the_first_backward_call_finds_its_scales_and_later_calls_reuse_them() -> None:
    q, k, v, d_o = qkv()
    scales = torch.zeros(4)
    before = fa.REDONE[0]
    fa.fp8_self_attention(q, k, v, scales).backward(d_o)
    first = fa.REDONE[0] - before
    assert first >= 1  # no history: run again at the reported maxima
    kept = scales.clone()
    fa.fp8_self_attention(q, k, v, scales).backward(d_o)
    assert fa.REDONE[0] - before == first  # same gradients fit the delayed scales
    assert torch.equal(scales, kept)
    # A gradient 64x larger outgrows them: the call is redone, nothing saturates.
    for x in (q, k, v):
        x.grad = None
    fa.fp8_self_attention(q, k, v, scales).backward(d_o * 64)
    assert fa.REDONE[0] - before == first + 1
    truth = exact(q, k, v, d_o * 64)
    assert rel(q.grad, truth[1]) < 0.12 and rel(v.grad, truth[3]) < 0.12


def test_selective_checkpointing_keeps_the_fp8_attention_and_compile_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, d_o = qkv()
    forwards = []
    reference_forward = fa._reference_forward
    monkeypatch.setattr(fa, "_reference_forward",
                        lambda *a: forwards.append(1) or reference_forward(*a))
    policy = functools.partial(create_selective_checkpoint_contexts,
                               parallel._keep_attention_outputs)

    def branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return fa.fp8_self_attention(q * 1.0, k, v, s) * 2.0

    def step(fn: object) -> list[torch.Tensor]:
        scales = torch.zeros(4)
        for _ in range(2):
            for x in (q, k, v):
                x.grad = None
            forwards.clear()
            out = checkpoint(fn, q, k, v, scales, use_reentrant=False, context_fn=policy)
            out.backward(d_o)
        assert len(forwards) == 1  # kept by the policy, not recomputed in the backward
        return [x.grad.clone() for x in (q, k, v)]

    eager = step(branch)
    compiled = step(torch.compile(branch))
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled, strict=True))


def projected_inputs() -> tuple[torch.Tensor, ...]:
    q, k, v, _ = qkv()
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(48, 64, generator=g) / 8).to(torch.bfloat16)  # [N, H·Dh]
    d_y = (torch.randn(1, q.shape[2], 48, generator=g) * 1e-3).to(torch.bfloat16)
    return q, k, v, weight, d_y


def test_the_projection_reads_the_e4m3_output_without_rounding_it_again() -> None:
    q, k, v, weight, _ = projected_inputs()
    q8, k8, v8, descales = fa.quantize_inputs(q, k, v)
    out8, _ = fa.fp8_attention_op(q8, k8, v8, descales)
    y = fa.fp8_self_attention_projected(q, k, v, torch.zeros(4), weight)
    # What the product must equal: the kernel's output exactly as written (e4m3 times its
    # power-of-two scale) against the row-quantized weight, in float32, rounded once to bf16.
    weight8, weight_scale = quantize_rows(weight)
    o = out8.float().transpose(1, 2).flatten(2) * descales[3]
    want = o @ (weight8.float() * weight_scale).t()
    assert y.shape == (1, q.shape[2], 48) and y.dtype == torch.bfloat16
    assert rel(y, want) < 4e-3  # bf16's rounding of the result, nothing more
    # Widening O to bf16 and quantizing it per row again (the unfused path) moves it off the
    # grid it was written on: measurably further from the same truth.
    widened = fa.fp8_self_attention(q, k, v, torch.zeros(4)).transpose(1, 2).flatten(2)
    twice_rounded = Fp8FrozenLinear(64, 48, bias=False)
    twice_rounded.weight = torch.nn.Parameter(weight, requires_grad=False)
    assert rel(twice_rounded(widened), want) > 2 * rel(y, want)


def test_the_projected_attention_has_the_unfused_paths_input_gradients() -> None:
    q, k, v, weight, d_y = projected_inputs()
    fa.fp8_self_attention_projected(q, k, v, torch.zeros(4), weight).backward(d_y)
    fused = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    layer = Fp8FrozenLinear(64, 48, bias=False)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    out = fa.fp8_self_attention(q, k, v, torch.zeros(4))
    layer(out.transpose(1, 2).flatten(2)).backward(d_y)
    # The backward does not read the forward's product: the same FP8 steps, bit for bit.
    assert all(torch.equal(a, x.grad) for a, x in zip(fused, (q, k, v), strict=True))
    assert all(bool(g.abs().sum() > 0) for g in fused)


def test_the_projection_refuses_a_trainable_weight() -> None:
    q, k, v, weight, _ = projected_inputs()
    with pytest.raises(RuntimeError, match="frozen"):
        fa.fp8_self_attention_projected(q, k, v, torch.zeros(4), weight.requires_grad_())


def test_an_fp8_attention_block_projects_its_output_in_the_fused_op(
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = frozen_tiny_base()
    to_fp8_attention(base)
    calls = []
    monkeypatch.setattr(blocks, "fp8_self_attention_projected",
                        lambda *a: calls.append(1) or fa.fp8_self_attention_projected(*a))
    attention = self_attentions(base)[0]
    x = torch.randn(1, 24, attention.to_q[0].in_features, dtype=torch.bfloat16)
    rope = torch.stack([torch.ones(24, attention.head_dim), torch.zeros(24, attention.head_dim)])
    y = attention(x, None, rope)
    assert calls == [1] and y.shape == x.shape and bool(y.abs().sum() > 0)


def test_fp8_attention_base_keeps_its_state_dict_and_resets_its_scales() -> None:
    base = frozen_tiny_base()
    keys = set(base.state_dict())
    changed = to_fp8_attention(base)
    attentions = self_attentions(base)
    assert attentions and changed == len(attentions) * (1 + 10)  # + q/k/v/out ×2, MLP ×2
    assert set(base.state_dict()) == keys  # the scales are not part of a checkpoint
    for attention in attentions:
        attention.fp8_backward_scales.fill_(3.0)  # type: ignore[union-attr]
        attention.reset_fp8_scales()  # type: ignore[operator]
        assert not attention.fp8_backward_scales.any()  # type: ignore[union-attr]


def test_long_sequences_without_the_fused_kernel_are_refused_with_the_fix() -> None:
    q = torch.zeros(1, 1, fa.REFERENCE_MAX_TOKENS + 1, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError,
                       match=r"ctrlpost\[fp8\].*heads of 128 channels \(these have 8\)"):
        fa.fp8_self_attention(q, q, q, torch.zeros(4))


def test_heads_the_fused_kernel_does_not_take_run_the_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's FP8 attention takes heads of 128 channels only (it refuses to build a graph for
    others): a device that has the kernel still computes other head sizes with the reference."""
    monkeypatch.setattr(fa, "cudnn_available", lambda _device: True)
    assert fa.runs_fused_kernel(torch.zeros(1, 2, 16, fa.FUSED_HEAD_DIM))
    assert not fa.runs_fused_kernel(torch.zeros(1, 2, 16, 32))

    class NoGraphs:  # the fused kernel must not be reached for these heads
        def forward(self, *args: object) -> None:
            raise AssertionError("the fused kernel was called for heads of 32")

        backward = forward

    monkeypatch.setattr(fa, "_GRAPHS", NoGraphs())
    q, k, v, d_o = qkv(head_dim=32)
    out = fa.fp8_self_attention(q, k, v, torch.zeros(4))
    out.backward(d_o)
    assert rel(out, exact(q, k, v, d_o)[0]) < 0.08 and q.grad is not None


def test_a_frontend_that_cannot_load_cudnn_means_no_fused_kernel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def failing(name: str, *args: object, **kwargs: object) -> object:
        if name == "cudnn":  # what nvidia-cudnn-frontend raises without libcudnn
            raise OSError("libcudnn.so.9: cannot open shared object file")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", failing)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert not fa.cudnn_available(torch.device("cuda", 0))


@pytest.mark.gpu
def test_fused_kernels_match_the_reference_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available() or not fa.cudnn_available(torch.device("cuda")):
        pytest.fail("needs a Hopper GPU and nvidia-cudnn-frontend (pip install 'ctrlpost[fp8]')")
    q, k, v, d_o = qkv(length=1024, heads=4, head_dim=128, device="cuda")
    results = []
    # cuDNN's first-ranked plans, every plan timed and the fastest kept, the reference
    tuned_graphs = fa._CudnnGraphs(autotune=True)
    for fused, graphs in ((True, fa._CudnnGraphs()), (True, tuned_graphs), (False, None)):
        monkeypatch.setattr(fa, "cudnn_available", lambda _device, fused=fused: fused)
        monkeypatch.setattr(fa, "_GRAPHS", graphs)
        scales = torch.zeros(4, device="cuda")
        for _ in range(2):
            for x in (q, k, v):
                x.grad = None
            out = fa.fp8_self_attention(q, k, v, scales)
            out.backward(d_o)
        results.append((out.detach(), q.grad, k.grad, v.grad))
    # Two FP8 implementations rounding differently (an H100 at 2,048 tokens: output 4.9 %,
    # gradients 1.3-2.4 %); a wrong scale or layout would be off by 100 % or more.
    for first, tuned, reference_value in zip(*results, strict=True):
        assert rel(first, reference_value) < 0.08 and rel(tuned, reference_value) < 0.08
    # the forward and the backward graph each timed, their plans by name
    assert sorted(key[0] for key in tuned_graphs.plan_times) == ["bwd", "fwd"]
    assert all(any("ms" in row for row in rows) for rows in tuned_graphs.plan_times.values())


class PlannedGraph:
    """What :func:`fa.fastest_plan` reads of a cuDNN graph: ranked plans, one selected at a
    time, each taking its own time to run (``costs``, seconds; None: declines this graph)."""

    def __init__(self, costs: list[float | None]) -> None:
        self.costs, self.selected, self.runs = costs, 0, [0] * len(costs)

    def get_execution_plan_count(self) -> int:
        return len(self.costs)

    def build_plan_at_index(self, index: int) -> None:
        if self.costs[index] is None:
            raise RuntimeError(f"plan {index} does not support this graph")
        self.selected = index

    def get_plan_name_at_index(self, index: int) -> str:
        return f"engine{index}"

    def get_workspace_size(self) -> int:
        return 16

    def execute(self, pack: dict[str, torch.Tensor], workspace: torch.Tensor,
                handle: object = None) -> None:
        import time

        cost = self.costs[self.selected]
        assert cost is not None
        time.sleep(cost)
        self.runs[self.selected] += 1
        pack["out"].fill_(self.selected)


def test_autotuning_times_every_plan_that_builds_and_keeps_the_fastest() -> None:
    graph = PlannedGraph([0.03, None, 0.002, 0.01])
    pack = {"out": torch.zeros(2)}
    rows = fa.fastest_plan(graph, pack, None, torch.device("cpu"), repeats=3)
    assert graph.selected == 2  # the fastest, selected for the calls after
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert "does not support" in rows[1]["error"] and "ms" not in rows[1]
    assert [row["plan"] for row in rows if "ms" in row] == ["engine0", "engine2", "engine3"]
    assert rows[2]["ms"] < rows[3]["ms"] < rows[0]["ms"]
    assert graph.runs == [4, 0, 4, 4]  # a warm-up and three timed runs each
    with pytest.raises(RuntimeError, match="no plan of the cuDNN graph builds"):
        fa.fastest_plan(PlannedGraph([None, None]), pack, None, torch.device("cpu"))


@pytest.mark.parametrize("autotune", [False, True])
def test_a_graph_is_tuned_on_its_first_call_only_and_only_when_asked(autotune: bool) -> None:
    graphs = fa._CudnnGraphs(autotune=autotune)
    graph, key = PlannedGraph([0.01, 0.001]), ("bwd", "shape")
    for _ in range(2):
        graphs._tune_once(graph, {"out": torch.zeros(1)}, None, torch.device("cpu"), key)
    # tuned: both plans timed once (4 runs each), the faster selected; else the first, untouched
    assert graph.runs == ([4, 4] if autotune else [0, 0])
    assert graph.selected == (1 if autotune else 0)
    assert (key in graphs.plan_times) == autotune
    assert fa._GRAPHS.autotune is False  # the model's graphs run cuDNN's first choice
