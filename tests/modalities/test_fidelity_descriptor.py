"""The optional fidelity metric of a ``Modality``: backward compatible, headline required."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from ctrlpost.modalities import Modality


class Params(BaseModel):
    pass


class Identity:
    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def render(self, frames: np.ndarray, drawn: Any) -> np.ndarray:
        return frames


class MeanAbs:
    def score(self, generated: np.ndarray, hint: np.ndarray, drawn: Any) -> dict[str, float]:
        return {"neg_l1": -float(np.abs(generated.astype(int) - hint).mean())}


def test_a_modality_without_a_metric_is_still_valid() -> None:
    plain = Modality(name="plain", summary="s", params_model=Params,
                     build_generator=lambda p: Identity())
    assert not plain.has_fidelity and plain.build_fidelity is None


def test_a_metric_needs_its_headline_name() -> None:
    with pytest.raises(ValueError, match="fidelity_metric"):
        Modality(name="m", summary="s", params_model=Params, build_generator=lambda p: Identity(),
                 build_fidelity=lambda p: MeanAbs())
    scored = Modality(name="m", summary="s", params_model=Params,
                      build_generator=lambda p: Identity(), build_fidelity=lambda p: MeanAbs(),
                      fidelity_metric="neg_l1")
    assert scored.has_fidelity
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    metric = scored.build_fidelity(Params())  # type: ignore[misc]
    assert metric.score(frames, frames, {}) == {"neg_l1": 0.0}
