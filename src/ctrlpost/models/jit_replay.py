"""A traced TorchScript graph replayed as eager aten calls, so that ``torch.compile`` can fuse it.

The released video tokenizer exists only as TorchScript (``encoder.jit``), which runs its graph
one unfused kernel at a time: the group norms, activations, paddings and concatenations around
its convolutions each read and write the whole activation. TorchScript cannot be handed to
``torch.compile``, and torch's converter to an exported program stops at the shape arithmetic a
trace records (``aten::size`` → ``prim::NumToTensor`` → ``aten::sub`` → ``aten::Int``).

:class:`GraphReplay` reads the inlined graph once and, on each call, runs its nodes in order:
every ``aten::`` node as the same operator overload (``torch.ops.aten.<name>.<overload>``) on
the same arguments, so eager replay computes what the TorchScript interpreter computes; the
parameters are the script module's own tensors (shared, not copied). Shape arithmetic stays in
Python integers, which is what lets ``torch.compile`` trace the whole graph without a break.

Only traced graphs are accepted: a scripted module's control flow (``prim::If``,
``prim::Loop``), method calls or Python operators raise :class:`UnsupportedGraph` naming the
node, and the caller keeps the TorchScript module.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

_NUMBER_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "aten::add": operator.add, "aten::sub": operator.sub, "aten::mul": operator.mul,
    "aten::div": operator.truediv, "aten::floor_divide": operator.floordiv,
    "aten::floordiv": operator.floordiv, "aten::remainder": operator.mod,
}
"""Arithmetic a trace records on a size (as a 0-dim tensor): replayed on the Python number."""


class UnsupportedGraph(ValueError):
    """The script module's graph has a node a replay cannot run (see the module docstring)."""


@dataclass(frozen=True)
class _Number:
    """A traced size turned into a tensor (``prim::NumToTensor``), kept as the Python number."""

    value: int | float


@dataclass(frozen=True)
class _Ref:
    """An argument that is the value with this index in the replay's environment."""

    index: int


@dataclass(frozen=True)
class _Step:
    """One node: ``run(*args, **kwargs)`` (arguments resolved), its results to ``outputs``."""

    run: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    outputs: tuple[int, ...]


def _scalar(value: Any) -> Any:
    return value.value if isinstance(value, _Number) else value.item()


_PRIMITIVES: dict[str, Callable[..., Any]] = {
    "prim::ListConstruct": lambda *items: list(items),
    "prim::TupleConstruct": lambda *items: tuple(items),
    "prim::ListUnpack": tuple,
    "prim::TupleUnpack": tuple,
    "prim::NumToTensor": _Number,
    "aten::size": lambda tensor, *dim: tensor.size(*dim),
    "aten::Int": lambda value: int(_scalar(value)),
    "aten::Float": lambda value: float(_scalar(value)),
    "aten::ScalarImplicit": _scalar,
}
"""Nodes that build or unpack lists and tuples, or read and convert sizes."""


def _number_op(op: Callable[[Any, Any], Any], first: _Number, other: Any,
               alpha: Any = 1) -> _Number:
    """Shape arithmetic on the Python numbers (``alpha``: add/sub's multiplier)."""
    value = other.value if isinstance(other, _Number) else other
    return _Number(op(first.value, value * alpha))


