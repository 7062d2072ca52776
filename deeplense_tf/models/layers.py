"""Custom Keras layers shared by the architectures.

Every layer here is registered under the package name "deeplense", stores each
constructor argument as an attribute and returns it from `get_config()`, so a
saved `.keras` file reloads with `keras.saving.load_model(path)` alone. They use
only ops that TFLite has as builtins (gather, reshape, transpose, reduce_max,
log, sqrt ...), so every model built from them converts without Flex ops.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.data import transforms

_PACKAGE = "deeplense"

@keras.saving.register_keras_serializable(package=_PACKAGE)
class ImagePreprocess(keras.layers.Layer):
    """Raw pixels `[B, H, W, C]` -> per-image normalisation -> centre crop.

    The normalisation statistics (peak, mean, std) are taken over the crop, the pixels
    the network sees. Output channels are
    `transforms.output_channels(normalization, C)` (two per input channel for
    `peak_asinh`: image / peak and its asinh stretch). Computes in float32 whatever
    the global dtype policy: the stretch divides by the per-image peak.

    Args:
        normalization: one of `transforms.NORMALIZATIONS`.
        crop: side of the centre crop in pixels, or None for the full image.
    """

    def __init__(self, normalization: str = "peak_asinh", crop: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if normalization not in transforms.NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {normalization!r}; choose from "
                f"{', '.join(transforms.NORMALIZATIONS)}"
            )
        self.normalization = normalization
        self.crop = int(crop) if crop else None

    def call(self, images):
        x = tf.cast(images, tf.float32)
        if not self.crop:
            return transforms.normalize_images(x, self.normalization)
        # Normalise every pixel with the crop window's statistics, then crop: the numbers
        # of crop-then-normalise, but no slice touches the raw pixels. Full-int8 TFLite
        # quantises a slice together with the raw input, and 8 bits spread over the bright
        # ring erase the faint arcs; float arithmetic first keeps the stretch in float.
        window = transforms.window_mask(x.shape[1], x.shape[2], self.crop)
        x = transforms.normalize_images(x, self.normalization, window=window)
        return transforms.center_crop(x, self.crop)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        if self.crop:
            height = width = self.crop
        return (batch, height, width, transforms.output_channels(self.normalization, channels))

    def get_config(self):
        config = super().get_config()
        config.update({"normalization": self.normalization, "crop": self.crop})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AddPositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding `[1, N, D]` to a token sequence `[B, N, D]`.

    Args:
        stddev: standard deviation of the truncated-normal initialiser.
    """

    def __init__(self, stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.stddev = float(stddev)

    def build(self, input_shape):
        _, tokens, dim = input_shape
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(1, tokens, dim),
            initializer=keras.initializers.TruncatedNormal(stddev=self.stddev),
        )

    def call(self, tokens):
        return tokens + tf.cast(self.position_embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["stddev"] = self.stddev
        return config


def polar_grid(
    height: int,
    width: int,
    *,
    steps: int,
    angles_per_step: int,
    radii: int,
    max_radius: float | None = None,
    center: tuple[float, float] | None = None,
):
    """Bilinear sampling tables for a polar unwrap of a `height` x `width` image.

    Sample `(s, j, a)` lies at angle `theta = 2*pi*(s*angles_per_step + a) / (steps*angles_per_step)`
    (counter-clockwise as the image is displayed, rows pointing down, 0 = +column
    direction) and radius `(j + 0.5) * max_radius / radii` pixels from `center`
    (row, column; default the image centre `((H-1)/2, (W-1)/2)`).

    Returns `(indices, weights)`, both `[4, steps*radii*angles_per_step]`: flat pixel
    indices `row*width + col` of the four neighbours and their bilinear weights.
    Samples outside the image are clamped to its edge.
    """
    cy, cx = center if center is not None else ((height - 1) / 2.0, (width - 1) / 2.0)
    if max_radius is None:
        max_radius = min(cy, cx, height - 1 - cy, width - 1 - cx)
    n_angles = steps * angles_per_step
    step, ring, within = np.meshgrid(
        np.arange(steps), np.arange(radii), np.arange(angles_per_step), indexing="ij"
    )
    theta = 2.0 * np.pi * (step * angles_per_step + within) / n_angles
    radius = (ring + 0.5) * max_radius / radii
    rows = np.clip(cy - radius * np.sin(theta), 0.0, height - 1.0).ravel()
    cols = np.clip(cx + radius * np.cos(theta), 0.0, width - 1.0).ravel()
    # Snap values within float noise of an integer so that a rotation by 90 degrees
    # (which maps the grid onto itself) picks the same neighbours.
    rows = np.where(np.abs(rows - np.round(rows)) < 1e-9, np.round(rows), rows)
    cols = np.where(np.abs(cols - np.round(cols)) < 1e-9, np.round(cols), cols)
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
    wr, wc = rows - r0, cols - c0
    indices = np.stack([r0 * width + c0, r0 * width + c1, r1 * width + c0, r1 * width + c1])
    weights = np.stack([(1 - wr) * (1 - wc), (1 - wr) * wc, wr * (1 - wc), wr * wc])
    return indices.astype(np.int32), weights.astype(np.float32)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolarUnwrap(keras.layers.Layer):
    """Image `[B, H, W, C]` -> sequence of angular wedges `[B, steps, radii, angles_per_step, C]`.

    Bilinear sampling on a polar grid around `center` (see `polar_grid`); the angle
    is the time axis. An Einstein ring centred on the grid becomes a row that is
    constant along the sequence, and rotating the image by 90 degrees about the
    centre rolls the sequence by `steps / 4` (exactly, up to float rounding, when
    `steps` is divisible by 4: the rotated grid lands on the same pixels).

    The sampling tables are constants derived from the arguments and the static
    image size, so the layer has no weights; it is a gather plus a weighted sum,
    both TFLite builtins.

    Args:
        steps: sequence length (number of wedges around the circle).
        angles_per_step: angular samples inside one wedge.
        radii: radial samples from the centre out to `max_radius`.
        max_radius: outermost radius in pixels; None = the largest circle inside the image.
        center: (row, column) of the unwrap centre in pixels; None = the image centre.
    """

    def __init__(
        self,
        steps: int = 16,
        angles_per_step: int = 4,
        radii: int = 24,
        max_radius: float | None = None,
        center: tuple[float, float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.steps = int(steps)
        self.angles_per_step = int(angles_per_step)
        self.radii = int(radii)
        self.max_radius = None if max_radius is None else float(max_radius)
        self.center = None if center is None else tuple(float(c) for c in center)

    def build(self, input_shape):
        _, height, width, _ = input_shape
        if height is None or width is None:
            raise ValueError("PolarUnwrap needs a static image size")
        indices, weights = polar_grid(
            height,
            width,
            steps=self.steps,
            angles_per_step=self.angles_per_step,
            radii=self.radii,
            max_radius=self.max_radius,
            center=self.center,
        )
        self._indices = indices
        self._weights = weights[..., None]  # broadcast over channels

    def call(self, images):
        _, height, width, channels = images.shape
        flat = tf.reshape(images, [-1, height * width, channels])
        samples = tf.gather(flat, self._indices, axis=1)  # [B, 4, N, C]
        weights = tf.constant(self._weights, dtype=samples.dtype)
        values = tf.reduce_sum(samples * weights, axis=1)  # [B, N, C]
        return tf.reshape(values, [-1, self.steps, self.radii, self.angles_per_step, channels])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.steps, self.radii, self.angles_per_step, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "steps": self.steps,
                "angles_per_step": self.angles_per_step,
                "radii": self.radii,
                "max_radius": self.max_radius,
                "center": None if self.center is None else list(self.center),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchSequence(keras.layers.Layer):
    """Image `[B, H, W, C]` -> raster sequence of patches `[B, gh*gw, p, p, C]`.

    `gh = H // p`, `gw = W // p`; patches are taken from the central `gh*p` x `gw*p`
    region in row-major order (left to right, then top to bottom).

    Args:
        patch_size: side `p` of a square patch in pixels.
    """

    def __init__(self, patch_size: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def _grid(self, height, width):
        return height // self.patch_size, width // self.patch_size

    def call(self, images):
        _, height, width, channels = images.shape
        p = self.patch_size
        gh, gw = self._grid(height, width)
        top, left = (height - gh * p) // 2, (width - gw * p) // 2
        x = images[:, top : top + gh * p, left : left + gw * p, :]
        x = tf.reshape(x, [-1, gh, p, gw, p, channels])
        x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
        return tf.reshape(x, [-1, gh * gw, p, p, channels])

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        gh, gw = self._grid(height, width)
        return (batch, gh * gw, self.patch_size, self.patch_size, channels)

    def get_config(self):
        config = super().get_config()
        config["patch_size"] = self.patch_size
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FoldedTimeDistributed(keras.layers.TimeDistributed):
    """`TimeDistributed` that folds time into the batch: `[B, T, ...] -> [B*T, ...] -> layer`.

    Keras 3's `TimeDistributed` calls the wrapped layer once per time step in a
    Python loop when T is static: T copies of the frame CNN in the graph (slow to
    trace, large TFLite files) and BatchNorm statistics per step instead of over
    all frames. Folding calls the layer once, on every frame of the batch. The
    reshapes use static inner sizes and -1 for the batch, so they stay TFLite
    builtins with a dynamic batch. Takes the same arguments as `TimeDistributed`.
    """

    def call(self, inputs, training=None, mask=None):
        steps, frame = inputs.shape[1], tuple(inputs.shape[2:])
        if steps is None or None in frame:
            return super().call(inputs, training=training, mask=mask)
        takes_training = getattr(self.layer, "_call_has_training_arg", True)
        kwargs = {"training": training} if takes_training else {}
        outputs = self.layer(tf.reshape(inputs, (-1, *frame)), **kwargs)
        return tf.reshape(outputs, (-1, steps, *outputs.shape[1:]))
