"""Deterministic EDM sampling (Karras et al. 2022, Algorithm 1 with S_churn = 0) over any denoiser.

The probability-flow ODE ``dx/dσ = (x − D(x; σ))/σ`` is integrated from ``σ_max`` to 0 along the
Karras schedule with Euler or Heun (2nd order; the last step to σ = 0 is always Euler). ``D`` is
the preconditioned x0 predictor of :mod:`ctrlpost.diffusion.edm` around the raw network, with
the conditioning-frame handling of the training objective (:mod:`.conditioning`) and
classifier-free guidance on the text, as the reference's inference does:

* the first ``n`` latent frames are given: the network sees them lightly noised
  (``σ_aug = augment_sigma``, 0.001 in the reference) and its prediction there is replaced by the
  clean given frames;
* guidance ``g``: ``x0 = x0_cond + g·(x0_cond − x0_uncond)`` (the reference's convention: 0 is
  no guidance), where the unconditional pass is the same network with the text zeroed
  (``uncond_network``). With ``guide_condition_frames`` the unconditional pass also loses the
  given frames: their input and mask are zeroed ("zero_condition_region_condition_mask").

All randomness (initial noise, then the conditioning frames' noise) comes from one
``torch.Generator``, so a sample is a pure function of the inputs and the generator's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ctrlpost.diffusion.conditioning import condition_mask, condition_network_input
from ctrlpost.diffusion.config import EDMConfig
from ctrlpost.diffusion.edm import denoised, expand_B, precondition
from ctrlpost.diffusion.loss import Denoiser

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x_t_B_C_T_H_W, sigma_B) -> x0_B_C_T_H_W``: a denoiser in diffusion space (float32)."""


@dataclass(frozen=True)
class OdeSolver:
    """One way of stepping the probability-flow ODE from σ to σ_next.

    ``step(x0_fn, x, sigma, sigma_next, slope)`` returns x at σ_next, given the Euler slope
    ``(x − D(x; σ))/σ`` already evaluated at σ; ``calls_per_step`` counts that evaluation and
    the step's own, for a step to σ_next > 0 (the last, to σ = 0, is one evaluation and Euler in
    every solver: the slope there would divide by zero)."""

    step: Callable[[X0Fn, torch.Tensor, float, float, torch.Tensor], torch.Tensor]
    calls_per_step: int


def _euler(x0_fn: X0Fn, x: torch.Tensor, sigma: float, sigma_next: float,
           slope: torch.Tensor) -> torch.Tensor:
    return x + (sigma_next - sigma) * slope


def _heun(x0_fn: X0Fn, x: torch.Tensor, sigma: float, sigma_next: float,
          slope: torch.Tensor) -> torch.Tensor:
    x_next = x + (sigma_next - sigma) * slope
    if sigma_next == 0:
        return x_next
    slope_next = (x_next - x0_fn(x_next, _full(x.shape[0], sigma_next, x))) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (slope + slope_next)


SOLVERS: dict[str, OdeSolver] = {
    "euler": OdeSolver(_euler, calls_per_step=1),
    "heun": OdeSolver(_heun, calls_per_step=2),  # 2nd order: the slope at σ_next too
}
"""``SamplerConfig.method`` (``[validation].sampler``) → its ODE solver."""


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How to integrate the sampling ODE.

    Attributes:
        method: a :data:`SOLVERS` name: ``"heun"`` (2·steps − 1 network calls per guidance
            branch) or ``"euler"`` (``steps`` calls).
        steps: Noise levels of the Karras schedule before the final step to σ = 0.
        sigma_min: Smallest non-zero σ of the schedule.
        sigma_max: Largest σ: the initial noise is ``σ_max·ε``.
        rho: Karras schedule exponent (7 spends most steps at small σ).
        guidance: Classifier-free guidance scale on the text (0 = conditional only).
        augment_sigma: Noise level put on the given conditioning frames.
        guide_condition_frames: Also drop the conditioning frames in the unconditional pass.
    """

    method: str = "heun"
    steps: int = 35
    sigma_min: float = 0.0002
    sigma_max: float = 80.0
    rho: float = 7.0
    guidance: float = 0.0
    augment_sigma: float = 0.001
    guide_condition_frames: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.method not in SOLVERS:
            problems.append(f"method must be one of {tuple(SOLVERS)}, got {self.method!r}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            problems.append(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, "
                            f"{self.sigma_max}")
        if not self.rho > 0 or self.augment_sigma < 0:
            problems.append("rho must be > 0 and augment_sigma >= 0")
        if problems:
            raise ValueError("invalid SamplerConfig: " + "; ".join(problems))

    @property
    def network_calls(self) -> int:
        """Denoiser evaluations per sample (times 2 with guidance)."""
        calls = (self.steps - 1) * SOLVERS[self.method].calls_per_step + 1  # the last: Euler
        return calls * (2 if self.guidance else 1)


def karras_sigmas(steps: int, *, sigma_min: float, sigma_max: float,
                  rho: float = 7.0) -> torch.Tensor:
    """``[steps + 1]`` float64 noise levels: ``σ_i = (σmax^(1/ρ) + i/(N−1)·(σmin^(1/ρ) −
    σmax^(1/ρ)))^ρ`` for i < N (σ_0 = σ_max, σ_{N−1} = σ_min), then σ_N = 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64) if steps > 1 else torch.zeros(
        1, dtype=torch.float64)
    low, high = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (high + ramp * (low - high)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def integrate(x0_fn: X0Fn, noise_B_C_T_H_W: torch.Tensor, sigmas: torch.Tensor, *,
              method: str = "heun") -> torch.Tensor:
    """Solve the probability-flow ODE from ``x = σ_0·noise`` down the ``sigmas`` (last one 0).

    Returns the final x (float32), which for the last step to σ = 0 is the last ``D`` output.
    """
    batch, solver = noise_B_C_T_H_W.shape[0], SOLVERS[method]
    x = noise_B_C_T_H_W.float() * float(sigmas[0])
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        slope = (x - x0_fn(x, _full(batch, sigma, x))) / sigma
        x = solver.step(x0_fn, x, sigma, sigma_next, slope)
    return x


def _full(batch: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch,), sigma, dtype=torch.float32, device=like.device)


