"""ctrlpost's own plugin: the built-in data sources, model flavors and base precisions.

Registered by the plugin manager by module name (``registry.BUILTIN_PLUGINS``), it answers the
same hooks a third party's plugin does, so the recipe schema, shell completion, help text,
`fetch-data` and `fetch-weights` know no name that is not registered. Read on every TAB of
completion: the planners and builders import their modules when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ctrlpost.modalities import (
    BasePrecision,
    DataSource,
    FetchRequest,
    HubRelease,
    ModelFlavor,
    hookimpl,
)

if TYPE_CHECKING:
    from torch import nn

    from ctrlpost.data.fetch.plan import Plan
    from ctrlpost.models.args import DiTArgs, Flavor
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


def _as_released(base: nn.Module) -> int:
    return 0


def _to_fp8(base: nn.Module) -> int:
    from ctrlpost.models.base_precision import to_fp8

    return to_fp8(base)


def _to_fp8_attention(base: nn.Module) -> int:
    from ctrlpost.models.base_precision import to_fp8_attention

    return to_fp8_attention(base)


def _fp8_attention_problems(base: DiTArgs, tokens: int) -> list[str]:
    from ctrlpost.models.fp8_attention import unmet_requirements

    return unmet_requirements(base.head_dim, tokens)


@hookimpl
def ctrlpost_register_base_precisions() -> list[BasePrecision]:
    """The released layers as they are, and two opt-in FP8 forms of the frozen base."""
    return [
        BasePrecision("bf16", "the released layers as they are", _as_released,
                      needs_bf16=False),
        BasePrecision("fp8", "the token-wise linear layers as e4m3 products with row-wise "
                      "scales (forward and input gradient); attention in bf16", _to_fp8),
        BasePrecision("fp8-attention", "experimental: those, and self-attention in e4m3 with "
                      "per-tensor scales (cuDNN's fused kernel: pip install 'ctrlpost[fp8]', "
                      "Hopper or newer)", _to_fp8_attention,
                      attention_output_bytes=1, problems=_fp8_attention_problems),
    ]