def _aten(op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``op`` on the arguments, a traced size that reaches a tensor operator as the 0-dim
    tensor TorchScript made of it."""
    args = tuple(torch.scalar_tensor(a.value, dtype=torch.int64 if isinstance(a.value, int)
                                     else torch.float64) if isinstance(a, _Number) else a
                 for a in args)
    return op(*args, **kwargs)


class GraphReplay(nn.Module):
    """``module``'s inlined graph, run node by node as aten calls (see the module docstring)."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        graph = module.inlined_graph
        index: dict[Any, int] = {}
        static: dict[Any, Any] = {}  # modules reached by prim::GetAttr, resolved once here
        inputs = list(graph.inputs())
        static[inputs[0]] = module  # the graph's first input is the module itself
        for value in inputs[1:]:
            index[value] = len(index)
        self._inputs = len(inputs) - 1
        self._steps: list[_Step] = []
        self._constants: dict[int, Any] = {}
        numbers: set[int] = set()  # environment slots that hold a traced size (_Number)
        names: dict[int, str] = {}  # buffer name of each of the module's tensors, by id

        def arg(value: Any) -> Any:
            if value in static:
                raise UnsupportedGraph(f"a module is passed as a value: {value.debugName()}")
            return _Ref(index[value])

        for node in graph.nodes():
            kind = node.kind()
            outputs = list(node.outputs())
            if kind == "prim::GetAttr":
                attribute = getattr(static[node.input()], node.s("name"))
                if not isinstance(attribute, torch.Tensor):
                    static[outputs[0]] = attribute
                    continue
                # One buffer per tensor: the inlined graph reads a shared one at every use.
                name = names.setdefault(id(attribute), f"tensor{len(names)}")
                self.register_buffer(name, attribute, persistent=False)
            for value in outputs:
                index[value] = len(index)
            out = tuple(index[value] for value in outputs)
            if kind == "prim::GetAttr":  # read at run time: .to() moves the buffers
                self._steps.append(_Step(partial(getattr, self, name), (), (), out))
                continue
            operands = [arg(v) for v in node.inputs()]
            if kind == "prim::Constant":
                self._constants[out[0]] = outputs[0].toIValue()
            elif kind in _NUMBER_OPS and index[node.inputsAt(0)] in numbers:
                # Shape arithmetic: constants as Python numbers now, so that nothing is read
                # from a tensor at run time (a graph break under torch.compile).
                operands = [_number_constant(self._constants.get(ref.index), ref)
                            for ref in operands]
                self._steps.append(_Step(partial(_number_op, _NUMBER_OPS[kind]),
                                         tuple(operands), (), out))
                numbers.add(out[0])
            elif kind in _PRIMITIVES:
                self._steps.append(_Step(_PRIMITIVES[kind], tuple(operands), (), out))
                if kind == "prim::NumToTensor":
                    numbers.add(out[0])
            elif kind.startswith("aten::"):
                op, args, kwargs = _bind(node, operands)
                self._steps.append(_Step(partial(_aten, op), args, kwargs, out))
            else:
                raise UnsupportedGraph(f"node {kind} (only traced graphs replay): {node}".strip())
        self._returns = tuple(arg(v) for v in graph.return_node().inputs())
        self._size = len(index)

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != self._inputs:
            raise TypeError(f"the graph takes {self._inputs} input(s), got {len(inputs)}")
        env: list[Any] = [None] * self._size
        env[:len(inputs)] = inputs
        for position, constant in self._constants.items():
            env[position] = constant

        def get(item: Any) -> Any:
            return env[item.index] if isinstance(item, _Ref) else item

        for step in self._steps:
            result = step.run(*(get(a) for a in step.args),
                              **{key: get(value) for key, value in step.kwargs})
            if len(step.outputs) == 1:
                env[step.outputs[0]] = result
            else:
                for position, value in zip(step.outputs, result, strict=True):
                    env[position] = value
        returned = [get(r) for r in self._returns]
        return returned[0] if len(returned) == 1 else tuple(returned)


def _number_constant(constant: Any, reference: _Ref) -> Any:
    """A constant operand of shape arithmetic as a Python number (a 0-dim tensor's item)."""
    if isinstance(constant, torch.Tensor) and constant.dim() == 0:
        return constant.item()
    return reference if constant is None else constant


def _bind(node: Any, args: Sequence[Any]) -> tuple[Callable[..., Any], tuple[Any, ...],
                                                     tuple[tuple[str, Any], ...]]:
    """The operator overload of an ``aten::`` node, its positional and keyword arguments."""
    schema = node.schema()
    if schema == "(no schema)":
        raise UnsupportedGraph(f"node {node.kind()} has no schema: {node}".strip())
    name = schema.split("(", 1)[0].removeprefix("aten::")
    base, _, overload = name.partition(".")
    try:
        op = getattr(getattr(torch.ops.aten, base), overload or "default")
    except AttributeError:
        raise UnsupportedGraph(f"no operator {schema.split('(', 1)[0]} in this torch") from None
    positional, keywords = [], []
    for argument, value in zip(op._schema.arguments, args, strict=True):
        if argument.kwarg_only:
            keywords.append((argument.name, value))
        else:
            positional.append(value)
    return op, tuple(positional), tuple(keywords)
