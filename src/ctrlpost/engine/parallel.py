"""Memory and parallelism transforms applied to a model from outside it.

Order on a meta-device model: activation checkpointing, then compile, then FSDP (each block is
its own FSDP unit, then the stack's remaining parameters), then ``to_empty`` and the loads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from ctrlpost.engine.memory import CheckpointPlan
from ctrlpost.models.blocks import DiTBlock
from ctrlpost.models.fp8_attention import fp8_attention_op

ACMode = Literal["none", "selective", "full"]
AC_MODES: tuple[str, ...] = get_args(ACMode)
_MARK = "_ctrlpost_ac_mode"

# Self-attention is the costliest op at video lengths (56k tokens: about twice the FLOPs of all
# the block's matmuls), and its outputs are only 1/L of its work, so "selective" keeps them.
# Cross-attention over the 512 text slots costs under 1% of a block but its output is as large
# (L x D: 0.46 GB per block at 56k tokens, 13 GB over the 7B base), so it is recomputed.
_ATTENTION_OP_NAMES = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)
_ATTENTION_OPS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in _ATTENTION_OP_NAMES
    if hasattr(torch.ops.aten, name)
) | {fp8_attention_op._opoverload}  # the FP8 base's kernel: its e4m3 output and statistics


def _is_self_attention(args: tuple[Any, ...]) -> bool:
    """Query and key of an attention op (``[B, H, L, Dh]``) have the same length."""
    return len(args) >= 2 and bool(args[0].shape[-2] == args[1].shape[-2])


def _keep_attention_outputs(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if op in _ATTENTION_OPS and _is_self_attention(args):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _needs_grad(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether anything a block call reads requires a gradient (else autograd saves nothing)."""
    if not torch.is_grad_enabled():
        return False
    tensors = [*args, *kwargs.values()]
    if any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return True
    return any(p.requires_grad for p in module.parameters())


def _recompute_all_but_input(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _recompute_all_but_attention(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # The context is made inside the call: torch.compile traces a partial built here, and
    # rejects one read from outside the compiled region (as it does an explicit default).
    context_fn = functools.partial(create_selective_checkpoint_contexts, _keep_attention_outputs)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)


# How a block in each mode runs with gradients (None: as it is, everything kept).
_RUNNERS: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "selective": _recompute_all_but_attention,
    "full": _recompute_all_but_input,
}


def _checkpointed(
    module: nn.Module, forward: Callable[..., Any], runner: Callable[..., Any]
) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        # A block no gradient flows through (the frozen base's block 0 in control training:
        # its residual is added after it) has nothing to recompute: run it plainly, which also
        # keeps checkpoint regions out of torch.compile's inference graphs.
        if not _needs_grad(module, args, kwargs):
            return forward(*args, **kwargs)
        return runner(forward, *args, **kwargs)

    return run


def _block_modes(model: nn.Module, plan: ACMode | CheckpointPlan) -> list[tuple[DiTBlock, str]]:
    """Each DiT block of ``model`` with its mode: ``plan``'s mode for every block, or a
    :class:`CheckpointPlan`'s per block of each stack (``model.base``, ``model.control``)."""
    if isinstance(plan, CheckpointPlan):
        pairs: list[tuple[DiTBlock, str]] = []
        for stack, modes in plan.stacks.items():
            blocks = [m for m in model.get_submodule(stack).modules() if isinstance(m, DiTBlock)]
            if len(blocks) != len(modes):
                raise ValueError(f"the plan has {len(modes)} modes for the {len(blocks)} "
                                 f"blocks of {stack}")
            pairs.extend(zip(blocks, modes, strict=True))
        return pairs
    if plan not in _RUNNERS:
        raise ValueError(
            f"unknown activation checkpointing mode {plan!r}; valid: {', '.join(AC_MODES)}"
        )
    return [(m, plan) for m in model.modules() if isinstance(m, DiTBlock)]


def apply_activation_checkpointing(model: nn.Module, plan: ACMode | CheckpointPlan) -> int:
    """Recompute activations of the DiT blocks of ``model`` in backward; return how many.

    ``plan`` is one mode for every block, or a :class:`~ctrlpost.engine.memory.CheckpointPlan`
    with a mode per block (``engine.memory.POLICIES`` makes one from the recipe's value).
    ``"full"`` keeps only each block's input. ``"selective"`` also keeps the self-attention
    outputs and recomputes the rest (norms, modulation, projections, RoPE, cross-attention, MLP
    and GELU). ``"none"`` leaves the block as it is. Every mode computes the same numbers: only
    what is kept for backward changes. The block's ``forward`` is wrapped in place, so parameter
    names and ``state_dict`` keys do not change. Apply before FSDP/compile; applying twice is an
    error.
    """
    pairs = _block_modes(model, plan)
    if any(getattr(block, _MARK, None) is not None for block, _ in pairs):
        raise ValueError("activation checkpointing is already applied to this model")
    wrapped = 0
    for block, mode in pairs:
        runner = _RUNNERS[mode]
        if runner is None:
            continue
        block.forward = _checkpointed(block, block.forward, runner)  # type: ignore[method-assign]
        setattr(block, _MARK, mode)
        wrapped += 1
    return wrapped


def apply_compile(model: nn.Module, options: dict[str, Any] | None = None) -> int:
    """``torch.compile`` every DiT block in place (one compiled graph reused by all blocks),
    with inductor ``options`` if given."""
    compiled = 0
    for module in model.modules():
        if isinstance(module, DiTBlock):
            module.compile(options=options)
            compiled += 1
    return compiled


def apply_fsdp(
    model: nn.Module,
    *,
    device: torch.device,
    param_dtype: torch.dtype | None,
    reduce_dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
) -> None:
    """Shard ``model`` with FSDP2 over the default process group on ``device``'s type: each DiT
    block is one unit, then the root holds the remaining parameters (embedders, final layer,
    hint path).

    ``param_dtype`` is the compute dtype of the all-gathered weights (bf16 for fp32 master
    weights); gradients are reduced in ``reduce_dtype``. Frozen modules (the base) are sharded the
    same way; they just never produce gradients.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Named, not left to FSDP's default, which takes the machine's accelerator: a gloo (CPU) job
    # on a host with a GPU would get a CUDA mesh and mixed-device shards.
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = [m for m in model.modules() if isinstance(m, DiTBlock)]
    for index, block in enumerate(blocks):
        # The last block's weights are needed again right away by backward: keep them gathered.
        last = index == len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward and not last)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
