"""Power EMA (EDM2-style) of the trainable weights, kept in fp32.

With relative standard deviation ``s``, the exponent γ is the largest real root of
``x³ + 7x² + (16 − s⁻²)x + (12 − s⁻²)`` and the decay after optimizer step ``i`` (0-based) is
``β_i = (1 − 1/(i+1))^(γ+1)``: β_0 = 0, so the average starts as the weights after the first
step and forgets its start as training goes on (β ≈ 0.924 at step 100, 0.99921 at 10,000 for
s = 0.1). The averages live beside the parameters with the same sharding (DTensor shards under
FSDP), so saving and resharding them is the same as for the weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


def power_exponent(s: float) -> float:
    """γ for relative standard deviation ``s`` (6.9372 for s = 0.1)."""
    roots = np.roots([1.0, 7.0, 16.0 - s**-2, 12.0 - s**-2])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real.max())


def power_beta(step: int, gamma: float) -> float:
    """Decay applied at 0-based optimizer step ``step``."""
    return (1.0 - 1.0 / (step + 1)) ** (gamma + 1.0)


class PowerEMA:
    """fp32 running averages of ``named_parameters`` (only those requiring grad)."""

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], *, s: float) -> None:
        self.gamma = power_exponent(s)
        self.params = {name: p for name, p in named_parameters if p.requires_grad}
        self.averages = {
            name: p.detach().to(torch.float32, copy=True) for name, p in self.params.items()
        }

    @torch.no_grad()
    def update(self, step: int) -> float:
        """Fold the current weights in after optimizer step ``step``; return the decay used."""
        beta = power_beta(step, self.gamma)
        for name, param in self.params.items():
            self.averages[name].lerp_(param.detach().to(torch.float32), 1.0 - beta)
        return beta

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name (sharded like the parameters)."""
        return self.averages

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy saved averages in place (same names, same sharding)."""
        missing = self.averages.keys() - state.keys()
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, average in self.averages.items():
                average.copy_(state[name])
