"""The ``BasePrecision`` descriptor: what ``[model].base_precision`` does to the frozen base.

A plugin returns these from ``ctrlpost_register_base_precisions``; ``[model].base_precision``
names one. ``convert`` changes a frozen base (a ``ctrlpost.models.DiT``, on the meta device,
before sharding) in place and returns how many layers it changed; the parameters must stay as
they are, so strict loading, sharding and checkpoints are unchanged. ``convert`` and
``problems`` import what they need inside the function: the registry is read on every TAB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctrlpost.models.args import DiTArgs


@dataclass(frozen=True)
class BasePrecision:
    """What a plugin tells ctrlpost about one way of computing the frozen base."""

    name: str
    summary: str
    convert: Callable[[Any], int]
    #: Whether it needs ``[model].precision = "bf16"`` (FP8 products take bf16 inputs).
    needs_bf16: bool = True
    #: Bytes per element a selectively checkpointed block keeps of its self-attention output;
    #: None: the compute dtype's (the memory planner sizes "auto" checkpointing with it).
    attention_output_bytes: int | None = None
    #: ``(base architecture, tokens per sample) → problems``, each one line with its fix, that
    #: `verify` and `train` report under ``model.base_precision`` before any rank starts.
    problems: Callable[[DiTArgs, int], list[str]] | None = None
