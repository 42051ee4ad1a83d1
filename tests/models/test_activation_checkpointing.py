"""apply_activation_checkpointing: same numbers as no checkpointing, names kept, self-attention
kept; a per-block plan ("auto") gives the same bits as one mode for every block."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ctrlpost.engine import memory
from ctrlpost.engine.memory import CheckpointPlan
from ctrlpost.engine.parallel import apply_activation_checkpointing
from ctrlpost.models import ControlledDiT, build_controlled_dit, get_flavor
from ctrlpost.models.blocks import DiTBlock

FLAVOR = get_flavor("tiny")


@pytest.fixture(scope="module")
def reference_model() -> ControlledDiT:
    torch.manual_seed(0)
    model = build_controlled_dit(FLAVOR)
    model.init_weights()
    with torch.no_grad():  # non-zero gates and residuals, so every block matters
        for name, param in model.named_parameters():
            if (
                "adaLN_modulation.2" in name
                or "zero_blocks" in name
                or "input_hint_block.14" in name
            ):
                param.normal_(std=0.05)
    model.base.requires_grad_(False)
    return model


def step(model: ControlledDiT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, 2, 8, 8, generator=generator)
    text = torch.randn(1, 16, FLAVOR.base.text_dim, generator=generator)
    hint = torch.randn(1, 16, 2, 8, 8, generator=generator)
    loss = model(x, torch.tensor([0.4]), text, hint_B_C_T_H_W=hint).square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_modes_give_the_same_loss_and_gradients(reference_model: ControlledDiT, mode: str) -> None:
    plain = copy.deepcopy(reference_model)
    checkpointed = copy.deepcopy(reference_model)
    assert apply_activation_checkpointing(checkpointed, mode) == 4 + 3  # type: ignore[arg-type]
    expected_loss, expected_grads = step(plain)
    loss, grads = step(checkpointed)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_none_is_a_no_op_and_names_never_change(reference_model: ControlledDiT) -> None:
    model = copy.deepcopy(reference_model)
    keys = list(model.state_dict())
    assert apply_activation_checkpointing(model, "none") == 0
    apply_activation_checkpointing(model, "full")
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="already applied"):
        apply_activation_checkpointing(model, "selective")
    with pytest.raises(ValueError, match="selective"):
        apply_activation_checkpointing(model, "partial")  # type: ignore[arg-type]


class AttentionCounter(TorchDispatchMode):
    """Counts self- and cross-attention kernels run while active (query vs key length)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.cross_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if "scaled_dot_product" in str(func) and "backward" not in str(func):
            if args[0].shape[-2] == args[1].shape[-2]:
                self.calls += 1
            else:
                self.cross_calls += 1
        return func(*args, **(kwargs or {}))


def attention_during_backward(model: ControlledDiT) -> AttentionCounter:
    """What the attentions run while one loss of ``model`` is backpropagated (recomputations)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 2, 4, 4, generator=generator)
    text = torch.randn(1, 4, FLAVOR.base.text_dim, generator=generator)
    loss = model(x, torch.tensor([0.1]), text, hint_B_C_T_H_W=x).square().mean()
    counter = AttentionCounter()
    with counter:
        loss.backward()
    return counter


@pytest.mark.parametrize(("mode", "recomputed"), [("selective", False), ("full", True)])
def test_selective_mode_keeps_self_attention_outputs(
    reference_model: ControlledDiT, mode: str, recomputed: bool
) -> None:
    model = copy.deepcopy(reference_model)
    apply_activation_checkpointing(model, mode)  # type: ignore[arg-type]
    counter = attention_during_backward(model)
    assert (counter.calls > 0) == recomputed
    # Cross-attention (4 text slots here, 8 tokens) is cheap and its output large: recomputed.
    assert counter.cross_calls > 0


def mixed_plan() -> CheckpointPlan:
    """What "auto" plans for the tiny flavor on a GPU that holds some selective blocks only."""
    dims = memory.model_dims(FLAVOR)
    job = memory.Job(num_frames=121, height=704, width=1280, ac_mode="auto", tokenizer=False)
    every = memory.estimate(dims, replace(job, selective_blocks=7)).total_gib
    none = memory.estimate(dims, replace(job, selective_blocks=0)).total_gib
    planned = memory.planned(dims, job, gpu_memory_gib=(every + none) / 2, margin=0.0)
    return memory.block_plan(dims, planned)


def test_a_mixed_plan_gives_the_same_bits_as_full_and_selective(
    reference_model: ControlledDiT,
) -> None:
    plan = mixed_plan()
    assert 0 < plan.count("selective") < 7 and plan.count("full") > 0
    results = {}
    for name, how in {"full": "full", "selective": "selective", "mixed": plan}.items():
        model = copy.deepcopy(reference_model)
        assert apply_activation_checkpointing(model, how) == 4 + 3  # type: ignore[arg-type]
        results[name] = step(model)
    modes = [vars(b)["_ctrlpost_ac_mode"] for b in model.modules() if isinstance(b, DiTBlock)]
    assert modes == [*plan.base, *plan.control]
    loss, grads = results["mixed"]
    for other in ("full", "selective"):
        expected_loss, expected_grads = results[other]
        assert torch.equal(loss, expected_loss)
        assert grads.keys() == expected_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            assert torch.equal(grad, expected_grads[name]), (other, name)


def test_a_plan_must_name_every_block(reference_model: ControlledDiT) -> None:
    model = copy.deepcopy(reference_model)
    short = CheckpointPlan(("full",) * 3, ("selective",) * 3)
    with pytest.raises(ValueError, match="3 modes for the 4 blocks of base"):
        apply_activation_checkpointing(model, short)
    assert not any(hasattr(b, "_ctrlpost_ac_mode") for b in model.modules())


def test_each_block_recomputes_self_attention_as_its_mode_says(
    reference_model: ControlledDiT,
) -> None:
    model = copy.deepcopy(reference_model)
    plan = mixed_plan()
    apply_activation_checkpointing(model, plan)
    counter = attention_during_backward(model)
    # Base block 0 runs plainly (no gradient through it): only the other full blocks recompute.
    recomputing = plan.count("full") - (plan.base[0] == "full")
    assert counter.calls == recomputing > 0


def test_compiled_blocks_take_every_plan_with_the_same_bits(
    reference_model: ControlledDiT,
) -> None:
    """torch.compile traces each block's checkpoint region (``parallel.compile``): a mixed plan
    adds one graph per extra mode, not one per block, and the numbers stay the same. Dynamo's
    own ``aot_eager`` backend: the tracing is what is under test, not inductor's kernels."""
    from torch._dynamo.utils import counters

    results = {}
    for name, how in {"full": "full", "selective": "selective", "mixed": mixed_plan()}.items():
        torch._dynamo.reset()
        counters.clear()
        model = copy.deepcopy(reference_model)
        apply_activation_checkpointing(model, how)  # type: ignore[arg-type]
        for block in model.modules():
            if isinstance(block, DiTBlock):
                block.compile(backend="aot_eager")
        results[name] = step(model)
        # Base block 0 (no gradient), base blocks, control blocks; one more for a second mode.
        assert counters["stats"]["unique_graphs"] == (4 if name == "mixed" else 3)
    torch._dynamo.reset()
    loss, grads = results["mixed"]
    for other in ("full", "selective"):
        assert torch.equal(loss, results[other][0])
        for name, grad in grads.items():
            assert torch.equal(grad, results[other][1][name]), (other, name)
