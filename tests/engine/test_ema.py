from __future__ import annotations

import pytest
import torch
from torch import nn

from ctrlpost.engine.ema import PowerEMA, power_beta, power_exponent


def test_exponent_is_the_largest_real_root() -> None:
    gamma = power_exponent(0.1)
    assert gamma == pytest.approx(6.9372, abs=1e-4)
    s = 0.1
    cubic = gamma**3 + 7 * gamma**2 + (16 - s**-2) * gamma + (12 - s**-2)
    assert cubic == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(("step", "beta"), [(0, 0.0), (10, 0.469), (100, 0.924), (1000, 0.9921),
                                            (10000, 0.99921)])
def test_beta_matches_the_reference_table(step: int, beta: float) -> None:
    assert power_beta(step, power_exponent(0.1)) == pytest.approx(beta, abs=5e-4)


def test_update_tracks_only_trainable_params_in_fp32() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].requires_grad_(False)
    model.to(torch.bfloat16)
    ema = PowerEMA(model.named_parameters(), s=0.1)
    assert set(ema.averages) == {"0.weight", "0.bias"}
    assert all(a.dtype == torch.float32 for a in ema.averages.values())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    assert ema.update(0) == 0.0  # first step: the average becomes the weights
    assert torch.equal(ema.averages["0.weight"], torch.ones(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    beta = ema.update(10)
    assert torch.allclose(ema.averages["0.weight"], torch.full((2, 2), beta * 1 + (1 - beta) * 3))


def test_load_state_dict_requires_every_name() -> None:
    ema = PowerEMA(nn.Linear(2, 2).named_parameters(), s=0.1)
    with pytest.raises(KeyError):
        ema.load_state_dict({"weight": torch.zeros(2, 2)})
