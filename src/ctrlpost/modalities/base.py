"""The ``Modality`` descriptor and the protocols that plugins implement.

A hint generator works in two steps so that its randomness is explicit and testable:
``draw(rng)`` picks the per-clip random parameters (one draw per clip, as the reference does),
``render(frames, drawn)`` applies them to every frame deterministically.

A fidelity metric (optional, supplied through the ``ctrlpost_fidelity_metric`` hook) scores how
well generated frames follow the hint they were generated from; validation during training and
``ctrlpost verify --fidelity`` report it. A modality without one still trains; its validation
then shows samples but no metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from ctrlpost.modalities.hint_files import HintFile
from ctrlpost.modalities.online import OnlineHint


class HintGenerator(Protocol):
    """Turns RGB frames into a control hint, with per-clip randomness drawn up front."""

    def draw(self, rng: np.random.Generator) -> Mapping[str, Any]:
        """Draw the random parameters for one clip."""
        ...

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """Render the hint (uint8 ``[T, H, W, hint_channels]``) of uint8 RGB frames."""
        ...


class FidelityMetric(Protocol):
    """Scores generated frames against their hint; every value is "higher is better".

    ``headline`` names the value of ``score`` that sums the metric up (e.g. ``"f1"``): the one
    validation plots against its floor and ceiling.
    """

    headline: str

    def score(self, generated_T_H_W_C: np.ndarray, hint_T_H_W_C: np.ndarray,
              drawn: Mapping[str, Any]) -> Mapping[str, float]:
        """Metric values of uint8 RGB ``generated`` frames ``[T, H, W, 3]`` against the uint8
        ``hint`` ``[T, H, W, hint_channels]`` they were generated from; ``drawn`` is the clip's
        draw of the hint generator (the same parameters can then be applied to the frames)."""
        ...


@dataclass(frozen=True)
class ExactOn:
    """The versions of a library on which a modality's hints equal the reference's byte for byte.

    ``versions`` is a PEP 440 specifier (``">=4.10,<4.12"``) checked against the
    ``__version__`` of the importable ``module`` actually in use: two distributions (e.g.
    ``opencv-python`` and ``opencv-python-headless``) can provide the same module, so the
    module, not a distribution's metadata, says which code renders the hints.
    """

    library: str
    module: str
    versions: str
    why: str = ""

    def installed_version(self) -> str | None:
        """The version of ``module`` in use, or None when it cannot be imported."""
        import importlib

        try:
            return str(importlib.import_module(self.module).__version__)
        except ImportError:
            return None

    def holds(self) -> bool | None:
        """Whether the version in use is in ``versions`` (None: the module is missing)."""
        from packaging.specifiers import SpecifierSet

        version = self.installed_version()
        return None if version is None else SpecifierSet(self.versions).contains(version)


@dataclass(frozen=True)
class Modality:
    """What a plugin tells ctrlpost about one control modality.

    ``build_generator`` receives a validated instance of ``params_model``. ``exact_on`` lists
    the library versions on which the hints are byte-identical to the reference's (empty: no
    such claim). ``hint_file`` and ``replaces_video`` widen what a modality may do (see
    :mod:`ctrlpost.modalities.hint_files`); ``online_hint`` lets the params choose to compute
    the file's hint in the training process instead. ``released_control_file`` names the
    control branch a flavor's hub release has for this modality (``"edge_control.pt"``), the
    file `fetch-weights` downloads for it; None: none is released.
    """

    name: str
    summary: str
    params_model: type[BaseModel]
    build_generator: Callable[[Any], HintGenerator]
    hint_channels: int = 3
    hint_key: str = ""
    presets: tuple[str, ...] = field(default_factory=tuple)
    exact_on: tuple[ExactOn, ...] = field(default_factory=tuple)
    # A hint made from a per-clip file instead of the clip's frames; build_generator then
    # returns a FileHintGenerator (see ctrlpost.modalities.hint_files).
    hint_file: HintFile | None = None
    # The sample trains on generator.target(frames, drawn) instead of the clip's frames.
    replaces_video: bool = False
    released_control_file: str | None = None
    # The same hint computed in the training process by a model (see ctrlpost.modalities.online),
    # when the control's params select it; the hint file is then not read.
    online_hint: OnlineHint | None = None

    def online_hint_for(self, params: BaseModel) -> OnlineHint | None:
        """The online hint the validated ``params`` select, or None (hints from files or frames)."""
        if self.online_hint is not None and self.online_hint.selected(params):
            return self.online_hint
        return None

    def hint_file_for(self, params: BaseModel) -> HintFile | None:
        """The per-clip file a control with validated ``params`` reads, or None: none, or its
        hint is computed online."""
        return None if self.online_hint_for(params) is not None else self.hint_file

    def validate_params(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate raw recipe parameters with the plugin's own model (raises pydantic errors)."""
        return self.params_model.model_validate(dict(raw))

    def make_hint(
        self, frames_T_H_W_C: np.ndarray, params: BaseModel, rng: np.random.Generator
    ) -> np.ndarray:
        """Draw and render a hint in one call."""
        generator = self.build_generator(params)
        return generator.render(frames_T_H_W_C, generator.draw(rng))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([seed, epoch, index])
