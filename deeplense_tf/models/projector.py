"""The pretraining model: a registry encoder with a projector MLP in place of the heads.

    model = build_pretrain_model("resnet", (64, 64, 1), projector=(256, 256), crop=48)
    model(images)        # [B, 256] projections, what the VICReg loss compares

`image -> preprocess -> encoder -> embedding -> projector_*  -> projection`. Everything up
to `embedding` is built by `build_model` itself, so its layers have the names (and weight
shapes) of the same architecture's regressor: a regressor initialised from this model
(`training.init_from`) copies them by name, and `deeplense cluster` cuts it at `embedding`
as it cuts a regressor. The projector (Dense -> BatchNorm -> ReLU per hidden width, then
a Dense named `projection`) exists only for the loss: features for clustering and
fine-tuning are the embedding before it, as in VICReg and SimCLR, where the projector's
output is the more view-invariant and the less informative one.
"""

from __future__ import annotations

import keras

from deeplense_tf.errors import ConfigError
from deeplense_tf.models.cut import EMBEDDING_LAYER, cut_model

PROJECTION_OUTPUT = "projection"
# The head build_model needs before the cut; it is not part of the pretraining model.
_UNUSED_TARGET = "unused"


def check_projector(widths) -> tuple[int, ...]:
    """The projector widths as a tuple; ConfigError unless a non-empty list of ints >= 1."""
    if (
        not isinstance(widths, list | tuple)
        or not widths
        or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    ):
        raise ConfigError(f"pretrain.projector must be a list of widths >= 1, got {widths!r}")
    return tuple(int(w) for w in widths)


def build_pretrain_model(name: str, input_shape, *, projector=(256, 256),
                         normalization: str = "peak_asinh", crop: int | None = None,
                         **options) -> keras.Model:
    """The encoder of architecture `name` (as `build_model` builds it) with a projector.

    Args:
        name, input_shape, normalization, crop, options: as for `build_model`.
        projector: the widths of the projector's layers; the last is the projection's.

    Returns:
        A `keras.Model` named `name`: input `image` (raw pixels), output `projection`
        `[B, projector[-1]]` float32, with a layer `embedding` (the encoder's features).
    """
    from deeplense_tf.models.registry import build_model

    widths = check_projector(projector)
    full = build_model(name, input_shape, [_UNUSED_TARGET], head="point",
                       normalization=normalization, crop=crop, **options)
    encoder = cut_model(full, EMBEDDING_LAYER)
    x = encoder.outputs[0]
    for index, width in enumerate(widths[:-1]):
        x = keras.layers.Dense(width, name=f"projector_dense_{index}")(x)
        x = keras.layers.BatchNormalization(name=f"projector_norm_{index}")(x)
        x = keras.layers.ReLU(name=f"projector_relu_{index}")(x)
    projection = keras.layers.Dense(widths[-1], name=PROJECTION_OUTPUT, dtype="float32")(x)
    return keras.Model(encoder.inputs[0], projection, name=name)
