"""`build_model` checkpoints each block as the recipe's policy plans it for the rank's GPU; the
plan changes which activations are kept, never the numbers."""

from __future__ import annotations

import pytest
import torch

from ctrlpost import recipe as recipes
from ctrlpost.engine import build, memory
from ctrlpost.engine.job import ModelParts
from ctrlpost.models.blocks import DiTBlock

from .conftest import TINY

AUTO = 'parallel.activation_checkpointing="auto"'



def built(*sets: str) -> tuple[ModelParts, memory.CheckpointPlan]:
    """The tiny recipe's model on the CPU (random weights) and the plan the planner gives it
    for the planner's default GPU (what a rank off CUDA plans for)."""
    rec = recipes.load(TINY, list(sets))
    runtime = build.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    parts = build.build_model(rec, runtime, random_weights=True)
    dims = memory.model_dims(parts.flavor)
    job = memory.training_job(rec.data, rec.train, rec.model, rec.parallel, world_size=1)
    expected = memory.block_plan(dims, memory.planned(
        dims, job, gpu_memory_gib=memory.DEFAULT_GPU_MEMORY_GIB))
    return parts, expected


def block_modes(parts: ModelParts) -> list[str]:
    return [vars(block)["_ctrlpost_ac_mode"] for block in parts.model.modules()
            if isinstance(block, DiTBlock)]


@torch.no_grad()
def wake(parts: ModelParts) -> None:
    """Non-zero gates, residual projections and last hint layer (zero at init), the same in
    every build, so that every block and its attention outputs reach the loss."""
    generator = torch.Generator().manual_seed(9)
    for name, param in parts.model.named_parameters():
        if any(key in name for key in ("adaLN_modulation.2", "zero_blocks", "input_hint_block.14")):
            local = param.to_local()  # one rank: the whole tensor
            local.copy_(0.05 * torch.randn(local.shape, generator=generator, dtype=local.dtype))


def step(parts: ModelParts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    wake(parts)
    generator = torch.Generator().manual_seed(5)
    base = parts.flavor.base
    x = torch.randn(1, base.latent_channels, 2, 8, 8, generator=generator)
    text = torch.randn(1, 8, base.text_dim, generator=generator)
    hint = torch.randn(1, parts.flavor.control.hint_channels, 2, 8, 8, generator=generator)
    loss = parts.model(x, torch.tensor([0.3]), text, hint_B_C_T_H_W=hint).square().mean()
    loss.backward()
    grads = {name: p.grad.full_tensor() for name, p in parts.model.control.named_parameters()
             if p.grad is not None}
    return loss.detach(), grads


def test_auto_is_planned_for_the_gpu_and_changes_no_number(
    one_process_group: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    roomy, roomy_plan = built(AUTO)
    assert roomy_plan.count("selective") == 7  # the tiny job fits 80 GiB selective everywhere
    assert block_modes(roomy) == [*roomy_plan.base, *roomy_plan.control]
    # A GPU too small for anything: "auto" falls back to full checkpointing on every block.
    monkeypatch.setattr(memory, "DEFAULT_GPU_MEMORY_GIB", 0.5)
    cramped, cramped_plan = built(AUTO)
    assert cramped_plan.count("full") == 7
    assert block_modes(cramped) == ["full"] * 7
    full, _ = built('parallel.activation_checkpointing="full"')
    assert block_modes(full) == ["full"] * 7
    expected_loss, expected_grads = step(full)
    for parts in (roomy, cramped):
        loss, grads = step(parts)
        assert torch.equal(loss, expected_loss)
        assert grads.keys() == expected_grads.keys()
        assert all(bool(g.any()) for g in grads.values())  # every gradient is a real one
        for name, grad in grads.items():
            assert torch.equal(grad, expected_grads[name]), name


def test_todays_values_are_applied_to_every_block(one_process_group: None) -> None:
    for mode, wrapped in (("selective", ["selective"] * 7), ("full", ["full"] * 7)):
        parts, plan = built(f'parallel.activation_checkpointing="{mode}"')
        assert block_modes(parts) == wrapped and plan.count(mode) == 7
    parts, plan = built('parallel.activation_checkpointing="none"')
    assert plan.count("none") == 7
    assert not any(hasattr(b, "_ctrlpost_ac_mode") for b in parts.model.modules())
