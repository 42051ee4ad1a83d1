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

With ``fuse_attention``, attention the graph computes with materialised scores (a batched
product of queries and keys, a constant scale, an optional causal mask built from the scores,
a softmax, a batched product with the values: how the released tokenizer's code writes its
spatial and temporal attention blocks) runs as one ``scaled_dot_product_attention``, which the
compiler maps to a fused kernel that never writes the score matrix (``torch.compile`` does not
find that pattern in the replayed ops by itself). The result is the same attention rounded
differently, so the option is off by default. With ``attention_score_budget`` as well, the
matched attention runs as the graph computes it (products and a softmax, the scores
materialised) but a slice of its batch at a time, no slice holding more than that many scores:
bounded memory, with the released form's kernels (products and a softmax), for head widths the
fast fused kernels do not take (512 in the released encoder).

With ``depthwise_as_sums``, a depthwise convolution whose kernel tiles its input (stride equal
to the kernel, no padding or dilation: the Haar wavelet steps that open the released encoder)
runs as the weighted sum of strided slices it is, accumulated in float32: each input element is
read once, and the compiler fuses the sum with what reads it, where a depthwise 3-D convolution
runs as a kernel of its own over the whole activation. Also rounded differently, also off by
default.

With ``convolutions_as_2d``, the factorised causal convolutions of the released encoder (3-D
kernels of depth 1, ``(1, k, k)``, and 1 × 1 in space, ``(k, 1, 1)``) run as 2-D convolutions:
frames folded into the batch, or each frame's positions into the width. ``torch.compile``
lays out the tensors around 2-D convolutions channels-last, the layout cuDNN's fastest kernels
take, but leaves 3-D ones as the graph has them (channels-first); folded, every convolution of
the encoder reads and writes channels-last tensors, and the folds are views of them. Rounded
differently, off by default.

Only traced graphs are accepted: a scripted module's control flow (``prim::If``,
``prim::Loop``), method calls or Python operators raise :class:`UnsupportedGraph` naming the
node, and the caller keeps the TorchScript module.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
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

    def __init__(self, module: torch.jit.ScriptModule, *, fuse_attention: bool = False,
                 attention_score_budget: int | None = None, depthwise_as_sums: bool = False,
                 convolutions_as_2d: bool = False) -> None:
        super().__init__()
        graph = module.inlined_graph
        attentions = _materialised_attentions(graph) if fuse_attention else []
        fused_at = {attention.output_node: attention for attention in attentions}
        replaced = {node for attention in attentions for node in attention.nodes}
        self.fused_attentions = len(attentions)
        self.attention_score_budget = attention_score_budget
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
            if node in replaced and node not in fused_at:
                continue  # a step of a materialised attention, run fused at its last node
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
            if node in fused_at:
                attention = fused_at[node]
                operands = [arg(v) for v in (attention.query, attention.key_t, attention.value)]
                run: Callable[..., Any] = (
                    _fused_attention if attention_score_budget is None
                    else partial(_sliced_attention, score_budget=attention_score_budget))
                self._steps.append(_Step(partial(run, scale=attention.scale,
                                                 causal=attention.causal,
                                                 channels_first=attention.channels_first),
                                         tuple(operands), (), out))
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
                run = (partial(_convolution, op, sums=depthwise_as_sums,
                               as_2d=convolutions_as_2d)
                       if kind == "aten::_convolution" and (depthwise_as_sums
                                                            or convolutions_as_2d)
                       else partial(_aten, op))
                self._steps.append(_Step(run, args, kwargs, out))
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


def _convolution(op: Callable[..., Any], input: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], transposed: bool, output_padding: Sequence[int],
                 groups: int, *backend: Any, sums: bool, as_2d: bool) -> torch.Tensor:
    """``aten::_convolution``, a depthwise one whose kernel tiles its input as a sum of strided
    slices (``sums``) and a factorised 3-D one as a 2-D one (``as_2d``): see the module
    docstring."""
    if sums and _tiles(input, weight, stride, padding, dilation, transposed, groups):
        return _depthwise_sum(input, weight, bias, stride)
    if as_2d and not transposed and input.dim() == 5:
        folded = _as_2d(input, weight, stride, padding, dilation)
        if folded is not None:
            x, w, stride_2d, padding_2d, dilation_2d, unfold = folded
            return unfold(torch.ops.aten.convolution.default(
                x, w, bias, stride_2d, padding_2d, dilation_2d, False, [0, 0], groups))
    return _aten(op, input, weight, bias, stride, padding, dilation, transposed, output_padding,
                 groups, *backend)


