"""Which flavor and part a checkpoint is, from its key names and shapes alone.

The same function reads a real file's ``key → shape`` map and a meta-device layout, so the 7B
figures can be checked without a 7B file. Expected layouts are built on the meta device (free
even for 7B) and cached per process.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from ctrlpost.errors import WeightsError
from ctrlpost.modalities import registry
from ctrlpost.models.args import with_control_blocks
from ctrlpost.models.state_dict import (
    BASE_LOGVAR_PREFIX,
    BASE_NET_PREFIX,
    CONTROL_PREFIX,
    KeyProblem,
    Shape,
    compare_keys,
)

Part = Literal["base", "control"]
_CONTROL_BLOCK = re.compile(r"^net\.blocks\.block(\d+)\.")
_WIDTH_KEY = "affline_norm.weight"  # [model_channels]: tells the flavors apart at a glance


@dataclass(frozen=True)
class Expected:
    """A flavor's layout for one part, and which of its keys are buffers (not parameters)."""

    shapes: Mapping[str, Shape]
    buffers: frozenset[str]


@functools.cache
def expected_layout(
    flavor_name: str, part: Part, num_control_blocks: int | None = None
) -> Expected:
    """The released layout of ``flavor_name`` (built on the meta device, so free for 7B)."""
    import torch

    from ctrlpost.models.controlnet import ControlNet
    from ctrlpost.models.dit import DiT
    from ctrlpost.models.state_dict import base_layout, control_layout

    flavor = registry.get_flavor(flavor_name).build()
    if num_control_blocks is not None:
        flavor = with_control_blocks(flavor, num_control_blocks)
    with torch.device("meta"):
        net = DiT(flavor.base) if part == "base" else ControlNet(flavor.control)
    shapes = base_layout(net) if part == "base" else control_layout(net)
    params = {name for name, _ in net.named_parameters()}
    prefix = BASE_NET_PREFIX if part == "base" else CONTROL_PREFIX
    buffers = {prefix + name for name in net.state_dict() if name not in params}
    if part == "base":  # the logvar head's random Fourier features are buffers too
        buffers |= {BASE_LOGVAR_PREFIX + "0.freqs", BASE_LOGVAR_PREFIX + "0.phases"}
    # Read-only: the cached instance is shared by every caller.
    return Expected(shapes=MappingProxyType(shapes), buffers=frozenset(buffers))


@dataclass(frozen=True)
class ParamCounts:
    """Element counts by component; ``total`` counts parameters, not buffers."""

    base: int = 0
    control: int = 0
    logvar: int = 0
    buffers: int = 0
    other: int = 0

    @property
    def trainable(self) -> int:
        """What post-training updates: the control branch (the base and logvar are frozen)."""
        return self.control

    @property
    def total(self) -> int:
        return self.base + self.control + self.logvar + self.other

    def to_json(self) -> dict[str, int]:
        return {"base": self.base, "control": self.control, "trainable": self.trainable,
                "logvar": self.logvar, "buffers": self.buffers, "other": self.other,
                "total": self.total}


def count_params(shapes: Mapping[str, Shape], buffers: frozenset[str]) -> ParamCounts:
    """Sum the elements of every key into its component."""
    sums: Counter[str] = Counter()
    for key, shape in shapes.items():
        if key.startswith(BASE_LOGVAR_PREFIX) and key not in buffers:
            sums["logvar"] += math.prod(shape)
        elif key in buffers:
            sums["buffers"] += math.prod(shape)
        elif key.startswith(BASE_NET_PREFIX):
            sums["base"] += math.prod(shape)
        elif key.startswith(CONTROL_PREFIX):
            sums["control"] += math.prod(shape)
        else:
            sums["other"] += math.prod(shape)
    return ParamCounts(**sums)


@dataclass(frozen=True)
class LayoutReport:
    """What the keys say: part, flavor (None unless every key and shape matches), problems."""

    part: Part
    flavor: str | None
    closest_flavor: str
    num_control_blocks: int | None
    problems: tuple[KeyProblem, ...]
    params: ParamCounts

    def key_problems(self) -> dict[str, Any]:
        return {
            "missing": [p.key for p in self.problems if p.kind == "missing"],
            "unexpected": [p.key for p in self.problems if p.kind == "unexpected"],
            "shape": [
                {"key": p.key, "expected": list(p.expected or ()), "found": list(p.found or ())}
                for p in self.problems
                if p.kind == "shape"
            ],
        }


def detect_part(keys: Sequence[str]) -> Part:
    """``base`` for ``base_model.*`` keys, ``control`` for ``net.*``; the majority wins."""
    base = sum(key.startswith("base_model.") for key in keys)
    control = sum(key.startswith(CONTROL_PREFIX) for key in keys)
    if not base and not control:
        raise WeightsError(
            "not a Cosmos-Transfer1 checkpoint: no key starts with 'base_model.' or 'net.' "
            f"(first keys: {', '.join(sorted(keys)[:3]) or 'none'})",
            hint="inspect reads base_model.pt, *_control.pt and exported iter_*_model.pt files",
        )
    return "base" if base >= control else "control"


def count_control_blocks(keys: Sequence[str]) -> int | None:
    """1 + the highest ``net.blocks.block{i}`` index (a gap then shows as missing keys)."""
    indices = [int(m.group(1)) for key in keys if (m := _CONTROL_BLOCK.match(key))]
    return max(indices) + 1 if indices else None


def _candidates(shapes: Mapping[str, Shape], part: Part) -> list[str]:
    """Flavors worth comparing: those of the file's model width when it has one (so a tiny file
    never pays for building the 7B layout), else all."""
    prefix = BASE_NET_PREFIX if part == "base" else CONTROL_PREFIX
    width = shapes.get(prefix + _WIDTH_KEY)
    flavors = registry.installed_flavors()
    same = [name for name, flavor in flavors.items()
            if width is not None and width == (flavor.build().base.model_channels,)]
    return same or list(flavors)


def _layout_for(name: str, part: Part, blocks: int | None) -> Expected:
    if part == "control" and blocks is not None:
        try:
            return expected_layout(name, part, blocks)
        except ValueError:  # more blocks than this flavor's base: compare with its default
            pass
    return expected_layout(name, part)


def describe_layout(shapes: Mapping[str, Sequence[int]]) -> LayoutReport:
    """Detect part, flavor and control blocks of a ``key → shape`` mapping and count its
    parameters. With no exact match, ``closest_flavor`` is the one with the fewest problems."""
    found = {key: tuple(shape) for key, shape in shapes.items()}
    part = detect_part(list(found))
    blocks = count_control_blocks(list(found)) if part == "control" else None
    best: tuple[str, Expected, list[KeyProblem]] | None = None
    for name in _candidates(found, part):
        expected = _layout_for(name, part, blocks)
        problems = compare_keys(found, expected.shapes)
        if best is None or len(problems) < len(best[2]):
            best = (name, expected, problems)
        if not problems:
            break
    assert best is not None
    name, expected, problems = best
    return LayoutReport(
        part=part,
        flavor=None if problems else name,
        closest_flavor=name,
        num_control_blocks=blocks,
        problems=tuple(problems),
        params=count_params(found, expected.buffers),
    )
