"""The uncertainty ("logvar") head u(σ) of the Kendall-weighted EDM loss.

``L = λ·mse·e^(−u) + u`` lets the model learn how hard each noise level is. The head is a
random Fourier embedding of ``c_noise`` followed by a bias-free linear layer. Its state-dict keys
(``0.freqs``, ``0.phases``, ``1.weight``) match the released checkpoints under the ``logvar.``
prefix. In ControlNet post-training it comes with the frozen base and is never trained.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierFeatures(nn.Module):
    """Random Fourier features ``cos(x·freqs + phases)`` of a scalar per sample.

    ``freqs ~ 2π·N(0, 1)`` and ``phases ~ 2π·U(0, 1)`` are drawn once and kept as persistent
    buffers so a checkpoint fixes them. With ``normalize`` the output is scaled by √2, which
    gives each feature unit mean square over random phases.
    """

    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(
        self, num_channels: int, *, normalize: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer(
            "freqs", 2 * math.pi * torch.randn(num_channels, generator=generator), persistent=True
        )
        self.register_buffer(
            "phases", 2 * math.pi * torch.rand(num_channels, generator=generator), persistent=True
        )

    def forward(self, x_B: torch.Tensor) -> torch.Tensor:
        """Features [B, num_channels] (float32) of the scalars ``x_B`` [B]."""
        # float32 even if the module was cast to bf16: bf16 frequencies of size ~10 would
        # leave the cosine argument with an error of order one radian.
        freqs = self.freqs.float()
        phases = self.phases.float()
        angle_B_N = torch.outer(x_B.float(), freqs) + phases
        features_B_N = angle_B_N.cos()
        return features_B_N * math.sqrt(2.0) if self.normalize else features_B_N


class UncertaintyHead(nn.Sequential):
    """u(σ) = Linear(128→1, no bias)(FourierFeatures(128)(c_noise)).

    A ``Sequential`` so the state-dict keys are ``0.freqs``, ``0.phases`` and ``1.weight`` [1, 128],
    the layout of ``logvar.*`` in the released checkpoints. Built frozen (``trainable=False``)
    because post-training inherits it from the base model.
    """

    def __init__(
        self,
        num_channels: int = 128,
        *,
        trainable: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        """``generator`` seeds the random frequencies, phases and weight (else the global RNG)."""
        super().__init__(
            FourierFeatures(num_channels, normalize=True, generator=generator),
            nn.Linear(num_channels, 1, bias=False),
        )
        if generator is not None:
            # Same bound as nn.Linear's default init, but from the given generator so the whole
            # head is reproducible.
            bound = 1.0 / math.sqrt(num_channels)
            with torch.no_grad():
                self.linear.weight.uniform_(-bound, bound, generator=generator)
        self.requires_grad_(trainable)

    @property
    def features(self) -> FourierFeatures:
        """The Fourier embedding (``0.*`` keys)."""
        module = self[0]
        assert isinstance(module, FourierFeatures)
        return module

    @property
    def linear(self) -> nn.Linear:
        """The bias-free projection to one log-variance (``1.weight``)."""
        module = self[1]
        assert isinstance(module, nn.Linear)
        return module

    def forward(self, c_noise_B: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The log-variance u [B] (float32) for the noise conditioning ``c_noise_B`` [B]."""
        features_B_N = self.features(c_noise_B)
        # Run the tiny projection in float32 whatever the module dtype: u enters the loss as e^(−u).
        logvar_B_1 = features_B_N @ self.linear.weight.float().t()
        return logvar_B_1.squeeze(1)
