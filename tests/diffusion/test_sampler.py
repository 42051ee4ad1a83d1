"""The EDM sampler against closed forms: the exact denoiser of a Gaussian data distribution."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlpost.diffusion import EDMConfig, precondition
from ctrlpost.diffusion.sampler import (
    SamplerConfig,
    guided_denoiser,
    integrate,
    karras_sigmas,
    sample,
)

EDM = EDMConfig()
SHAPE = (4, 2, 3, 64, 64)  # 98,304 values: the moments' sampling error is ~0.5 %


def gaussian_network(mean: float, std: float, *, calls: list[float] | None = None):  # type: ignore[no-untyped-def]
    """The raw network F whose preconditioned x0 prediction is the exact denoiser of data
    x0 ~ N(mean, std²): D(x; σ) = mean + std²/(std² + σ²)·(x − mean)."""

    def network(net_in: torch.Tensor, c_noise_B: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sigma = math.exp(4.0 * float(c_noise_B[0]))
        coeffs = precondition(torch.tensor([sigma]), sigma_data=EDM.sigma_data)
        c_in, skip, out = (float(c) for c in (coeffs.c_in_B, coeffs.c_skip_B, coeffs.c_out_B))
        x_t = net_in / c_in
        x0 = mean + std**2 / (std**2 + sigma**2) * (x_t - mean)
        if calls is not None:
            calls.append(sigma)
        return (x0 - skip * x_t) / out

    return network


def moments(x: torch.Tensor) -> tuple[float, float]:
    return float(x.double().mean()), float(x.double().var())


# Discretisation error of the variance at σ_min = 0.0002, σ_max = 80, ρ = 7: Heun +12 % at 18
# steps, +0.8 % at 64; Euler (first order) −9 % at 64, about −1 % at 600.
@pytest.mark.parametrize(("mean", "std"), [(1.0, 0.7), (-0.5, 0.2)])
def test_heun_samples_match_the_gaussian_data_distribution(mean: float, std: float) -> None:
    x0 = sample(gaussian_network(mean, std), shape_B_C_T_H_W=SHAPE, edm=EDM,
                sampler=SamplerConfig(method="heun", steps=64),
                generator=torch.Generator().manual_seed(0))
    got_mean, got_var = moments(x0)
    assert got_mean == pytest.approx(mean, rel=0.02)
    assert got_var == pytest.approx(std**2, rel=0.02)


@pytest.mark.parametrize(("method", "steps"), [("euler", 600), ("heun", 64)])
def test_solvers_match_the_gaussian_moments_without_sampling_error(method: str,
                                                                   steps: int) -> None:
    # D is affine in x, so the output moments are exact functions of the noise's moments:
    # standardised noise removes the sampling error and a small tensor suffices.
    mean, std = 0.6, 0.3
    noise = torch.randn(1, 1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = (noise - noise.mean()) / noise.std()
    network = gaussian_network(mean, std)
    x0_fn = guided_denoiser(network, edm=EDM, sampler=SamplerConfig())
    sigmas = karras_sigmas(steps, sigma_min=0.0002, sigma_max=80.0)
    got_mean, got_var = moments(integrate(x0_fn, noise, sigmas, method=method))
    assert got_mean == pytest.approx(mean, rel=0.02)
    assert got_var == pytest.approx(std**2, rel=0.02)


def test_classifier_free_guidance_extrapolates_the_conditional_mean() -> None:
    # D_c + g(D_c − D_u) of two Gaussians of equal std is the exact denoiser of
    # N(μc + g(μc − μu), std²): guidance moves the mean and keeps the variance.
    mean_c, mean_u, std, g = 0.4, 0.1, 0.5, 1.5
    cfg = SamplerConfig(method="heun", steps=64, guidance=g)
    x0 = sample(gaussian_network(mean_c, std), uncond_network=gaussian_network(mean_u, std),
                shape_B_C_T_H_W=SHAPE, edm=EDM, sampler=cfg,
                generator=torch.Generator().manual_seed(1))
    got_mean, got_var = moments(x0)
    assert got_mean == pytest.approx(mean_c + g * (mean_c - mean_u), rel=0.02)
    assert got_var == pytest.approx(std**2, rel=0.02)


def test_given_frames_come_out_exactly_and_the_rest_is_sampled() -> None:
    given = torch.full(SHAPE, 7.0)
    x0 = sample(gaussian_network(0.0, 0.5), shape_B_C_T_H_W=SHAPE, edm=EDM,
                sampler=SamplerConfig(steps=64), generator=torch.Generator().manual_seed(2),
                given_x0_B_C_T_H_W=given, n_given_frames=1)
    assert torch.equal(x0[:, :, :1], given[:, :, :1])
    _, var = moments(x0[:, :, 1:])
    assert var == pytest.approx(0.25, rel=0.03)


def test_the_network_sees_the_given_frames_and_the_condition_mask() -> None:
    seen: dict[str, torch.Tensor] = {}

    def network(net_in: torch.Tensor, c_noise_B: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen["net_in"], seen["mask"] = net_in, mask
        return torch.zeros_like(net_in)

    shape = (1, 2, 3, 4, 4)
    given = torch.full(shape, 0.5)
    epsilon = torch.zeros(1, 2, 1, 4, 4)
    from ctrlpost.diffusion.sampler import GivenFrames

    x0_fn = guided_denoiser(network, edm=EDM, sampler=SamplerConfig(augment_sigma=0.0),
                            given=GivenFrames(given, 1, epsilon))
    x0_fn(torch.full(shape, 3.0), torch.full((1,), 2.0))
    c_in_given = 1.0 / math.sqrt(EDM.sigma_data**2)  # σ_aug = 0
    c_in = 1.0 / math.sqrt(2.0**2 + EDM.sigma_data**2)
    assert torch.allclose(seen["net_in"][:, :, 0], torch.full((1, 2, 4, 4), 0.5 * c_in_given))
    assert torch.allclose(seen["net_in"][:, :, 1:], torch.full((1, 2, 2, 4, 4), 3.0 * c_in))
    assert seen["mask"][0, 0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_heun_calls_the_network_twice_per_step_but_the_last() -> None:
    calls: list[float] = []
    cfg = SamplerConfig(method="heun", steps=5)
    sample(gaussian_network(0.0, 0.5, calls=calls), shape_B_C_T_H_W=(1, 1, 1, 2, 2), edm=EDM,
           sampler=cfg, generator=torch.Generator().manual_seed(0))
    assert len(calls) == cfg.network_calls == 9
    assert calls[0] == pytest.approx(80.0) and min(calls) == pytest.approx(0.0002, rel=1e-4)


def test_karras_schedule_endpoints_and_order() -> None:
    sigmas = karras_sigmas(10, sigma_min=0.002, sigma_max=80.0)
    assert sigmas.shape == (11,)
    assert float(sigmas[0]) == pytest.approx(80.0) and float(sigmas[9]) == pytest.approx(0.002)
    assert float(sigmas[10]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert karras_sigmas(1, sigma_min=0.1, sigma_max=5.0).tolist() == pytest.approx([5.0, 0.0])


def test_sampling_is_a_pure_function_of_the_seed() -> None:
    def run(seed: int) -> torch.Tensor:
        return sample(gaussian_network(0.1, 0.4), shape_B_C_T_H_W=(1, 2, 2, 4, 4), edm=EDM,
                      sampler=SamplerConfig(steps=4), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_integrate_with_a_perfect_denoiser_lands_on_the_data_point() -> None:
    target = torch.randn(1, 1, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    out = integrate(lambda x, s: target.expand_as(x), torch.randn(1, 1, 1, 3, 3),
                    karras_sigmas(3, sigma_min=0.01, sigma_max=10.0), method="heun")
    assert torch.allclose(out, target, atol=1e-6)


def test_bad_configs_and_missing_uncond_network_fail() -> None:
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="sigma_min"):
        SamplerConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="uncond_network"):
        guided_denoiser(gaussian_network(0, 1), edm=EDM, sampler=SamplerConfig(guidance=2.0))


def test_the_recipe_offers_exactly_the_registered_solvers() -> None:
    """`[validation].sampler` is a Literal (completion and validation read it without torch);
    it must name exactly the solvers the sampler has."""
    from typing import get_args

    from ctrlpost.diffusion import SOLVERS
    from ctrlpost.recipe import ValidationSection

    assert sorted(get_args(ValidationSection.model_fields["sampler"].annotation)) == \
        sorted(SOLVERS)


def test_a_solver_is_counted_as_it_calls() -> None:
    """Each solver's call count, as `network_calls` reports it, is what it evaluates: Euler
    one call a step, Heun two but the last."""
    for method, expected in (("euler", 5), ("heun", 9)):
        calls: list[float] = []
        cfg = SamplerConfig(method=method, steps=5)
        sample(gaussian_network(0.0, 0.5, calls=calls), shape_B_C_T_H_W=(1, 1, 1, 2, 2),
               edm=EDM, sampler=cfg, generator=torch.Generator().manual_seed(0))
        assert len(calls) == cfg.network_calls == expected, method
