"""The public plugin API for control modalities.

A plugin is a module (or instance) with ``@hookimpl``-decorated functions, registered through
the ``ctrlpost`` entry-point group; see :mod:`ctrlpost.modalities.hookspecs`.
"""

from __future__ import annotations

from ctrlpost.modalities.base import ExactOn, FidelityMetric, HintGenerator, Modality, sample_rng
from ctrlpost.modalities.hint_files import (
    ClipInfo,
    ClipWindow,
    FileHintGenerator,
    HintFile,
    HintFileError,
    TargetReplacingGenerator,
)
from ctrlpost.modalities.hookspecs import PROJECT, hookimpl, hookspec

__all__ = ["PROJECT", "ClipInfo", "ClipWindow", "ExactOn", "FidelityMetric", "FileHintGenerator",
           "HintFile", "HintFileError", "HintGenerator", "Modality", "TargetReplacingGenerator",
           "hookimpl", "hookspec", "sample_rng"]
