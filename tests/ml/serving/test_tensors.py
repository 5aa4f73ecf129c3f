"""TensorProto parsing follows `Tensor::FromProto`; responses use typed fields."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from ml.serving.server.tensors import TensorParseError, ndarray_to_proto, proto_to_ndarray


def _proto(dtype: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


@pytest.mark.parametrize(
    "value",
    [
        np.array([[1.5, -2.0]], np.float32),
        np.array([1, 2, 3], np.int64),
        np.array([1, 2], np.int32),
        np.array([0.25], np.float64),
        np.array([True, False]),
        np.array([b"a", b"\xff"], dtype=object),
        np.array([1.5], np.float16),
    ],
)
def test_round_trip_matches_tensorflow(value: np.ndarray):
    parsed = proto_to_ndarray(tf.make_tensor_proto(value))
    written = ndarray_to_proto(
        value,
        tf.dtypes.as_dtype(value.dtype).as_datatype_enum
        if value.dtype != object
        else types_pb2.DT_STRING,
    )

    np.testing.assert_array_equal(parsed, value)
    np.testing.assert_array_equal(tf.make_ndarray(written), value)
    assert not written.tensor_content


def test_fewer_typed_values_than_the_shape_repeat_the_last_one():
    proto = _proto(types_pb2.DT_FLOAT, [4], float_val=[1.0, 2.0])

    assert proto_to_ndarray(proto).tolist() == [1.0, 2.0, 2.0, 2.0]
    assert proto_to_ndarray(_proto(types_pb2.DT_FLOAT, [2])).tolist() == [0.0, 0.0]


def test_tensor_content_of_the_wrong_size_and_invalid_dtypes_do_not_parse():
    with pytest.raises(TensorParseError):
        proto_to_ndarray(_proto(types_pb2.DT_FLOAT, [3], tensor_content=b"\x00" * 4))
    with pytest.raises(TensorParseError):
        proto_to_ndarray(_proto(types_pb2.DT_INVALID, [1]))
    unknown_rank = _proto(types_pb2.DT_FLOAT, [])
    unknown_rank.tensor_shape.unknown_rank = True
    with pytest.raises(TensorParseError):
        proto_to_ndarray(unknown_rank)