def _tiles(input: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int], transposed: bool,
           groups: int) -> bool:
    """Whether a convolution is depthwise with a kernel that tiles its input."""
    return (not transposed and weight.shape[1] == 1
            and groups == input.shape[1] == weight.shape[0]
            and list(stride) == list(weight.shape[2:]) and not any(padding)
            and all(d == 1 for d in dilation))


def _depthwise_sum(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: Sequence[int]) -> torch.Tensor:
    kernel = weight.shape[2:]
    channel = (-1,) + (1,) * len(kernel)  # a per-channel weight against [B, C, *spatial]
    counts = [size // step for size, step in zip(input.shape[2:], stride, strict=True)]
    total = None
    for offsets in itertools.product(*(range(size) for size in kernel)):
        strided = (slice(offset, offset + step * count, step)
                   for offset, step, count in zip(offsets, stride, counts, strict=True))
        window: tuple[Any, ...] = (slice(None), slice(None), *strided)
        tap: tuple[Any, ...] = (slice(None), 0, *offsets)
        term = input[window].float() * weight[tap].float().view(channel)
        total = term if total is None else total + term
    assert total is not None
    if bias is not None:
        total = total + bias.float().view(channel)
    return total.to(input.dtype)


def _as_2d(input: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int]) -> tuple[Any, ...] | None:
    """A 3-D convolution over ``[B, C, T, H, W]`` that is one over each frame (kernel depth 1)
    or one over time at each position (kernel 1 × 1 in space) as a 2-D convolution: the input
    and weight it takes, its stride, padding and dilation, and the function that turns its
    output back into ``[B, C', T', H', W']``; None for other kernels. Frames go into the
    batch, positions into the width: views, when the tensors are laid out channels-last."""
    batch, _, frames, height, width = input.shape
    if weight.shape[2] == 1 and stride[0] == 1 and padding[0] == 0:
        x = input.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B·T, C, H, W]

        def frames_back(out: torch.Tensor) -> torch.Tensor:
            return out.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)

        return (x, weight[:, :, 0], list(stride[1:]), list(padding[1:]), list(dilation[1:]),
                frames_back)
    if (weight.shape[3] == weight.shape[4] == 1 and list(stride[1:]) == [1, 1]
            and not any(padding[1:])):
        x = input.flatten(3, 4)  # [B, C, T, H·W]

        def positions_back(out: torch.Tensor) -> torch.Tensor:
            return out.unflatten(3, (height, width))

        return (x, weight[..., 0], [stride[0], 1], [padding[0], 0], [dilation[0], 1],
                positions_back)
    return None


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


@dataclass(frozen=True)
class _MaterialisedAttention:
    """Attention a graph computes with materialised scores (see the module docstring).

    ``query`` is ``[B, L, C]`` and ``key_t`` ``[B, C, S]`` (the two operands of the scores'
    product); ``value`` is ``[B, S, C]``, or ``[B, C, S]`` when ``channels_first`` (the graph
    then multiplies the values by the transposed weights and its result is ``[B, C, L]``).
    """

    query: Any
    key_t: Any
    value: Any
    scale: float
    causal: bool
    channels_first: bool
    nodes: frozenset[Any]
    output_node: Any


def _fused_attention(query: torch.Tensor, key_t: torch.Tensor, value: torch.Tensor, *,
                     scale: float, causal: bool, channels_first: bool) -> torch.Tensor:
    """What a :class:`_MaterialisedAttention` computes, as one fused attention (one head)."""
    if channels_first:
        value = value.transpose(1, 2)
    attended = F.scaled_dot_product_attention(
        query.unsqueeze(1), key_t.transpose(1, 2).unsqueeze(1), value.unsqueeze(1),
        is_causal=causal, scale=scale).squeeze(1)
    return attended.transpose(1, 2) if channels_first else attended


def _sliced_attention(query: torch.Tensor, key_t: torch.Tensor, value: torch.Tensor, *,
                      scale: float, causal: bool, channels_first: bool,
                      score_budget: int) -> torch.Tensor:
    """What a :class:`_MaterialisedAttention` computes, computed the same way (products and a
    softmax), a slice of the batch at a time: no slice holds more than ``score_budget`` scores
    (at least one batch item per slice)."""
    batch, length, _ = query.shape
    step = max(1, score_budget // (length * key_t.shape[2]))
    outputs = []
    for start in range(0, batch, step):
        rows = slice(start, start + step)
        scores = torch.bmm(query[rows], key_t[rows]) * scale
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores).tril() == 0, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        outputs.append(torch.bmm(value[rows], weights.transpose(1, 2)) if channels_first
                       else torch.bmm(weights, value[rows]))
    return torch.cat(outputs)


