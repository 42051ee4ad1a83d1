"""The ``edge`` control modality: Canny edges of the RGB frames, as in Cosmos-Transfer1.

Its fidelity metric is the F1 of Canny edges of generated frames against the hint, with a small
pixel tolerance (:mod:`ctrlpost_edge.fidelity`).

Registered through the ``ctrlpost`` entry-point group; this module is the plugin. Importing it
loads neither torch nor cv2.
"""

from __future__ import annotations

from ctrlpost.modalities import ExactOn, Modality, hookimpl
from ctrlpost_edge.canny import CannyHints, build_generator
from ctrlpost_edge.fidelity import EdgeFidelity, build_fidelity, edge_f1
from ctrlpost_edge.params import PRESET_THRESHOLDS, PRESETS, EdgeParams

__all__ = ["EDGE", "PRESETS", "PRESET_THRESHOLDS", "CannyHints", "EdgeFidelity", "EdgeParams",
           "build_fidelity", "build_generator", "edge_f1"]

EDGE = Modality(
    name="edge",
    summary="Canny edges of the RGB frames, thresholds drawn per clip (control_input_edge)",
    params_model=EdgeParams,
    build_generator=build_generator,
    hint_channels=3,
    hint_key="control_input_edge",
    presets=PRESETS,
    # Canny gives the same bytes on every OpenCV from 4.10 (the reference's) to 5.1; releases
    # after 5.1 are not yet compared.
    exact_on=(ExactOn("OpenCV", "cv2", ">=4.10,<5.2", why="not compared on other releases"),),
    released_control_file="edge_control.pt",
)


@hookimpl
def ctrlpost_register_modalities() -> list[Modality]:
    """Provide the ``edge`` modality."""
    return [EDGE]


@hookimpl
def ctrlpost_fidelity_metric(modality: str, params: EdgeParams) -> EdgeFidelity | None:
    """The ``edge`` metric (edge F1) for the ``edge`` modality."""
    return build_fidelity(params) if modality == EDGE.name else None
