"""GraphReplay: a traced TorchScript graph run as aten calls, eager and under torch.compile."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctrlpost.models.jit_replay import GraphReplay, UnsupportedGraph
from ctrlpost.models.tokenizer import torchscript_deprecation_silenced

from .conftest import convolutions, grouped_convolutions, softmax_sizes


class CausalBlock(nn.Module):
    """The op mix of the released tokenizer's encoder, small: a causal time padding by
    repeating the first frame, spatial zero padding, 3-D convolutions, a group norm over each
    frame (batch and time folded), SiLU, a split whose sizes come from the input's shape,
    attention over space, average pooling, a dtype round trip and a tuple output."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv_in = nn.Conv3d(3, channels, (1, 3, 3))
        self.conv_t = nn.Conv3d(channels, channels, (3, 1, 1))
        self.norm = nn.GroupNorm(1, channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        first, rest = torch.split(video, [1, video.shape[2] - 1], dim=2)
        x = torch.cat([first.repeat_interleave(2, dim=2), rest], dim=2)
        x = self.conv_in(F.pad(x, (1, 1, 1, 1, 0, 0)))
        x = self.conv_t(torch.cat([x[:, :, :1].repeat(1, 1, 2, 1, 1), x], dim=2))
        batch = x.size(0)
        frames = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
        x = self.norm(frames).unflatten(0, (batch, -1)).permute(0, 2, 1, 3, 4)
        x = F.silu(x)
        q, k, v = self.qkv(x).chunk(3, dim=1)
        tokens = [t.permute(0, 2, 3, 4, 1).flatten(2, 3) for t in (q, k, v)]  # b t hw c
        attended = F.scaled_dot_product_attention(*tokens)
        x = x + attended.unflatten(2, x.shape[3:]).permute(0, 4, 1, 2, 3)
        x = F.avg_pool3d(x, kernel_size=(1, 2, 2)).to(torch.float64).to(video.dtype)
        zero = x.new_zeros(1)
        return x, (zero, zero)


@pytest.fixture(scope="module")
def traced() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    block = CausalBlock().eval()
    with torch.no_grad(), torchscript_deprecation_silenced():
        return torch.jit.trace(block, torch.rand(1, 3, 5, 8, 12), check_trace=False)


def test_eager_replay_computes_what_the_script_module_computes(
        traced: torch.jit.ScriptModule) -> None:
    replay = GraphReplay(traced)
    # The trace's shape and another: sizes are recomputed from the input, not baked in.
    for shape in [(1, 3, 5, 8, 12), (2, 3, 9, 6, 10)]:
        video = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            expected, (zero, _) = traced(video)
            got, (replayed_zero, _) = replay(video)
        assert got.shape == expected.shape and torch.equal(got, expected)
        assert torch.equal(replayed_zero, zero)


def test_a_tensor_read_at_several_places_is_one_buffer() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.register_buffer("scale", torch.tensor([2.0, 3.0, 4.0, 5.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(self.a(x)) * self.scale  # a's weights twice, then the buffer
            return self.b(x) * self.scale  # and new tensors after the repeats

    with torchscript_deprecation_silenced():
        traced = torch.jit.trace(Shared(), torch.rand(2, 4))
    replay = GraphReplay(traced)
    x = torch.rand(3, 4)
    assert torch.equal(replay(x), traced(x))
    assert len(dict(replay.named_buffers(remove_duplicate=False))) == 5  # 2 + 2 + 1 tensors


def test_the_replay_shares_the_script_modules_tensors(traced: torch.jit.ScriptModule) -> None:
    replay = GraphReplay(traced)
    script_pointers = {p.data_ptr() for p in traced.parameters()}
    replay_pointers = {b.data_ptr() for b in replay.buffers()}
    assert script_pointers <= replay_pointers  # every parameter, none copied
    assert not list(replay.state_dict())  # nothing saved twice: the jit file is the source


def test_a_scripted_module_with_control_flow_is_refused() -> None:
    class Branches(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * 2
            return x

    with torchscript_deprecation_silenced():
        scripted = torch.jit.script(Branches())
    with pytest.raises(UnsupportedGraph, match="prim::If"):
        GraphReplay(scripted)


def test_a_wrong_number_of_inputs_names_the_count(traced: torch.jit.ScriptModule) -> None:
    with pytest.raises(TypeError, match="takes 1 input"):
        GraphReplay(traced)(torch.rand(1, 3, 5, 8, 12), torch.rand(1))


def test_the_replay_compiles_as_one_graph(traced: torch.jit.ScriptModule) -> None:
    replay = GraphReplay(traced)
    compiled = torch.compile(replay, fullgraph=True, dynamic=False)  # a graph break fails here
    video = torch.rand(1, 3, 5, 8, 12, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = traced(video)[0]
        got = compiled(video)[0]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


class MaterialisedAttention(nn.Module):
    """Attention written as the released tokenizer's code writes it: a spatial block (values
    channels-first, multiplied by the transposed weights) and a temporal block, causal (the mask
    built from the scores) unless told otherwise; ``keep_scores`` also returns the spatial
    scores, so that they are read outside the pattern. The scale is ``int(channels) ** -0.5``
    as there: a constant of the trace."""

    def __init__(self, channels: int = 8, keep_scores: bool = False,
                 causal: bool = True) -> None:
        super().__init__()
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.keep_scores, self.causal = keep_scores, causal

    def forward(self, x: torch.Tensor) -> Any:
        batch, channels, frames, height, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        per_frame = [t.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height * width)
                     for t in (q, k, v)]
        scores = torch.bmm(per_frame[0].permute(0, 2, 1), per_frame[1]) * (int(channels) ** -0.5)
        weights = torch.softmax(scores, dim=2)
        spatial = torch.bmm(per_frame[2], weights.permute(0, 2, 1))  # [B·T, C, HW]
        x = x + spatial.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
        q, k, v = (t.permute(0, 3, 4, 2, 1).reshape(-1, frames, channels)
                   for t in self.qkv(x).chunk(3, dim=1))
        temporal_scores = torch.bmm(q, k.permute(0, 2, 1)) * (int(channels) ** -0.5)
        if self.causal:
            lower = torch.tril(torch.ones_like(temporal_scores))
            temporal_scores = temporal_scores.masked_fill(lower == 0, float("-inf"))
        temporal = torch.bmm(torch.softmax(temporal_scores, dim=2), v)  # [B·H·W, T, C]
        x = x + temporal.reshape(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        return (x, scores) if self.keep_scores else x


def _trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    with torch.no_grad(), torchscript_deprecation_silenced():
        return torch.jit.trace(module.eval(), example, check_trace=False)


def _calls(fn: Any, *args: torch.Tensor) -> tuple[Any, set[str]]:
    """``fn(*args)`` and the torch functions and operators it called (the kernels each picks
    are the device's business: on CPUs a fused attention may still run the math path)."""
    from torch.overrides import TorchFunctionMode

    class Record(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.add(getattr(func, "__name__", str(func)).split(".")[0])
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record() as record:
        result = fn(*args)
    return result, record.names


def test_materialised_attention_runs_fused() -> None:
    video = torch.randn(2, 8, 5, 6, 7, generator=torch.Generator().manual_seed(3))
    traced = _trace(MaterialisedAttention(), video)
    replay = GraphReplay(traced, fuse_attention=True)
    assert replay.fused_attentions == 2  # the spatial block and the causal temporal one
    expected, replayed_calls = _calls(GraphReplay(traced), video)
    got, fused_calls = _calls(replay, video)
    materialised = {"bmm", "softmax", "masked_fill", "tril", "ones_like"}
    assert materialised <= replayed_calls and not materialised & fused_calls
    assert "scaled_dot_product_attention" in fused_calls
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The causal mask matters: without it the temporal block's output differs.
    unmasked = _trace(MaterialisedAttention(causal=False), video)
    assert GraphReplay(unmasked, fuse_attention=True).fused_attentions == 2
    with torch.no_grad():
        assert not torch.allclose(expected, unmasked(video), atol=1e-3)


def test_matched_attention_runs_materialised_in_slices_under_a_score_budget() -> None:
    video = torch.randn(2, 8, 5, 6, 7, generator=torch.Generator().manual_seed(12))
    traced = _trace(MaterialisedAttention(), video)
    expected, whole = softmax_sizes(GraphReplay(traced), video)
    # the spatial block: 10 frames of 42 x 42 scores; the temporal one: 84 positions of 5 x 5
    assert whole == [10 * 42 * 42, 84 * 5 * 5]
    budget = 3 * 42 * 42  # three frames' spatial scores at a time
    replay = GraphReplay(traced, fuse_attention=True, attention_score_budget=budget)
    assert replay.fused_attentions == 2
    got, sliced = softmax_sizes(replay, video)
    assert sliced == [3 * 42 * 42] * 3 + [42 * 42] + [2100]  # 10 frames as 3 + 3 + 3 + 1
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    _, calls = _calls(replay, video)
    assert "scaled_dot_product_attention" not in calls and {"bmm", "softmax"} <= calls
    # A budget below one item's scores still slices one item at a time.
    tight = GraphReplay(traced, fuse_attention=True, attention_score_budget=1)
    got, sliced = softmax_sizes(tight, video)
    assert sliced == [42 * 42] * 10 + [5 * 5] * 84
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_attention_whose_scores_are_read_elsewhere_is_left_as_it_is() -> None:
    video = torch.randn(1, 8, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    traced = _trace(MaterialisedAttention(keep_scores=True), video)
    replay = GraphReplay(traced, fuse_attention=True)
    assert replay.fused_attentions == 1  # the temporal block only
    with torch.no_grad():
        (expected, scores), (got, replayed_scores) = traced(video), replay(video)
    assert torch.equal(replayed_scores, scores)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fusing_is_off_by_default() -> None:
    video = torch.randn(1, 8, 3, 4, 5, generator=torch.Generator().manual_seed(5))
    traced = _trace(MaterialisedAttention(), video)
    replay = GraphReplay(traced)
    assert replay.fused_attentions == 0
    with torch.no_grad():
        assert torch.equal(replay(video), traced(video))


def test_fused_attention_compiles_as_one_graph() -> None:
    video = torch.randn(1, 8, 3, 4, 5, generator=torch.Generator().manual_seed(6))
    traced = _trace(MaterialisedAttention(), video)
    compiled = torch.compile(GraphReplay(traced, fuse_attention=True), fullgraph=True,
                             dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(video), traced(video), rtol=1e-4, atol=1e-5)


class WaveletSteps(nn.Module):
    """The released encoder's Haar steps, small: depthwise 3-D convolutions whose kernel tiles
    the input (pairs of frames, of rows and of columns, low and high pass, with a bias on one),
    a depthwise one that does not tile (stride 1, padded) and a dense one."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels = channels
        pair = torch.tensor([1.0, 1.0]) * 2 ** -0.5
        self.register_buffer("low", pair.repeat(channels, 1))
        self.register_buffer("high", (pair * torch.tensor([1.0, -1.0])).repeat(channels, 1))
        self.bias = nn.Parameter(torch.randn(channels))
        self.smooth = nn.Conv3d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.mix = nn.Conv3d(8 * channels, 4, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        c = self.channels
        time = (self.low.view(c, 1, 2, 1, 1), self.high.view(c, 1, 2, 1, 1))
        x = torch.cat([F.conv3d(video, time[0], self.bias, stride=(2, 1, 1), groups=c),
                       F.conv3d(video, time[1], stride=(2, 1, 1), groups=c)], dim=1)
        x = self.smooth(x)
        rows = (w.repeat(2, 1).view(2 * c, 1, 1, 2, 1) for w in (self.low, self.high))
        x = torch.cat([F.conv3d(x, w, stride=(1, 2, 1), groups=2 * c) for w in rows], dim=1)
        columns = (w.repeat(4, 1).view(4 * c, 1, 1, 1, 2) for w in (self.low, self.high))
        x = torch.cat([F.conv3d(x, w, stride=(1, 1, 2), groups=4 * c) for w in columns], dim=1)
        return self.mix(x)


def test_depthwise_convolutions_that_tile_run_as_sums() -> None:
    video = torch.randn(2, 3, 6, 8, 10, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    traced = _trace(WaveletSteps(), video)
    expected, traced_groups = grouped_convolutions(GraphReplay(traced), video)
    got, summed_groups = grouped_convolutions(GraphReplay(traced, depthwise_as_sums=True), video)
    assert traced_groups == [3, 3, 6, 6, 6, 12, 12]  # time, the padded one, rows, columns
    # Left as a convolution: the padded depthwise one (stride 1).
    assert summed_groups == [6]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # An odd size: the last frame is dropped by the convolution and by the sum alike.
    odd = torch.randn(1, 3, 7, 8, 10, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(GraphReplay(traced, depthwise_as_sums=True)(odd),
                                   traced(odd), rtol=1e-6, atol=1e-6)


def test_depthwise_sums_keep_the_dtype_and_compile_as_one_graph() -> None:
    video = torch.randn(1, 3, 4, 6, 8, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(9)
    traced = _trace(WaveletSteps(), video)
    half = GraphReplay(traced, depthwise_as_sums=True).to(torch.bfloat16)
    with torch.no_grad():
        assert half(video.to(torch.bfloat16)).dtype == torch.bfloat16
    compiled = torch.compile(GraphReplay(traced, depthwise_as_sums=True), fullgraph=True,
                             dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(video), traced(video), rtol=1e-5, atol=1e-5)


class FactorisedConvolutions(nn.Module):
    """The released encoder's factorised causal convolutions, small: (1, 3, 3) kernels (one
    padded, one strided), (3, 1, 1) kernels (one strided and padded in time), a pointwise one,
    with and without bias; and a full (3, 3, 3) kernel, which stays 3-D."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(3, channels, (1, 3, 3), padding=(0, 1, 1))
        self.spatial_down = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2),
                                      bias=False)
        self.temporal = nn.Conv3d(channels, channels, (3, 1, 1))
        self.temporal_down = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1),
                                       padding=(1, 0, 0))
        self.pointwise = nn.Conv3d(channels, 2 * channels, 1)
        self.full = nn.Conv3d(2 * channels, channels, 3, padding=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.spatial(video))
        x = self.spatial_down(x)
        x = self.temporal(torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2))
        x = self.temporal_down(F.silu(x))
        return self.full(self.pointwise(x))


def test_factorised_3d_convolutions_run_as_2d_ones() -> None:
    video = torch.randn(2, 3, 5, 9, 11, generator=torch.Generator().manual_seed(10))
    torch.manual_seed(10)
    traced = _trace(FactorisedConvolutions(), video)
    expected, as_traced = convolutions(GraphReplay(traced), video)
    got, folded = convolutions(GraphReplay(traced, convolutions_as_2d=True), video)
    assert [c.dims for c in as_traced] == [3, 3, 3, 3, 3, 3]
    assert [c.dims for c in folded] == [2, 2, 2, 2, 2, 3]  # the (3, 3, 3) kernel stays 3-D
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Another shape than the trace's, and a compiled replay: one graph.
    other = torch.randn(1, 3, 7, 6, 8, generator=torch.Generator().manual_seed(11))
    compiled = torch.compile(GraphReplay(traced, convolutions_as_2d=True), fullgraph=True,
                             dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(other), traced(other), rtol=1e-5, atol=1e-5)
