"""The ``ModelFlavor`` descriptor: a named architecture and where its weights come from.

A plugin returns these from ``ctrlpost_register_flavors``; ``[model].flavor`` names one.
``build`` returns the architecture (a ``ctrlpost.models.args.Flavor``) and must import it inside
the function: ``ctrlpost.models`` loads torch, and the registry is read on every TAB.

Weights come from one of two places: a :class:`HubRelease` (``fetch-weights`` downloads the
recipe's base and the released control branch of each modality from its repo: the file the
modality names as ``released_control_file``), or ``make_weights`` (``fetch-weights`` calls it
with the recipe's ``[weights]`` section to make them locally, as the tiny flavor does). A flavor
with neither has nothing to fetch: its recipes point ``[weights]`` at files the user has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctrlpost.models.args import Flavor


@dataclass(frozen=True)
class HubRelease:
    """The Hugging Face Hub repo holding a flavor's released base and control checkpoints."""

    repo_id: str


@dataclass(frozen=True)
class ModelFlavor:
    """What a plugin tells ctrlpost about one model flavor."""

    name: str
    summary: str
    build: Callable[[], Flavor]
    release: HubRelease | None = None
    make_weights: Callable[[Any], object] | None = None

    def __post_init__(self) -> None:
        if self.release is not None and self.make_weights is not None:
            raise ValueError(f"flavor {self.name!r}: set release or make_weights, not both")
