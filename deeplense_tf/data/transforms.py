"""Image normalisations as pure tensor functions.

Used by the tf.data pipeline and by the `ImagePreprocess` model layer (so exported
models take raw pixels). Each takes a float32 batch `[B, H, W, C]` and returns a
float32 batch; none of them looks at other images in the batch.
"""

from __future__ import annotations

import math

import tensorflow as tf

NORMALIZATIONS = ("none", "standardize", "minmax", "asinh", "peak_asinh")

_EPS = 1e-8


def _per_image_max(x):
    return tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)


def _per_image_min(x):
    return tf.reduce_min(x, axis=[1, 2, 3], keepdims=True)


def standardize(x):
    """Zero mean, unit variance per image (flat images map to zeros)."""
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    std = tf.math.reduce_std(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) / tf.maximum(std, _EPS)


def minmax(x):
    """Scale each image to [0, 1]."""
    lo, hi = _per_image_min(x), _per_image_max(x)
    return (x - lo) / tf.maximum(hi - lo, _EPS)


def asinh(z):
    """asinh in ops TFLite has as builtins (`tf.math.asinh` lowers to a Flex op).

    sign(z) * log(|z| + sqrt(z^2 + 1)) avoids the cancellation of the naive form for z < 0.
    """
    a = tf.abs(z)
    return tf.sign(z) * tf.math.log(a + tf.sqrt(a * a + 1.0))


def asinh_stretch(x, softening=0.02):
    """asinh(x / (softening * peak)) / asinh(1 / softening): lifts the faint arcs and tails."""
    scale = softening * tf.maximum(_per_image_max(tf.abs(x)), _EPS)
    return asinh(x / scale) / math.asinh(1.0 / softening)


def peak_asinh(x):
    """Two channels: the image divided by its peak, and its asinh stretch."""
    peak = tf.maximum(_per_image_max(tf.abs(x)), _EPS)
    return tf.concat([x / peak, asinh_stretch(x)], axis=-1)


def output_channels(method: str, input_channels: int = 1) -> int:
    return 2 * input_channels if method == "peak_asinh" else input_channels


def normalize_images(x, method: str):
    """Apply the named normalisation to a batch `[B, H, W, C]`."""
    x = tf.cast(x, tf.float32)
    if method == "none":
        return x
    if method == "standardize":
        return standardize(x)
    if method == "minmax":
        return minmax(x)
    if method == "asinh":
        return asinh_stretch(x)
    if method == "peak_asinh":
        return peak_asinh(x)
    raise ValueError(f"unknown normalization {method!r}; choose from {', '.join(NORMALIZATIONS)}")


def center_crop(x, size: int | None):
    """Crop a batch `[B, H, W, C]` to its central `size` x `size` pixels (no-op for None)."""
    if not size:
        return x
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError("center_crop needs a static image size")
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the image ({height}x{width})")
    top, left = (height - size) // 2, (width - size) // 2
    return x[:, top : top + size, left : left + size, :]
