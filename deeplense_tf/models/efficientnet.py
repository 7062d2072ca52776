"""`efficientnet`: the `keras.applications` EfficientNetV2 family as an encoder.

Built with `weights=None`, `include_top=False`, `pooling="avg"` and
`include_preprocessing=False` (its own rescaling to ImageNet statistics is off: our
`ImagePreprocess` already normalised the image), on our channel count (2 for
`peak_asinh`) rather than RGB. The application's layers are built directly into
our graph (`input_tensor`), not nested as a sub-model, so `encoder_layers`,
freezing and intermediate-layer clustering see each of them by name.

EfficientNetV2 downsamples by 32 and needs at least 32 px: smaller crops are
upsampled bilinearly to reach that (`upsample` raises the factor further; a 48 px
crop ends at 2x2, upsampled x2 at 3x3). Its BatchNorm momentum is set to
`bn_momentum` (default 0.95, see `resnet`); stochastic depth (drop-connect 0.2) is
the application's. About 5.9M parameters for B0.
"""

from __future__ import annotations

import math

import keras

from deeplense_tf.models.registry import register, require, spatial_size

_VARIANTS = {
    "b0": keras.applications.EfficientNetV2B0,
    "b1": keras.applications.EfficientNetV2B1,
    "b2": keras.applications.EfficientNetV2B2,
    "b3": keras.applications.EfficientNetV2B3,
    "s": keras.applications.EfficientNetV2S,
    "m": keras.applications.EfficientNetV2M,
    "l": keras.applications.EfficientNetV2L,
}

MIN_SIZE = 32


@register(
    "efficientnet",
    # The EfficientNetV2 variant scales depth and width together.
    search_space={"variant": {"values": ["b0", "b1", "b2"]}},
    tiny={"variant": "b0"},
)
def build_efficientnet(x, *, variant: str = "b0", upsample: int = 1, bn_momentum: float = 0.95):
    """EfficientNetV2 encoder: preprocessed image `[B, h, w, c]` -> pooled features `[B, D]`.

    Args:
        variant: b0 | b1 | b2 | b3 | s | m | l.
        upsample: integer bilinear upsampling factor before the network (raised
            automatically so the input reaches 32 px).
        bn_momentum: momentum of every BatchNorm in the network.
    """
    require(variant in _VARIANTS, "efficientnet", "variant", variant, " | ".join(_VARIANTS))
    require(
        isinstance(upsample, int) and upsample >= 1,
        "efficientnet",
        "upsample",
        upsample,
        "an integer >= 1",
    )
    require(0.0 < bn_momentum < 1.0, "efficientnet", "bn_momentum", bn_momentum, "in (0, 1)")
    factor = max(upsample, math.ceil(MIN_SIZE / spatial_size(x)))
    if factor > 1:
        x = keras.layers.UpSampling2D(
            factor, interpolation="bilinear", name="efficientnet_upsample"
        )(x)
    backbone = _VARIANTS[variant](
        include_top=False,
        weights=None,
        input_tensor=x,
        pooling="avg",
        include_preprocessing=False,
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    return backbone.output
