"""numpy arrays <-> TensorProtos for the gRPC server and client, the fast way for numbers.

`tf.make_tensor_proto` and `tf.make_ndarray` take 17-35 us each for a 64x64 image on this
project's 2-core machine, where building the proto from the array's bytes takes 2-9 us;
a gRPC request makes four such conversions. Numeric arrays travel as ``tensor_content``
(little-endian bytes, as TensorFlow writes them); anything else (strings, protos that
carry ``float_val`` lists) goes through TensorFlow's own functions.
"""

from __future__ import annotations

import sys

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_ENUMS = {
    np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.float16): types_pb2.DT_HALF, np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.int16): types_pb2.DT_INT16, np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64, np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.uint16): types_pb2.DT_UINT16, np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64, np.dtype(np.bool_): types_pb2.DT_BOOL,
}
_DTYPES = {enum: dtype for dtype, enum in _ENUMS.items()}
_LITTLE_ENDIAN = sys.byteorder == "little"


def to_tensor_proto(value) -> tensor_pb2.TensorProto:
    """A TensorProto holding `value` (exactly its dtype and shape)."""
    arr = np.asarray(value)
    enum = _ENUMS.get(arr.dtype)
    if enum is None or not _LITTLE_ENDIAN:
        import tensorflow as tf

        return tf.make_tensor_proto(arr)
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_content=np.ascontiguousarray(arr).tobytes())
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape)
    return proto


def to_array(proto, writable: bool = True) -> np.ndarray:
    """The array a TensorProto holds (TensorFlow's rules for anything but tensor_content).

    `writable=False` may return a read-only view of the proto's bytes (no copy).
    """
    dtype = _DTYPES.get(proto.dtype)
    if dtype is not None and proto.tensor_content and _LITTLE_ENDIAN:
        shape = [d.size for d in proto.tensor_shape.dim]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize == len(proto.tensor_content):
            arr = np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
            return arr.copy() if writable else arr
    import tensorflow as tf

    return tf.make_ndarray(proto)
