"""Hints read from per-clip files, and hints that replace the training target.

Edge and blur hints are computed from the clip's frames (:class:`~ctrlpost.modalities.base.
HintGenerator`). Depth, segmentation and keypoint hints come from a file per clip that the
dataset provides beside ``videos/<clip>.mp4``: ``<folder>/<clip><suffix>``. A modality declares
that file with a :class:`HintFile`; the dataset then reads the part of it a sample needs
(``read``), and its generator draws and renders from that content (:class:`FileHintGenerator`).
``verify`` checks every clip's file with ``check`` and names the command that makes a missing
one (``made_by``).

A generator may also change the training target (upscale trains on a crop of the clip, the hint
being that crop degraded): :class:`TargetReplacingGenerator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctrlpost.errors import DataError


@dataclass(frozen=True)
class ClipInfo:
    """What ``verify`` and the dataset know of a clip's RGB video."""

    name: str
    frame_count: int
    width: int
    height: int
    fps: float


@dataclass(frozen=True)
class ClipWindow:
    """The frames of a clip one sample uses: ``[start, start + num_frames)`` of ``clip``."""

    clip: ClipInfo
    start: int
    num_frames: int


class HintFileError(DataError):
    """A hint file that cannot serve a sample (missing, unreadable, of the wrong shape)."""


@dataclass(frozen=True)
class HintFile:
    """A per-clip file a modality's hints are made from.

    Attributes:
        folder: The dataset subfolder, e.g. ``"depth"``.
        suffix: The file suffix, e.g. ``".mp4"`` or ``".pickle"``.
        read: ``read(path, window)``: what the generator needs for the window's frames (raises
            :class:`HintFileError`). Called in the loader's workers.
        check: ``check(path, clip)``: None when the file can serve every window of the clip,
            else one sentence saying what is wrong (``verify`` prefixes the path). Must never
            execute code from the file.
        made_by: The command that makes the file (named by ``verify`` when one is missing).
        annotator: The models that make real files (`ctrlpost annotate`), or None.
        synthesize: ``synthesize(frames_T_H_W_C, fps, path)``: write a plausible file for a
            synthetic clip from its decoded RGB frames (what a data source that makes clips
            itself, such as ``synthetic``, calls so the embedded default can train this
            modality with no annotation model); None when the modality cannot.
    """

    folder: str
    suffix: str
    read: Callable[[Path, ClipWindow], Any]
    check: Callable[[Path, ClipInfo], str | None]
    made_by: str = ""
    synthesize: Callable[[np.ndarray, float, Path], None] | None = None
    annotator: Annotator | None = None

    def path(self, root: Path, clip: str) -> Path:
        """``<root>/<folder>/<clip><suffix>``."""
        return Path(root) / self.folder / f"{clip}{self.suffix}"


@dataclass(frozen=True)
class Annotator:
    """How a plugin makes its hint files for real clips with models (`ctrlpost annotate`).

    Attributes:
        models: Hugging Face repos of the models it runs (``"org/name"``): `fetch-weights`
            fetches exactly these for a recipe of this modality, into ``weights.dir/<repo>``.
        load: ``load(folders, device, params)``: the loaded models, ready to annotate
            (``folders`` maps each repo of ``models`` to its local folder; ``params`` is the
            modality's validated recipe parameters).
        annotate: ``annotate(loaded, frames_T_H_W_C, fps, path, batch_size)``: write the hint
            file of one clip (all its decoded RGB uint8 frames) at ``path``, atomically (a temp
            name renamed into place), in exactly the format ``HintFile.read`` reads. A temp
            name beside ``path`` that starts with ``.`` and ends with ``.tmp`` (what
            ``ctrlpost.files.temp_path`` makes) is swept away by the next `annotate` when a
            killed run leaves it behind.
        make_tiny: ``make_tiny(repo, folder)``: save small random weights of ``repo``'s
            architecture in ``folder`` in the released repo's format (``save_pretrained``), so
            that ``load`` reads them exactly as it reads the released model: what
            `fetch-weights` writes instead of downloading for a flavor that makes its weights
            locally (the embedded default's ``tiny``). None: such recipes need the released
            models in ``weights.dir/<repo>``.
        model_files: Per repo of ``models``, the files ``load`` reads, as fnmatch patterns
            over the repo's listing (``("*.json", "*.safetensors")``): `fetch-weights` fetches
            only those, so a repo that also ships other formats of the same weights is not
            fetched twice. A repo absent here is fetched whole (unless the weights catalog
            lists its files).
    """

    models: tuple[str, ...]
    load: Callable[[Mapping[str, Path], str, Any], Any]
    annotate: Callable[[Any, np.ndarray, float, Path, int], None]
    make_tiny: Callable[[str, Path], None] | None = None
    model_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class FileHintGenerator(Protocol):
    """Draws and renders a hint from what :attr:`HintFile.read` returned for a window."""

    def draw(self, rng: np.random.Generator, source: Any) -> Mapping[str, Any]:
        """Draw the random parameters for one sample (``source``: the read file content)."""
        ...

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any],
               source: Any) -> np.ndarray:
        """The hint (uint8 ``[T, H, W, hint_channels]`` at the clip's resolution)."""
        ...


class TargetReplacingGenerator(Protocol):
    """A clip-computed hint whose sample trains on other frames than the clip's own."""

    def draw(self, rng: np.random.Generator) -> Mapping[str, Any]:
        ...

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """The hint, from the clip's frames at their full resolution."""
        ...

    def target(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any]) -> np.ndarray:
        """The frames the sample trains on instead of ``frames_T_H_W_C`` (same draw)."""
        ...
