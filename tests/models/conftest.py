"""Helpers shared by the model tests."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class Convolution(NamedTuple):
    """A convolution as the dispatcher saw it: its spatial dimensions (2 or 3) and groups."""

    dims: int
    groups: int


def convolutions(fn: Any, *args: torch.Tensor) -> tuple[Any, list[Convolution]]:
    """``fn(*args)`` without gradients, and each convolution it dispatched, in order (recorded
    at the dispatcher, so TorchScript's interpreter counts too)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = (torch.ops.aten.convolution.default, torch.ops.aten._convolution.default)

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Convolution] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in ops:
                self.seen.append(Convolution(args[1].dim() - 2, int(args[8])))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record() as record:
        result = fn(*args)
    return result, record.seen


def grouped_convolutions(fn: Any, *args: torch.Tensor) -> tuple[Any, list[int]]:
    """``fn(*args)`` and the ``groups`` of each grouped convolution it dispatched, in order."""
    result, seen = convolutions(fn, *args)
    return result, [c.groups for c in seen if c.groups > 1]
