from __future__ import annotations

import pytest
import torch
from torch import nn

from ctrlpost.engine.optim import build_optimizer, lr_factor, set_lr


def test_linear_warmup_then_constant() -> None:
    kw = {"warmup_steps": 2500, "start_factor": 1e-6}
    assert lr_factor(0, **kw) == 1e-6
    assert lr_factor(1250, **kw) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert lr_factor(2500, **kw) == 1.0 and lr_factor(10**6, **kw) == 1.0
    assert lr_factor(0, warmup_steps=0, start_factor=1e-6) == 1.0


def test_optimizer_takes_only_trainable_params() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt = build_optimizer(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1,
                          eps=1e-10, fused=True, device=torch.device("cpu"))
    (group,) = opt.param_groups
    assert len(group["params"]) == 2 and group["weight_decay"] == 0.1
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-10
    set_lr(opt, 5e-5)
    assert group["lr"] == 5e-5
