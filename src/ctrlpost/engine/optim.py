"""AdamW over the trainable parameters and the learning-rate schedule.

The schedule is a pure function of the step (linear warm-up from ``warmup_start_factor`` to 1,
then constant), so resuming needs no scheduler state beyond the step itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def lr_factor(step: int, *, warmup_steps: int, start_factor: float) -> float:
    """Multiplier of the peak learning rate at 0-based step ``step``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def build_optimizer(
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
    fused: bool,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay on every tensor, as the reference does), fused on CUDA."""
    trainable = [p for p in params if p.requires_grad]
    use_fused = fused and device.type == "cuda"
    return torch.optim.AdamW(
        trainable,
        lr=lr,
        betas=betas,
        weight_decay=weight_decay,
        eps=eps,
        fused=use_fused or None,
        foreach=None if use_fused else True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply ``lr`` to every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
