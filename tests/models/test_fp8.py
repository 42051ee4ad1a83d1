"""The FP8 frozen base (``model.base_precision = "fp8"``): row-wise quantization, the frozen
linear's forward and input gradient against bf16, and the conversion of a DiT in place (same
parameters, so strict loading and sharding are unchanged)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctrlpost.models import DiT, get_flavor
from ctrlpost.models.base_precision import to_fp8, to_fp8_attention, token_linears
from ctrlpost.models.fp8 import FP8_MAX, Fp8FrozenLinear, quantize_rows


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())



def frozen_tiny_base(num_heads: int | None = None) -> DiT:
    """A tiny-flavor base with seeded random weights, frozen in bf16 as the engine keeps it
    (``num_heads=1``: one head of 128 channels, the size cuDNN's FP8 attention takes)."""
    torch.manual_seed(0)
    arch = get_flavor("tiny").base
    base = DiT(dataclasses.replace(arch, num_heads=num_heads or arch.num_heads))
    base.init_weights()
    return base.to(torch.bfloat16).requires_grad_(False)

def test_rows_are_scaled_to_the_fp8_range_and_zero_rows_survive() -> None:
    x = torch.randn(6, 64) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 0.0, 5.0])[:, None]
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (6, 1)
    assert torch.equal(q.float().abs().amax(1)[[0, 1, 2, 3, 5]], torch.full((5,), FP8_MAX))
    assert scale[4].item() == 1.0 and torch.equal(q[4].float(), torch.zeros(64))
    back = q.float() * scale
    for row in (0, 1, 2, 3, 5):  # e4m3 keeps 3 mantissa bits: ~3 % of the row's size
        assert rel(back[row], x[row]) < 0.05


