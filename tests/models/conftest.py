"""Helpers shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch


def dispatched(fn: Any, *args: torch.Tensor, ops: tuple[Any, ...],
               read: Callable[[tuple[Any, ...]], Any]) -> tuple[Any, list[Any]]:
    """``fn(*args)`` without gradients, and ``read(arguments)`` of each call of one of ``ops``
    it dispatched, in order (recorded at the dispatcher, so TorchScript's interpreter counts
    too)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Any] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in ops:
                self.seen.append(read(args))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record() as record:
        result = fn(*args)
    return result, record.seen


class Convolution(NamedTuple):
    """A convolution as the dispatcher saw it: its spatial dimensions (2 or 3) and groups."""

    dims: int
    groups: int


def convolutions(fn: Any, *args: torch.Tensor) -> tuple[Any, list[Convolution]]:
    """``fn(*args)`` and each convolution it dispatched."""
    return dispatched(fn, *args, ops=(torch.ops.aten.convolution.default,
                                      torch.ops.aten._convolution.default),
                      read=lambda a: Convolution(a[1].dim() - 2, int(a[8])))


def grouped_convolutions(fn: Any, *args: torch.Tensor) -> tuple[Any, list[int]]:
    """``fn(*args)`` and the ``groups`` of each grouped convolution it dispatched, in order."""
    result, seen = convolutions(fn, *args)
    return result, [c.groups for c in seen if c.groups > 1]


def softmax_sizes(fn: Any, *args: torch.Tensor) -> tuple[Any, list[int]]:
    """``fn(*args)`` and the number of scores each softmax it dispatched took."""
    return dispatched(fn, *args, ops=(torch.ops.aten._softmax.default,),
                      read=lambda a: a[0].numel())
