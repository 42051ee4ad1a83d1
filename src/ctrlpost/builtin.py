"""ctrlpost's own plugin: the built-in data sources and model flavors.

Registered by the plugin manager by module name (``registry.BUILTIN_PLUGINS``), it answers the
same hooks a third party's plugin does, so the recipe schema, shell completion, help text,
`fetch-data` and `fetch-weights` know no name that is not registered. Read on every TAB of
completion: the planners and builders import their modules when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ctrlpost.modalities import DataSource, FetchRequest, HubRelease, ModelFlavor, hookimpl

if TYPE_CHECKING:
    from ctrlpost.data.fetch.plan import Plan
    from ctrlpost.models.args import Flavor
    from ctrlpost.recipe import WeightsSection


def _plan_hdvila(request: FetchRequest) -> Plan:
    from ctrlpost.data.fetch import hdvila, youtube

    data = request.data
    return hdvila.plan(Path(data.hdvila.jsonl),
                       num_videos=request.num_videos or data.hdvila.num_videos,
                       min_height=data.fetch.min_height,
                       factory=request.youtube_factory or youtube.default_factory())


def _plan_local(request: FetchRequest) -> Plan:
    from ctrlpost.data.fetch import local

    data = request.data
    return local.plan(data.local.videos, data.local.captions, num_videos=request.num_videos)


def _plan_synthetic(request: FetchRequest) -> Plan:
    from ctrlpost.data.fetch import synthetic

    spec = request.data.synthetic
    return synthetic.plan(num_clips=request.num_videos or spec.num_clips, width=spec.width,
                          height=spec.height, frames=spec.frames, fps=spec.fps,
                          seed=request.seed, num_frames=request.data.num_frames,
                          textures=spec.textures)


@hookimpl
def ctrlpost_register_data_sources() -> list[DataSource]:
    """HD-VILA-100M from YouTube, a local folder of videos, and procedural clips."""
    return [
        DataSource("hdvila", "HD-VILA-100M records, downloaded from YouTube and cut by their "
                   "spans ([data.hdvila])", _plan_hdvila),
        DataSource("local", "a folder of videos with a captions file ([data.local])",
                   _plan_local),
        DataSource("synthetic", "procedural clips with captions, no network ([data.synthetic])",
                   _plan_synthetic, synthesizes_hints=True),
    ]


def _build_7b() -> Flavor:
    from ctrlpost.models.args import get_flavor

    return get_flavor("7b")


def _build_tiny() -> Flavor:
    from ctrlpost.models.args import get_flavor

    return get_flavor("tiny")


def _make_tiny(weights: WeightsSection) -> object:
    from ctrlpost.weights.fetch import make_tiny

    return make_tiny(weights)


@hookimpl
def ctrlpost_register_flavors() -> list[ModelFlavor]:
    """The released 7B, and the tiny flavor of the same structure whose weights are made here."""
    from ctrlpost.weights.catalog import TRANSFER_7B

    return [
        ModelFlavor("7b", "Cosmos-Transfer1-7B: the released base and control branches",
                    _build_7b, release=HubRelease(TRANSFER_7B)),
        ModelFlavor("tiny", "the 7B's structure at toy size, for CPU runs; weights made locally",
                    _build_tiny, make_weights=_make_tiny),
    ]