def test_frozen_linear_matches_bf16_forward_and_input_grad() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 192, bias=False).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(2, 40, 128, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(2, 40, 192, dtype=torch.bfloat16)
    reference = layer(x)
    reference.backward(grad)
    assert x.grad is not None
    reference_grad, x.grad = x.grad.clone(), None
    layer.__class__ = Fp8FrozenLinear
    out = layer(x)
    out.backward(grad)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert x.grad is not None  # type: ignore[unreachable]
    assert 0 < rel(out, reference) < 0.06 and 0 < rel(x.grad, reference_grad) < 0.06
    assert layer.weight.grad is None


def test_a_trainable_or_biased_layer_is_refused() -> None:
    layer = torch.nn.Linear(16, 16, bias=False).to(torch.bfloat16)
    layer.__class__ = Fp8FrozenLinear
    with pytest.raises(RuntimeError, match="frozen layers without bias"):
        layer(torch.randn(2, 16, dtype=torch.bfloat16))


def test_to_fp8_converts_the_token_linears_and_keeps_the_state() -> None:
    flavor = get_flavor("tiny")
    base = frozen_tiny_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    converted = to_fp8(base)
    blocks = flavor.base.num_blocks
    assert converted == blocks * (4 + 4 + 2)  # self- and cross-attention q/k/v/out, MLP
    assert all(isinstance(layer, Fp8FrozenLinear) for layer in token_linears(base))
    others = [m for m in base.modules()
              if type(m) is torch.nn.Linear]  # modulation, embedders, final layer stay
    assert others and not any(isinstance(m, Fp8FrozenLinear) for m in others)
    after = base.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    fresh = DiT(flavor.base).to(torch.bfloat16)
    to_fp8(fresh)
    fresh.load_state_dict(before, strict=True)


def test_the_recipe_asks_bf16_compute_for_an_fp8_base() -> None:
    from pathlib import Path

    from ctrlpost import recipe as recipes

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "edge_tiny.toml"
    loaded = recipes.load(tiny, ['model.base_precision="fp8"', 'model.precision="bf16"'])
    assert loaded.model.base_precision == "fp8"
    with pytest.raises(recipes.RecipeInvalid, match='needs precision = "bf16"'):
        recipes.load(tiny, ['model.base_precision="fp8"'])  # the tiny recipe computes in fp32
    with pytest.raises(recipes.RecipeInvalid, match="base_precision"):
        recipes.load(tiny, ['model.base_precision="fp4"'])


def test_a_whole_fp8_base_stays_close_to_bf16() -> None:
    flavor = get_flavor("tiny")
    base = frozen_tiny_base()
    a = flavor.base
    x = torch.randn(1, a.latent_channels, 3, 16, 28, dtype=torch.bfloat16)
    inputs = dict(condition_mask_B_1_T_H_W=torch.zeros(1, 1, 3, 16, 28, dtype=torch.bfloat16),
                  padding_mask_B_1_H_W=torch.zeros(1, 1, 128, 224, dtype=torch.bfloat16),
                  fps_B=torch.tensor([24.0]))
    text = torch.randn(1, a.text_tokens, a.text_dim, dtype=torch.bfloat16)
    c_noise = torch.tensor([0.25])
    reference = base(x, c_noise, text, **inputs)
    to_fp8(base)
    out = base(x, c_noise, text, **inputs)
    assert 0 < rel(out, reference) < 0.1


def saved_activation_bytes(base: DiT, mode: str, device: str) -> int:
    """Bytes autograd keeps for the backward of a compiled, checkpointed ``base`` (parameters
    and buffers not counted), on the second call (the first compiles)."""
    from ctrlpost.engine import parallel

    base.to(device)
    parallel.apply_activation_checkpointing(base, mode)  # type: ignore[arg-type]
    parallel.apply_compile(base)
    owned = {t.untyped_storage().data_ptr() for t in [*base.parameters(), *base.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in owned:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    a = get_flavor("tiny").base
    bf16 = torch.bfloat16
    x = torch.randn(1, a.latent_channels, 2, 32, 32, dtype=bf16, device=device,
                    requires_grad=True)
    text = torch.randn(1, a.text_tokens, a.text_dim, dtype=bf16, device=device)
    mask = torch.zeros(1, 1, 2, 32, 32, dtype=bf16, device=device)
    for _ in range(2):
        kept.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = base(x, torch.tensor([0.25], device=device), text,
                       condition_mask_B_1_T_H_W=mask)
        out.float().square().mean().backward()
    return sum(kept.values())


@pytest.mark.parametrize(("convert", "mode", "device"), [
    ("fp8", "selective", "cpu"),
    ("fp8-attention", "selective", "cpu"),
    pytest.param("fp8", "full", "cpu", marks=pytest.mark.slow),
    pytest.param("fp8-attention", "full", "cpu", marks=pytest.mark.slow),
    *(pytest.param(c, m, "cuda", marks=pytest.mark.gpu)
      for c in ("fp8", "fp8-attention") for m in ("selective", "full")),
])
def test_compiled_checkpointed_fp8_blocks_keep_no_more_than_bf16_ones(
        convert: str, mode: str, device: str) -> None:
    """The FP8 products and the FP8 attention are one op each with their quantization outside,
    so torch.compile's checkpointing recomputes the products and the quantized copies as it
    does bf16 products, and keeps only the attention's e4m3 output and statistics where bf16
    keeps its output and log-sum-exp. (A traced autograd.Function's products were kept on the
    GPU: ~4.5 GiB per 7B block at 56k tokens, and the engine's step ran out of memory.)"""
    # on a GPU, heads the fused FP8 attention takes, so that its op is the one measured
    num_heads = 1 if device == "cuda" else None
    bf16 = saved_activation_bytes(frozen_tiny_base(num_heads), mode, device)
    base = frozen_tiny_base(num_heads)
    {"fp8": to_fp8, "fp8-attention": to_fp8_attention}[convert](base)
    assert saved_activation_bytes(base, mode, device) <= bf16
