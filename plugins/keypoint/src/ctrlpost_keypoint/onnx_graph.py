"""Small ONNX graphs written straight in protobuf's wire format (no ``onnx`` package needed).

What :mod:`ctrlpost_keypoint.tiny_models` and the tests build their stand-in models with, and
no more: float32 and int64 initialisers, nodes of the default domain with int / ints attributes,
float inputs and outputs with fixed or named (dynamic) dimensions, one opset. Field numbers are
those of ``onnx.proto`` (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
ValueInfoProto, TypeProto, TensorShapeProto, OperatorSetIdProto); onnxruntime reads the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IR_VERSION = 8
OPSET = 13
_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_ATTR_INT, _ATTR_INTS = 2, 7  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def tensor(name: str, array: np.ndarray) -> bytes:
    """A TensorProto initialiser (float32 or int64)."""
    kind = _INT64 if array.dtype.kind in "iu" else _FLOAT
    data = np.ascontiguousarray(array, dtype="<i8" if kind == _INT64 else "<f4")
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, kind) + _bytes(8, name) + _bytes(9, data.tobytes())


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: int | list[int]
         ) -> bytes:
    """A NodeProto of the default domain."""
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    body += _bytes(4, op)
    for name, value in attrs.items():
        if isinstance(value, list):
            attr = _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)
        else:
            attr = _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)
        body += _bytes(5, attr)
    return body


def value_info(name: str, dims: Sequence[int | str]) -> bytes:
    """A float tensor's ValueInfoProto; a str dimension is a named (dynamic) one."""
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d))
                     for d in dims)
    tensor_type = _int(1, _FLOAT) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(nodes: Sequence[bytes], initializers: dict[str, np.ndarray],
          inputs: Sequence[bytes], outputs: Sequence[bytes]) -> bytes:
    """The serialised ModelProto of one graph."""
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "tiny")
    graph += b"".join(_bytes(5, tensor(k, v)) for k, v in initializers.items())
    graph += b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs)
    opset = _bytes(1, "") + _int(2, OPSET)
    producer = _bytes(2, "ctrlpost-keypoint")
    return _int(1, IR_VERSION) + producer + _bytes(7, graph) + _bytes(8, opset)

