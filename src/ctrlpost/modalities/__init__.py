"""The public plugin API: control modalities, data sources, model flavors and base precisions.

A plugin is a module (or instance) with ``@hookimpl``-decorated functions, registered through
the ``ctrlpost`` entry-point group; see :mod:`ctrlpost.modalities.hookspecs`. ctrlpost's own
data sources, flavors and base precisions come through the same hooks (:mod:`ctrlpost.builtin`).
"""

from __future__ import annotations

from ctrlpost.files import write_bytes_atomic
from ctrlpost.modalities.base import ExactOn, FidelityMetric, HintGenerator, Modality, sample_rng
from ctrlpost.modalities.base_precisions import BasePrecision
from ctrlpost.modalities.flavors import HubRelease, ModelFlavor
from ctrlpost.modalities.hint_files import (
    Annotator,
    ClipInfo,
    ClipWindow,
    FileHintGenerator,
    HintFile,
    HintFileError,
    TargetReplacingGenerator,
)
from ctrlpost.modalities.hookspecs import PROJECT, hookimpl, hookspec
from ctrlpost.modalities.online import OnlineHint
from ctrlpost.modalities.sources import DataSource, FetchRequest

__all__ = ["PROJECT", "Annotator", "BasePrecision", "ClipInfo", "ClipWindow", "DataSource",
           "ExactOn", "FetchRequest", "FidelityMetric", "FileHintGenerator", "HintFile",
           "HintFileError", "HintGenerator", "HubRelease", "Modality", "ModelFlavor",
           "OnlineHint", "TargetReplacingGenerator",
           "hookimpl", "hookspec", "sample_rng", "write_bytes_atomic"]
