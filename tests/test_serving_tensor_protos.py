"""deeplense_tf/serving/tensor_protos.py: the fast conversions give TensorFlow's answers."""

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf.serving.tensor_protos import to_array, to_tensor_proto


@pytest.mark.parametrize("value", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1) / 7, np.array([1.5, -2.0]),
    np.array([[1, 2]], np.int64), np.array([True, False]), np.float32(3.25),
    np.zeros((0, 3), np.float32), np.array([1, 2], np.uint8), np.array([0.5], np.float16),
])
def test_round_trip_matches_tensorflow(value):
    proto = to_tensor_proto(value)
    theirs = tf.make_ndarray(proto)  # TensorFlow reads our proto ...
    assert theirs.dtype == np.asarray(value).dtype and theirs.shape == np.shape(value)
    np.testing.assert_array_equal(theirs, value)
    ours = to_array(tf.make_tensor_proto(value))  # ... and we read TensorFlow's
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, value)
    assert ours.flags.writeable  # clients hand these to users


def test_value_lists_and_strings_take_tensorflows_path():
    broadcast = tf.make_tensor_proto(0.5, shape=[2, 2])  # one float_val for four elements
    np.testing.assert_array_equal(to_array(broadcast), np.full((2, 2), 0.5, np.float32))
    strings = to_tensor_proto(np.array([b"a", b"bc"], dtype=object))
    assert to_array(strings).tolist() == [b"a", b"bc"]
    read_only = to_array(to_tensor_proto(np.ones(3, np.float32)), writable=False)
    assert not read_only.flags.writeable