def _constant(value: Any) -> Any:
    """The constant ``value`` holds (a list built of constants included), or
    ``_NOT_CONSTANT``."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        items = [_constant(item) for item in node.inputs()]
        return _NOT_CONSTANT if any(i is _NOT_CONSTANT for i in items) else items
    if node.kind() != "prim::Constant":
        return _NOT_CONSTANT
    constant = value.toIValue()
    if isinstance(constant, torch.Tensor):
        return constant.item() if constant.dim() == 0 else _NOT_CONSTANT
    return constant


_NOT_CONSTANT = object()


def _only_user(value: Any) -> Any:
    """The node that reads ``value``, if exactly one node reads it (else None)."""
    users = {use.user for use in value.uses()}
    return users.pop() if len(users) == 1 else None


def _materialised_attentions(graph: Any) -> list[_MaterialisedAttention]:
    """Every materialised attention in ``graph`` whose intermediate tensors nothing else
    reads (so that dropping them is safe)."""
    found = []
    for softmax in graph.nodes():
        if softmax.kind() == "aten::softmax":
            attention = _match_attention(softmax)
            if attention is not None:
                found.append(attention)
    return found


def _match_attention(softmax: Any) -> _MaterialisedAttention | None:
    """The attention around ``softmax``, matched backwards to the scores' product and forwards
    to the product with the values; None where any step differs from that pattern."""
    scores, dim, dtype = list(softmax.inputs())
    if _constant(dim) not in (2, -1) or _constant(dtype) is not None:
        return None
    nodes = {softmax}
    causal = scores.node().kind() == "aten::masked_fill"
    if causal:  # scores.masked_fill(tril(ones_like(scores)) == 0, -inf)
        fill = scores.node()
        scores, condition, value = list(fill.inputs())
        if _constant(value) != float("-inf"):
            return None
        equal = condition.node()
        if equal.kind() != "aten::eq" or _constant(equal.inputsAt(1)) != 0:
            return None
        lower = equal.inputsAt(0).node()
        if lower.kind() != "aten::tril" or _constant(lower.inputsAt(1)) != 0:
            return None
        ones = lower.inputsAt(0).node()
        if ones.kind() != "aten::ones_like" or ones.inputsAt(0) is not scores:
            return None
        _, dtype, layout, device, pin_memory, memory_format = list(ones.inputs())
        if any(_constant(v) is not None for v in (dtype, layout, device, memory_format)) \
                or _constant(pin_memory) not in (None, False):
            return None  # ones of another dtype or layout than the scores
        nodes |= {fill, equal, lower, ones}
        if {use.user for use in scores.uses()} != {fill, ones}:
            return None
    elif _only_user(scores) is not softmax:
        return None
    scaling = scores.node()
    if scaling.kind() != "aten::mul":
        return None
    product, factor = list(scaling.inputs())
    scale = _constant(factor)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        return None
    scores_product = product.node()
    if scores_product.kind() != "aten::bmm" or _only_user(product) is not scaling:
        return None
    nodes |= {scaling, scores_product}
    weights = softmax.output()
    user = _only_user(weights)
    if user is None:
        return None
    channels_first = user.kind() == "aten::permute"
    if channels_first:  # bmm(values [B, C, S], weights.permute(0, 2, 1))
        if _constant(user.inputsAt(1)) != [0, 2, 1]:
            return None
        nodes.add(user)
        weights, user = user.output(), _only_user(user.output())
        if user is None or user.kind() != "aten::bmm" or user.inputsAt(1) is not weights:
            return None
        value = user.inputsAt(0)
    else:  # bmm(weights, values [B, S, C])
        if user.kind() != "aten::bmm" or user.inputsAt(0) is not weights:
            return None
        value = user.inputsAt(1)
    nodes.add(user)
    return _MaterialisedAttention(
        query=scores_product.inputsAt(0), key_t=scores_product.inputsAt(1), value=value,
        scale=float(scale), causal=causal, channels_first=channels_first,
        nodes=frozenset(nodes), output_node=user)
