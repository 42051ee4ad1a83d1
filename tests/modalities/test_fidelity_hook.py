"""The fidelity-metric hook: optional per modality, first answer wins, open to other plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

import ctrlpost_edge
from ctrlpost.engine.scoring import Scorer
from ctrlpost.modalities import Modality, hookimpl, registry


class Params(BaseModel):
    pass


class Identity:
    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def render(self, frames: np.ndarray, drawn: Any) -> np.ndarray:
        return frames


PLAIN = Modality(name="plain", summary="s", params_model=Params,
                 build_generator=lambda p: Identity())


class NegativeL1:
    headline = "neg_l1"

    def score(self, generated: np.ndarray, hint: np.ndarray,
              drawn: Mapping[str, Any]) -> dict[str, float]:
        return {"neg_l1": -float(np.abs(generated.astype(int) - hint).mean())}


class PlainPlugin:
    """Provides a modality without a metric."""

    @hookimpl
    def ctrlpost_register_modalities(self) -> list[Modality]:
        return [PLAIN]


class MetricPlugin:
    """Provides no modality, only a metric for other plugins' ``edge`` and ``plain``."""

    @hookimpl
    def ctrlpost_fidelity_metric(self, modality: str, params: Any) -> NegativeL1 | None:
        return NegativeL1() if modality in ("edge", "plain") else None


def manager(*plugins: object) -> Any:
    built = registry.build_plugin_manager(load_entrypoints=False)
    for plugin in plugins:
        built.register(plugin)
    return built


def test_a_modality_without_a_metric_still_scores_nothing() -> None:
    assert registry.fidelity_metric(PLAIN, Params(), manager(PlainPlugin())) is None
    scorer = Scorer(PLAIN, Params())  # the installed plugins know no "plain" metric
    assert scorer.headline is None


def test_the_plugins_own_metric_and_one_supplied_by_another_plugin() -> None:
    edge_params = ctrlpost_edge.EdgeParams()
    own = registry.fidelity_metric(ctrlpost_edge.EDGE, edge_params, manager(ctrlpost_edge))
    assert isinstance(own, ctrlpost_edge.EdgeFidelity) and own.headline == "f1"
    # Registered later, asked first: the other plugin's answer replaces edge's own metric.
    both = manager(ctrlpost_edge, MetricPlugin(), PlainPlugin())
    assert isinstance(registry.fidelity_metric(ctrlpost_edge.EDGE, edge_params, both), NegativeL1)
    metric = registry.fidelity_metric(PLAIN, Params(), both)
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    assert metric is not None and metric.score(frames, frames + 2, {}) == {"neg_l1": -2.0}
