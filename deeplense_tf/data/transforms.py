"""Image normalisations as pure tensor functions.

Used by the tf.data pipeline and by the `ImagePreprocess` model layer (so exported
models take raw pixels). Each takes a float32 batch `[B, H, W, C]` and returns a
float32 batch; none of them looks at other images in the batch.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

NORMALIZATIONS = ("none", "standardize", "minmax", "asinh", "peak_asinh")

_EPS = 1e-8

# Every statistic below takes an optional `window`: a constant `[1, H, W, 1]` 0/1 mask
# (`window_mask`) restricting it to some pixels. The normalisation itself is still
# applied to every pixel, so normalising with a central window's statistics and then
# cropping gives the numbers of crop-then-normalise, while the raw pixels meet
# float-only arithmetic first (see `ImagePreprocess`).


def _crop_corner(height, width, size: int) -> tuple[int, int]:
    """Top-left pixel of the central `size` x `size` crop of an `height` x `width` image."""
    if height is None or width is None:
        raise ValueError("center_crop needs a static image size")
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the image ({height}x{width})")
    return (height - size) // 2, (width - size) // 2


def window_mask(height: int, width: int, size: int) -> np.ndarray:
    """`[1, H, W, 1]` float32: 1 on the central `size` x `size` pixels, 0 elsewhere."""
    top, left = _crop_corner(height, width, size)
    mask = np.zeros((1, height, width, 1), np.float32)
    mask[:, top : top + size, left : left + size, :] = 1.0
    return mask


def _per_image_max(x, window=None):
    if window is not None:
        x = tf.where(window > 0, x, tf.constant(-math.inf, x.dtype))
    return tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)


def _per_image_min(x, window=None):
    return -_per_image_max(-x, window)


def _per_image_mean(x, window=None):
    if window is None:
        return tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    count = tf.reduce_sum(window) * tf.cast(tf.shape(x)[-1], x.dtype)
    return tf.reduce_sum(x * window, axis=[1, 2, 3], keepdims=True) / count


def _per_image_peak(x, window=None):
    """max |x| (at least `_EPS`): |x| >= 0, so masking by multiplication is exact."""
    a = tf.abs(x)
    if window is not None:
        a = a * window
    return tf.maximum(tf.reduce_max(a, axis=[1, 2, 3], keepdims=True), _EPS)


def standardize(x, window=None):
    """Zero mean, unit variance per image (flat images map to zeros)."""
    mean = _per_image_mean(x, window)
    std = tf.sqrt(_per_image_mean(tf.square(x - mean), window))
    return (x - mean) / tf.maximum(std, _EPS)


def minmax(x, window=None):
    """Scale each image to [0, 1]."""
    lo, hi = _per_image_min(x, window), _per_image_max(x, window)
    return (x - lo) / tf.maximum(hi - lo, _EPS)


def asinh(z):
    """asinh in ops TFLite has as builtins (`tf.math.asinh` lowers to a Flex op).

    sign(z) * log(|z| + sqrt(z^2 + 1)) avoids the cancellation of the naive form for z < 0.
    """
    a = tf.abs(z)
    return tf.sign(z) * tf.math.log(a + tf.sqrt(a * a + 1.0))


def asinh_stretch(x, softening=0.02, window=None):
    """asinh(x / (softening * peak)) / asinh(1 / softening): lifts the faint arcs and tails."""
    scale = softening * _per_image_peak(x, window)
    return asinh(x / scale) / math.asinh(1.0 / softening)


def peak_asinh(x, window=None):
    """Two channels: the image divided by its peak, and its asinh stretch."""
    peak = _per_image_peak(x, window)
    return tf.concat([x / peak, asinh_stretch(x, window=window)], axis=-1)


def output_channels(method: str, input_channels: int = 1) -> int:
    return 2 * input_channels if method == "peak_asinh" else input_channels


def normalize_images(x, method: str, window=None):
    """Apply the named normalisation to a batch `[B, H, W, C]`.

    window: optional `window_mask` the per-image statistics are taken over.
    """
    x = tf.cast(x, tf.float32)
    if method == "none":
        return x
    if method == "standardize":
        return standardize(x, window)
    if method == "minmax":
        return minmax(x, window)
    if method == "asinh":
        return asinh_stretch(x, window=window)
    if method == "peak_asinh":
        return peak_asinh(x, window)
    raise ValueError(f"unknown normalization {method!r}; choose from {', '.join(NORMALIZATIONS)}")


def center_crop(x, size: int | None):
    """Crop a batch `[B, H, W, C]` to its central `size` x `size` pixels (no-op for None)."""
    if not size:
        return x
    top, left = _crop_corner(x.shape[1], x.shape[2], size)
    return x[:, top : top + size, left : left + size, :]
