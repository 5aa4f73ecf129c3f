"""TensorProto <-> numpy, with TensorFlow's own parsing rules and typed output fields.

Requests are parsed like `tensorflow::Tensor::FromProto`: `tensor_content` must hold exactly the
shape's bytes; typed fields may hold fewer values than the shape (the last one is repeated, none
means zeros) or more (the rest is ignored). Responses use typed fields (`AsProtoField`), as TF
Serving's Predict does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

_NUMPY_DTYPES: dict[int, Any] = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_COMPLEX64: np.complex64,
    types_pb2.DT_COMPLEX128: np.complex128,
    types_pb2.DT_STRING: object,
}

_TYPED_FIELDS: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
    types_pb2.DT_STRING: "string_val",
}

# `tensorflow::DataTypeString`, the names TF Serving's messages use.
_DTYPE_NAMES: dict[int, str] = {
    types_pb2.DT_INVALID: "INVALID",
    types_pb2.DT_FLOAT: "float",
    types_pb2.DT_DOUBLE: "double",
    types_pb2.DT_INT32: "int32",
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_INT16: "int16",
    types_pb2.DT_INT8: "int8",
    types_pb2.DT_STRING: "string",
    types_pb2.DT_COMPLEX64: "complex64",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_BOOL: "bool",
    types_pb2.DT_QINT8: "qint8",
    types_pb2.DT_QUINT8: "quint8",
    types_pb2.DT_QINT32: "qint32",
    types_pb2.DT_BFLOAT16: "bfloat16",
    types_pb2.DT_UINT16: "uint16",
    types_pb2.DT_COMPLEX128: "complex128",
    types_pb2.DT_HALF: "half",
    types_pb2.DT_RESOURCE: "resource",
    types_pb2.DT_VARIANT: "variant",
    types_pb2.DT_UINT32: "uint32",
    types_pb2.DT_UINT64: "uint64",
}


class TensorParseError(ValueError):
    """The proto does not describe a valid tensor (TF Serving: `tensor parsing error`)."""


def dtype_name(dtype: int) -> str:
    if dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def numpy_dtype(dtype: int) -> Any:
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise TensorParseError(f"unsupported dtype {dtype_name(dtype)}") from None


def _shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise TensorParseError("unknown rank")
    dims = tuple(int(dim.size) for dim in shape.dim)
    if any(size < 0 for size in dims):
        raise TensorParseError("negative dimension")
    return dims


def proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Parse a request tensor; raises TensorParseError where `Tensor::FromProto` fails."""
    dtype = proto.dtype
    np_dtype = numpy_dtype(dtype)
    dims = _shape_of(proto)
    count = 1
    for size in dims:
        count *= size
    if proto.tensor_content and dtype != types_pb2.DT_STRING:
        expected = count * np.dtype(np_dtype).itemsize
        if len(proto.tensor_content) != expected:
            raise TensorParseError("tensor_content size does not match the shape")
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(dims)
    field = _TYPED_FIELDS[dtype]
    values = getattr(proto, field)
    if dtype == types_pb2.DT_STRING:
        flat = np.empty(count, dtype=object)
        given = list(values[:count]) if len(values) > count else list(values)
        if count:
            if not given:
                given = [b""]
            flat[: len(given)] = given
            if len(given) < count:
                flat[len(given) :] = given[-1]
        return flat.reshape(dims)
    if dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        pairs = np.asarray(values, dtype=np.float64)
        array = (pairs[0::2] + 1j * pairs[1::2]).astype(np_dtype)
    elif dtype == types_pb2.DT_HALF:
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype=np_dtype)
    given_count = array.shape[0]
    if given_count == count:
        return array.reshape(dims)
    if given_count == 0:
        return np.zeros(dims, dtype=np_dtype)
    if given_count > count:
        return array[:count].reshape(dims)
    padded = np.empty(count, dtype=np_dtype)
    padded[:given_count] = array
    padded[given_count:] = array[-1]
    return padded.reshape(dims)


def _set_shape(proto: tensor_pb2.TensorProto, shape: Sequence[int]) -> None:
    dims = proto.tensor_shape.dim
    for size in shape:
        dims.add().size = size


def ndarray_to_proto(
    array: Any, dtype: int, proto: tensor_pb2.TensorProto | None = None
) -> tensor_pb2.TensorProto:
    """Write `array` as a tensor of `dtype`, values in the typed field (`float_val`, ...)."""
    if proto is None:
        proto = tensor_pb2.TensorProto()
    if dtype not in _TYPED_FIELDS:
        raise TensorParseError(f"unsupported output dtype {dtype_name(dtype)}")
    array = np.asarray(array)
    proto.dtype = dtype
    _set_shape(proto, array.shape)
    flat = array.reshape(-1)
    field = getattr(proto, _TYPED_FIELDS[dtype])
    if dtype == types_pb2.DT_STRING:
        field.extend([value if isinstance(value, bytes) else str(value).encode() for value in flat])
    elif dtype == types_pb2.DT_HALF:
        field.extend(flat.astype(np.float16).view(np.uint16).tolist())
    elif dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        pairs = np.empty(flat.shape[0] * 2, dtype=np.float64)
        pairs[0::2] = flat.real
        pairs[1::2] = flat.imag
        field.extend(pairs.tolist())
    else:
        field.extend(flat.astype(_NUMPY_DTYPES[dtype], copy=False).tolist())
    return proto
