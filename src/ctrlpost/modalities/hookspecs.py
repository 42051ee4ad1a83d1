"""Hook specifications of the ``ctrlpost`` plugin project."""

from __future__ import annotations

import pluggy

from ctrlpost.modalities.base import Modality

PROJECT = "ctrlpost"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ModalitySpec:
    """Hooks a modality plugin may implement."""

    @hookspec
    def ctrlpost_register_modalities(self) -> list[Modality]:  # type: ignore[empty-body]
        """Return the control modalities this plugin provides.

        A ``Modality`` may carry a fidelity metric (``build_fidelity`` + ``fidelity_metric``):
        validation and ``ctrlpost verify --fidelity`` then score generated clips with it.
        """
