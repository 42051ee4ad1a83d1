"""Helpers shared by the model tests."""

from __future__ import annotations

from typing import Any

import torch


def grouped_convolutions(fn: Any, *args: torch.Tensor) -> tuple[Any, list[int]]:
    """``fn(*args)`` without gradients, and the ``groups`` of each grouped convolution it
    dispatched, in order (recorded at the dispatcher, so TorchScript's interpreter counts too)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    convolutions = (torch.ops.aten.convolution.default, torch.ops.aten._convolution.default)

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.groups: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in convolutions and int(args[8]) > 1:
                self.groups.append(int(args[8]))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record() as record:
        result = fn(*args)
    return result, record.groups
