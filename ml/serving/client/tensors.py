"""TensorProto in and out, with nothing but protobuf: no numpy, no TensorFlow.

Requests use the typed fields (`string_val`, `float_val`, `int_val`), as TF Serving's own clients
do. Answers are read from the typed fields or from `tensor_content` (TF Serving writes the former;
other servers and `tf.make_tensor_proto` write the latter for numbers).
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from typing import Any, TypeAlias

from ml.serving.client.errors import ModelResponseError
from ml.serving.client.protos import tensor_pb2, types_pb2

# The classes are built at run time (see protos.py), so type checkers see them as Any.
Tensor: TypeAlias = Any
TensorProto = tensor_pb2.TensorProto
PAD = ""
_DT_STRING = types_pb2.DT_STRING
_DT_FLOAT = types_pb2.DT_FLOAT


def _empty(into: Tensor | None, dtype: int) -> Tensor:
    """`into` (e.g. `request.inputs["history"]`, filled in place: no copy) or a new tensor."""
    tensor = TensorProto() if into is None else into
    tensor.Clear()
    tensor.dtype = dtype
    return tensor


def string_matrix(rows: Sequence[Sequence[str]], width: int, into: Tensor | None = None) -> Tensor:
    """DT_STRING [len(rows), width], each row right-padded with ""."""
    tensor = _empty(into, types_pb2.DT_STRING)
    tensor.tensor_shape.dim.add(size=len(rows))
    tensor.tensor_shape.dim.add(size=width)
    values = tensor.string_val
    pad = PAD.encode()
    for row in rows:
        values.extend([value.encode() for value in row])
        if len(row) < width:
            values.extend([pad] * (width - len(row)))
    return tensor


def float_matrix(rows: Sequence[Sequence[float]], width: int, into: Tensor | None = None) -> Tensor:
    """DT_FLOAT [len(rows), width], each row right-padded with 0.0."""
    tensor = _empty(into, types_pb2.DT_FLOAT)
    tensor.tensor_shape.dim.add(size=len(rows))
    tensor.tensor_shape.dim.add(size=width)
    values = tensor.float_val
    for row in rows:
        values.extend(row)
        if len(row) < width:
            values.extend([0.0] * (width - len(row)))
    return tensor


def string_vector(values: Sequence[str], into: Tensor | None = None) -> Tensor:
    tensor = _empty(into, types_pb2.DT_STRING)
    tensor.tensor_shape.dim.add(size=len(values))
    tensor.string_val.extend([value.encode() for value in values])
    return tensor


def int32_scalar(value: int, into: Tensor | None = None) -> Tensor:
    tensor = _empty(into, types_pb2.DT_INT32)
    tensor.tensor_shape.SetInParent()  # a scalar: shape present, no dims
    tensor.int_val.append(value)
    return tensor


def shape_of(tensor: Tensor) -> tuple[int, ...]:
    shape = tensor.tensor_shape
    if shape.unknown_rank:
        raise ModelResponseError("tensor of unknown rank in the response")
    return tuple([dim.size for dim in shape.dim[:]])


def _count(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _fill(values: list, count: int, default: object) -> list:
    """TF's rule for typed fields: fewer values than elements repeat the last one."""
    if len(values) == count:
        return values
    if len(values) > count:
        raise ModelResponseError(f"tensor holds {len(values)} values for {count} elements")
    if not values:
        return [default] * count
    return values + [values[-1]] * (count - len(values))


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if offset >= len(data):
            raise ModelResponseError("truncated tensor_content")
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7


def _strings_from_content(content: bytes, count: int) -> list[bytes]:
    """TensorFlow's string tensor_content: `count` varint lengths, then the bytes back to back."""
    lengths = []
    offset = 0
    for _ in range(count):
        length, offset = _read_varint(content, offset)
        lengths.append(length)
    values = []
    for length in lengths:
        values.append(content[offset : offset + length])
        offset += length
    if offset != len(content):
        raise ModelResponseError("tensor_content size does not match its string lengths")
    return values


def read_strings(tensor: Tensor) -> tuple[tuple[int, ...], list[str]]:
    """(shape, values in row-major order) of a DT_STRING tensor, decoded as UTF-8."""
    if tensor.dtype != _DT_STRING:
        raise ModelResponseError(f"expected DT_STRING, got {types_pb2.DataType.Name(tensor.dtype)}")
    shape = shape_of(tensor)
    count = _count(shape)
    content = tensor.tensor_content
    if content:
        raw = _strings_from_content(content, count)
    else:
        raw = tensor.string_val[:]  # one list: iterating the container is slower
        if len(raw) != count:
            raw = _fill(raw, count, b"")
    try:
        return shape, [value.decode() for value in raw]
    except UnicodeDecodeError as error:
        raise ModelResponseError(f"item id is not UTF-8: {error}") from None


_CONTENT_TYPECODES = {types_pb2.DT_FLOAT: "f", types_pb2.DT_DOUBLE: "d"}


def read_floats(tensor: Tensor) -> tuple[tuple[int, ...], list[float]]:
    """(shape, values in row-major order) of a DT_FLOAT or DT_DOUBLE tensor."""
    dtype = tensor.dtype
    typecode = _CONTENT_TYPECODES.get(dtype)
    if typecode is None:
        raise ModelResponseError(f"expected DT_FLOAT, got {types_pb2.DataType.Name(dtype)}")
    shape = shape_of(tensor)
    count = _count(shape)
    content = tensor.tensor_content
    if content:
        values: array.array[float] = array.array(typecode)  # type: ignore[assignment]
        if len(content) != count * values.itemsize:
            raise ModelResponseError("tensor_content size does not match the tensor's shape")
        values.frombytes(content)
        if sys.byteorder != "little":  # TensorFlow writes little-endian
            values.byteswap()
        return shape, values.tolist()
    typed = (tensor.float_val if dtype == _DT_FLOAT else tensor.double_val)[:]
    return shape, typed if len(typed) == count else _fill(typed, count, 0.0)
