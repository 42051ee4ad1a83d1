"""GraphReplay: a traced TorchScript graph run as aten calls, eager and under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctrlpost.models.jit_replay import GraphReplay, UnsupportedGraph
from ctrlpost.models.tokenizer import torchscript_deprecation_silenced


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
