"""Hook specifications of the ``ctrlpost`` plugin project."""

from __future__ import annotations

from typing import Any

import pluggy

from ctrlpost.modalities.base import FidelityMetric, Modality
from ctrlpost.modalities.base_precisions import BasePrecision
from ctrlpost.modalities.flavors import ModelFlavor
from ctrlpost.modalities.sources import DataSource

PROJECT = "ctrlpost"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ModalitySpec:
    """Hooks a plugin may implement: each extension point is registered through one hook.

    The ``ctrlpost_register_*`` hooks return descriptors; a name may be provided once across
    every installed plugin and ctrlpost's own (:mod:`ctrlpost.builtin`).
    """

    @hookspec
    def ctrlpost_register_modalities(self) -> list[Modality]:  # type: ignore[empty-body]
        """Return the control modalities this plugin provides."""

    @hookspec
    def ctrlpost_register_data_sources(self) -> list[DataSource]:  # type: ignore[empty-body]
        """Return the `fetch-data` sources this plugin provides (``[data].source``)."""

    @hookspec
    def ctrlpost_register_flavors(self) -> list[ModelFlavor]:  # type: ignore[empty-body]
        """Return the model flavors this plugin provides (``[model].flavor``)."""

    @hookspec
    def ctrlpost_register_base_precisions(  # type: ignore[empty-body]
        self,
    ) -> list[BasePrecision]:
        """Return the ways of computing the frozen base this plugin provides
        (``[model].base_precision``)."""

    @hookspec(firstresult=True)
    def ctrlpost_fidelity_metric(  # type: ignore[empty-body]
        self, modality: str, params: Any
    ) -> FidelityMetric | None:
        """The fidelity metric of modality ``modality`` with its validated ``params``, or None
        when this plugin has none for it.

        Validation and ``ctrlpost verify --fidelity`` score generated clips with it. The first
        answer that is not None wins, and the plugin registered last is asked first, so a plugin
        may also supply (or replace) the metric of another plugin's modality.
        """
