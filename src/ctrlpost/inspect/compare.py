"""Tensor-by-tensor comparison of two checkpoints: `inspect --diff` and the EMA distance.

Both sides are memory-mapped; each pair of tensors is cast to float32 on its own and released
before the next, so a 7B comparison needs about one tensor's worth of memory, never a file's.
Sums of squares are accumulated in float64 so millions of small differences are not lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

Shape = tuple[int, ...]
# Longest first: `base_model.net.` must win over `net.`.
_LAYOUT_PREFIXES = ("base_model.logvar.", "base_model.net.", "logvar.", "net.")


def module_of(key: str) -> str:
    """The module a checkpoint key belongs to, for per-module summaries.

    The layout prefix plus the first name component, and the block name under ``blocks``:
    ``net.blocks.block0.blocks.1.…`` → ``net.blocks.block0``, ``net.zero_blocks.block2.weight``
    → ``net.zero_blocks``. The logvar head is one module. Unknown prefixes: first two components.
    """
    for prefix in _LAYOUT_PREFIXES:
        if key.startswith(prefix):
            if prefix.endswith("logvar."):
                return prefix.rstrip(".")
            parts = key[len(prefix) :].split(".")
            depth = 2 if parts[0] == "blocks" and len(parts) > 2 else 1
            return prefix + ".".join(parts[:depth])
    return ".".join(key.split(".")[:2])


@dataclass
class ModuleChange:
    """How much one module's tensors differ between side ``a`` and side ``b``."""

    module: str
    tensors: int = 0
    max_abs: float = 0.0
    sq_norm_a: float = 0.0
    sq_norm_delta: float = 0.0

    @property
    def relative(self) -> float | None:
        """‖a − b‖ / ‖a‖; None when ``a`` is all zeros but ``b`` is not (e.g. zero-init layers)."""
        return _relative(self.sq_norm_delta, self.sq_norm_a)

    @property
    def changed(self) -> bool:
        """Whether any element differs."""
        return self.max_abs > 0.0

    def to_json(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "max_abs": self.max_abs, "relative": self.relative}


@dataclass
class Comparison:
    """The outcome of :func:`compare_states`: per-module changes and the key accounting."""

    modules: dict[str, ModuleChange] = field(default_factory=dict)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        """Largest absolute difference of any element."""
        return max((m.max_abs for m in self.modules.values()), default=0.0)

    @property
    def relative_l2(self) -> float | None:
        """‖a − b‖ / ‖a‖ over every compared tensor."""
        return _relative(
            sum(m.sq_norm_delta for m in self.modules.values()),
            sum(m.sq_norm_a for m in self.modules.values()),
        )

    @property
    def changed(self) -> list[ModuleChange]:
        """The modules in which some element differs, in checkpoint order."""
        return [m for m in self.modules.values() if m.changed]

    def to_json(self) -> dict[str, Any]:
        return {
            "relative_l2": self.relative_l2,
            "max_abs": self.max_abs,
            "changed_modules": [m.module for m in self.changed],
            "modules": {name: m.to_json() for name, m in self.modules.items()},
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "shape_mismatches": [
                {"key": k, "a": list(a), "b": list(b)} for k, a, b in self.shape_mismatches
            ],
        }


def _relative(sq_delta: float, sq_base: float) -> float | None:
    if sq_base > 0.0:
        return math.sqrt(sq_delta / sq_base)
    return 0.0 if sq_delta == 0.0 else None


def pair_stats(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """``(max |a − b|, ‖a‖², ‖a − b‖²)`` of two same-shape tensors, computed in float32.

    Only this pair is materialised (``.float()`` of a mmap-backed float32 tensor is free).
    """
    import torch

    if a.numel() == 0:
        return 0.0, 0.0, 0.0
    a32 = a.detach().to(torch.float32)
    sq_a = float(a32.square().sum(dtype=torch.float64))
    delta = a32 - b.detach().to(torch.float32)
    del a32
    delta.abs_()
    max_abs = float(delta.max())
    sq_delta = float(delta.square_().sum(dtype=torch.float64))
    return max_abs, sq_a, sq_delta


def compare_states(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    stats: Callable[[Tensor, Tensor], tuple[float, float, float]] | None = None,
) -> Comparison:
    """Compare ``a`` with ``b`` key by key; modules are listed in ``a``'s key order.

    ``stats`` computes one pair's statistics (default :func:`pair_stats`, looked up at call
    time so tests can watch memory around it).
    """
    stats = stats or pair_stats
    result = Comparison(
        only_in_a=sorted(a.keys() - b.keys()), only_in_b=sorted(b.keys() - a.keys())
    )
    for key, tensor_a in a.items():
        tensor_b = b.get(key)
        if tensor_b is None:
            continue
        if tensor_a.shape != tensor_b.shape:
            result.shape_mismatches.append((key, tuple(tensor_a.shape), tuple(tensor_b.shape)))
            continue
        name = module_of(key)
        change = result.modules.setdefault(name, ModuleChange(name))
        max_abs, sq_a, sq_delta = stats(tensor_a, tensor_b)
        change.tensors += 1
        change.max_abs = max(change.max_abs, max_abs)
        change.sq_norm_a += sq_a
        change.sq_norm_delta += sq_delta
    return result
