"""The ``DataSource`` descriptor: where `ctrlpost fetch-data` gets clips.

A plugin returns these from ``ctrlpost_register_data_sources``; ``[data].source`` names one.
The planner receives a :class:`FetchRequest` and returns a ``ctrlpost.data.fetch.plan.Plan``
(units of work the fetch runner runs, retries, verifies and commits). Import anything heavy
inside the planner: the registry is read on every TAB of shell completion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctrlpost.data.fetch.plan import Plan


@dataclass(frozen=True)
class FetchRequest:
    """What `fetch-data` asks of a data source.

    ``data`` is the recipe's validated ``[data]`` section (``ctrlpost.recipe.DataSection``);
    ``num_videos`` overrides the source's own count (``--num-videos``); ``youtube_factory``
    replaces ``pytubefix.YouTube`` for sources that download from YouTube (None: the default
    client); other sources ignore it.
    """

    data: Any
    seed: int
    num_videos: int | None = None
    youtube_factory: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class DataSource:
    """What a plugin tells ctrlpost about one data source of `fetch-data`.

    ``synthesizes_hints``: the source makes its clips itself, so `fetch-data` also writes the
    per-clip hint files of the recipe's modalities with their plugins' ``synthesize`` (for a
    demo that trains a file-based modality with no annotation model).
    """

    name: str
    summary: str
    plan: Callable[[FetchRequest], Plan]
    synthesizes_hints: bool = False