@dataclass(frozen=True)
class GivenFrames:
    """Leading latent frames handed to the sampler instead of generated.

    Attributes:
        x0_B_C_T_H_W: Clean diffusion-space latent whose first ``n`` frames are given (the rest
            is ignored and may be zeros).
        n: Number of given leading latent frames.
        augment_epsilon_B_C_N_H_W: Standard normal noise of the given frames (N ≥ n).
    """

    x0_B_C_T_H_W: torch.Tensor
    n: int
    augment_epsilon_B_C_N_H_W: torch.Tensor


def guided_denoiser(network: Denoiser, *, edm: EDMConfig, sampler: SamplerConfig,
                    uncond_network: Denoiser | None = None, given: GivenFrames | None = None,
                    input_dtype: torch.dtype = torch.float32) -> X0Fn:
    """``D(x_t, σ)`` of a raw network ``F(net_in, c_noise, mask)`` with given frames and
    guidance (see the module docstring). ``uncond_network`` is required when
    ``sampler.guidance`` is non-zero."""
    if sampler.guidance and uncond_network is None:
        raise ValueError("guidance needs uncond_network (the network with the text zeroed)")

    def x0_fn(x_t_B_C_T_H_W: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
        x0 = _x0(network, x_t_B_C_T_H_W, sigma_B, edm=edm, sampler=sampler, given=given,
                 input_dtype=input_dtype)
        if sampler.guidance:
            assert uncond_network is not None
            dropped = None if sampler.guide_condition_frames else given
            x0_uncond = _x0(uncond_network, x_t_B_C_T_H_W, sigma_B, edm=edm, sampler=sampler,
                            given=dropped, input_dtype=input_dtype)
            x0 = x0 + sampler.guidance * (x0 - x0_uncond)
        return _replace_given(x0, given)

    return x0_fn


def _x0(network: Denoiser, x_t: torch.Tensor, sigma_B: torch.Tensor, *, edm: EDMConfig,
        sampler: SamplerConfig, given: GivenFrames | None,
        input_dtype: torch.dtype) -> torch.Tensor:
    """One preconditioned network call; without ``given`` the first frames are plain x_t."""
    batch, _, frames, height, width = x_t.shape
    coeffs = precondition(sigma_B, sigma_data=edm.sigma_data)
    n = 0 if given is None else given.n
    mask = condition_mask(n, batch=batch, frames=frames, height=height, width=width,
                          device=x_t.device)
    if given is None or n == 0:
        net_in = expand_B(coeffs.c_in_B, x_t) * x_t.float()
    else:
        net_in = condition_network_input(
            x0_B_C_T_H_W=given.x0_B_C_T_H_W, x_t_B_C_T_H_W=x_t, c_in_B=coeffs.c_in_B, n_frames=n,
            augment_sigma_B=torch.full((batch,), sampler.augment_sigma, device=x_t.device),
            augment_epsilon_B_C_N_H_W=given.augment_epsilon_B_C_N_H_W, sigma_data=edm.sigma_data)
    out = network(net_in.to(input_dtype), coeffs.c_noise_B, mask.to(input_dtype))
    return denoised(x_t, out, coeffs)


def _replace_given(x0: torch.Tensor, given: GivenFrames | None) -> torch.Tensor:
    if given is None or given.n == 0:
        return x0
    return torch.cat([given.x0_B_C_T_H_W[:, :, : given.n].float(), x0[:, :, given.n :]], dim=2)


def sample(network: Denoiser, *, shape_B_C_T_H_W: tuple[int, int, int, int, int],
           edm: EDMConfig, sampler: SamplerConfig, generator: torch.Generator,
           uncond_network: Denoiser | None = None, given_x0_B_C_T_H_W: torch.Tensor | None = None,
           n_given_frames: int = 0, input_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw one x0 sample [B, C, T, H, W] (float32, diffusion space, i.e. latent × σ_data).

    Randomness, in order from ``generator`` (on ``generator.device``): the initial noise
    ε [B, C, T, H, W], then the given frames' noise [B, C, n, H, W] (only when n > 0).
    """
    device = generator.device
    noise = torch.randn(shape_B_C_T_H_W, generator=generator, device=device)
    given = None
    if n_given_frames:
        if given_x0_B_C_T_H_W is None:
            raise ValueError("n_given_frames > 0 needs given_x0_B_C_T_H_W")
        batch, channels, _, height, width = shape_B_C_T_H_W
        epsilon = torch.randn((batch, channels, n_given_frames, height, width),
                              generator=generator, device=device)
        given = GivenFrames(given_x0_B_C_T_H_W.to(device), n_given_frames, epsilon)
    x0_fn = guided_denoiser(network, edm=edm, sampler=sampler, uncond_network=uncond_network,
                            given=given, input_dtype=input_dtype)
    sigmas = karras_sigmas(sampler.steps, sigma_min=sampler.sigma_min,
                           sigma_max=sampler.sigma_max, rho=sampler.rho)
    return integrate(x0_fn, noise, sigmas, method=sampler.method)
