"""The public plugin API for control modalities.

A plugin is a module (or instance) with ``@hookimpl``-decorated functions, registered through
the ``ctrlpost`` entry-point group; see :mod:`ctrlpost.modalities.hookspecs`.
"""

from __future__ import annotations

from ctrlpost.modalities.base import ExactOn, FidelityMetric, HintGenerator, Modality, sample_rng
from ctrlpost.modalities.hookspecs import PROJECT, hookimpl, hookspec

__all__ = ["PROJECT", "ExactOn", "FidelityMetric", "HintGenerator", "Modality", "hookimpl",
           "hookspec", "sample_rng"]
