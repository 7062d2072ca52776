"""Lens-safe random views of an image batch, for self-supervised pretraining.

A joint-embedding objective (`deeplense pretrain`, `deeplense_tf.models.vicreg`) learns
what two views of one lens share, so a view may change only what the physics does not
depend on. Three changes qualify, and nothing else is offered:

- a D4 element (rotation by a multiple of 90 degrees, reflection): the lensing physics and
  the substructure class are invariant under it;
- PSF blur: a Gaussian of random width, as instruments and seeing differ;
- detector noise: Gaussian pixel noise of random level, added after the blur (the order in
  a detector).

Crops, zooms, rescales, resizes and shifts are refused by name (`check_view_options`): they
change the apparent Einstein radius and the ring's position in the frame, which are what
the encoder must keep, so the two views would disagree on the physics.

`make_view(images, seed, ...)` is a pure function of tensors (eager and inside a
`tf.function` alike) with a stateless seed, so a view is a function of (seed, images).
"""

from __future__ import annotations

from deeplense_tf.errors import ConfigError

#: The view options and their defaults (`pretrain.views` in a pretraining config).
VIEW_OPTIONS = {
    "d4": True,  # a random D4 element per image and view
    "blur_sigma_px": 1.0,  # Gaussian PSF blur, sigma drawn uniformly in [0, this] pixels
    "noise_std": 0.1,  # Gaussian noise, std drawn in [0, this] x the image's own pixel std
}

#: Options a user might reach for that are not lens-safe, and why.
UNSAFE_VIEW_OPTIONS = {
    name: "it changes the apparent Einstein radius (and where the ring sits in the frame)"
    for name in ("crop", "random_crop", "resized_crop", "zoom", "scale", "rescale", "resize",
                 "shift", "translate", "translation")
}

# Blur widths below this are the identity (the Gaussian's neighbours underflow to 0).
_MIN_SIGMA_PX = 1e-3


def check_view_options(options, where: str = "pretrain.views") -> dict:
    """The view options with defaults filled in; ConfigError for an unsafe or unknown one.

    `options`: a mapping of `VIEW_OPTIONS` keys. An unsafe option (`UNSAFE_VIEW_OPTIONS`)
    is refused with the reason, whatever its value.
    """
    if options is None:
        options = {}
    if not hasattr(options, "items"):
        raise ConfigError(f"{where} must be a mapping of view options, got {options!r}")
    out = dict(VIEW_OPTIONS)
    for key, value in options.items():
        if key in UNSAFE_VIEW_OPTIONS:
            raise ConfigError(
                f"{where}.{key} is not a lens-safe view: {UNSAFE_VIEW_OPTIONS[key]}; the views "
                f"are D4 elements, PSF blur and detector noise ({', '.join(VIEW_OPTIONS)})"
            )
        if key not in VIEW_OPTIONS:
            raise ConfigError(
                f"{where}.{key} is not a view option; choose from {', '.join(VIEW_OPTIONS)}"
            )
        if key == "d4":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.d4 must be true or false, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"{where}.{key} must be a number >= 0, got {value!r}")
            value = float(value)
        out[key] = value
    return out


def gaussian_blur_matrices(sigma_px, size: int):
    """`[B, size, size]` matrices `G` with `G @ row` blurring a 1-D profile by a Gaussian of
    width `sigma_px[b]` pixels.

    Each entry is the Gaussian weight of the pixel distance, divided by the weights' sum
    over every distance the image can have, so flux blurred past the edge is lost (as at
    the edge of a cut-out) and the interior keeps its flux. Matrices rather than a
    convolution because each image has its own width and the batch size is dynamic.
    """
    import tensorflow as tf

    sigma = tf.maximum(tf.cast(tf.reshape(sigma_px, [-1, 1, 1]), tf.float32), _MIN_SIGMA_PX)
    index = tf.range(size, dtype=tf.float32)
    distance = index[:, None] - index[None, :]  # [size, size]
    weights = tf.exp(-0.5 * tf.square(distance[None] / sigma))
    offsets = tf.range(-(size - 1), size, dtype=tf.float32)
    norm = tf.reduce_sum(tf.exp(-0.5 * tf.square(offsets[None, None, :] / sigma)), -1, keepdims=True)
    return weights / norm


def blur(images, sigma_px):
    """Images `[B, H, W, C]` blurred by a Gaussian PSF of `sigma_px[b]` pixels each."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.float32)
    rows = gaussian_blur_matrices(sigma_px, images.shape[1] or tf.shape(images)[1])
    cols = gaussian_blur_matrices(sigma_px, images.shape[2] or tf.shape(images)[2])
    # out[b, i, l, c] = sum_jk rows[b, i, j] * x[b, j, k, c] * cols[b, l, k]
    return tf.einsum("bij,bjkc,blk->bilc", rows, images, cols)


def make_view(images, seed, *, d4: bool = True, blur_sigma_px: float = 0.0, noise_std: float = 0.0):
    """One random lens-safe view of each image of a batch.

    Args:
        images: raw pixels `[B, H, W, C]` float32 (the model normalises inside its graph).
        seed: a stateless seed, int `[2]`; the same seed and images give the same view.
        d4: apply a random D4 element per image (90-degree rotations need square images).
        blur_sigma_px: PSF blur width drawn uniformly in `[0, blur_sigma_px]` pixels per image.
        noise_std: noise level drawn uniformly in `[0, noise_std]` per image, in units of
            that image's pixel standard deviation (so it means the same in any units).

    Returns:
        The views, `[B, H, W, C]` float32, in this order: D4 element, blur, noise.
    """
    import tensorflow as tf

    from deeplense_tf.data import augment

    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    out = images
    if d4:
        ids = augment.random_element_ids(batch, augment.D4_ELEMENTS, seeds[0])
        out = augment.transform_images_by_id(out, ids)
    if blur_sigma_px > 0:
        sigma = tf.random.stateless_uniform([batch], seeds[1], 0.0, float(blur_sigma_px))
        out = blur(out, sigma)
    if noise_std > 0:
        level = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2], 0.0, float(noise_std))
        scale = tf.math.reduce_std(out, axis=[1, 2, 3], keepdims=True)
        out = out + level * scale * tf.random.stateless_normal(tf.shape(out), seeds[3])
    return out
