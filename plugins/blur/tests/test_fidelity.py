"""The blur fidelity metric: PSNR of the re-blurred generation against the hint."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ctrlpost_blur
from ctrlpost.modalities import registry, sample_rng
from ctrlpost_blur import BLUR, BlurFidelity, BlurParams, build_generator, psnr
from ctrlpost_blur.fidelity import MAX_PSNR_DB

from .test_blur import synthetic_clip


def test_psnr_of_a_known_error() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == MAX_PSNR_DB
    assert psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    with pytest.raises(ValueError, match="shapes"):
        psnr(a, a[:1])


def test_the_clip_itself_scores_the_maximum_and_noise_scores_low() -> None:
    frames = synthetic_clip()
    params = BlurParams()
    generator = build_generator(params)
    drawn = generator.draw(sample_rng(0, 0, 1))
    hint = generator.render(frames, drawn)
    metric = registry.fidelity_metric(BLUR, params)  # through the installed plugin's hook
    assert isinstance(metric, BlurFidelity)
    assert metric.score(frames, hint, drawn) == {"psnr": MAX_PSNR_DB}
    noise = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    assert metric.score(noise, hint, drawn)["psnr"] < 20.0
    # Detail the blur removes does not count: a sharpened clip still matches its blur closely.
    shifted = np.clip(frames.astype(int) + 3, 0, 255).astype(np.uint8)
    assert 35.0 < metric.score(shifted, hint, drawn)["psnr"] < MAX_PSNR_DB


def test_the_metric_names_its_headline() -> None:
    assert BlurFidelity.headline == "psnr"
    assert ctrlpost_blur.ctrlpost_fidelity_metric(modality="edge", params=BlurParams()) is None
