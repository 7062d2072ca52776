"""`cnn_lstm`: read the image as a sequence, encode each frame with a CNN, summarise with an LSTM.

Design. A strong lens is close to rotationally symmetric about the lens centre:
the source is stretched into an Einstein ring, and dark substructure shows up as
local kinks and brightness changes along that ring (an axion vortex is a line
through the centre, so it perturbs the ring at two opposite angles). Reading the
image as a sequence *around* the centre makes that geometry explicit:

- `view="polar"` (default): `PolarUnwrap` samples the image bilinearly on a polar
  grid about the image centre (where our simulations put the lens) and cuts it
  into `steps` angular wedges, each a small 2D frame of `radii` x
  `angles_per_step` samples (radius x angle). The angle is the time axis, so an
  Einstein ring is a periodic sequence whose frames all look alike, a substructure
  perturbation is an event at some step, and rotating the image about the centre
  is a cyclic shift of the sequence (by exactly `steps/4` for 90 degrees when
  `steps` is divisible by 4). Default 16 wedges x 4 angles, radii out to the
  largest inscribed circle with about one sample per pixel (at most 32).
- `view="raster"`: `PatchSequence` cuts the image into non-overlapping
  `patch_size` x `patch_size` patches read in raster order (the classic
  CNN-LSTM for images; patch size = ceil(size / 8), an 8x8 = 64-step sequence
  for 48 and 64 px inputs).

Each frame goes through the same small CNN (`FoldedTimeDistributed`, a
`TimeDistributed` that folds time into the batch, over a `Sequential`
named `frame_encoder`: three 3x3 conv - BatchNorm - ReLU layers, 2x pooling along
any frame axis of at least 4 samples, then flatten + dense, so the radial position
of a feature is kept rather than averaged away). The per-frame features feed an
LSTM, bidirectional by default: the polar sequence has no natural start, and each
wedge should see both neighbours. The final hidden state (both directions
concatenated) is the embedding.

TFLite: the LSTMs are built with `unroll=True`, so the converter sees a fixed
chain of matmuls and element-wise ops (builtins) instead of a `While` loop over
a `TensorList`, which needs Flex ops with a dynamic batch and crashes full-int8
calibration. Unrolling is cheap here because the sequences are short (16-64
steps) and their length is static.
"""

from __future__ import annotations

import math

import keras

from deeplense_tf.models.layers import FoldedTimeDistributed, PatchSequence, PolarUnwrap
from deeplense_tf.models.registry import register, require, spatial_size

VIEWS = ("polar", "raster")
MAX_RADII = 32
RASTER_GRID = 8


def _frame_encoder(frame_shape, width, features, bn_momentum) -> keras.Sequential:
    """Small CNN for one frame `[fh, fw, c]` -> `[features]`."""
    layers = [keras.Input(shape=frame_shape)]
    fh, fw = frame_shape[0], frame_shape[1]
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}"),
            keras.layers.BatchNormalization(momentum=bn_momentum, name=f"bn{i}"),
            keras.layers.ReLU(name=f"relu{i}"),
        ]
        pool = (2 if fh >= 4 else 1, 2 if fw >= 4 else 1)
        if i < 2 and pool != (1, 1):
            layers.append(keras.layers.MaxPooling2D(pool, name=f"pool{i}"))
            fh, fw = fh // pool[0], fw // pool[1]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(features, activation="relu", name="features"),
    ]
    return keras.Sequential(layers, name="frame_encoder")


@register(
    "cnn_lstm",
    # depth = stacked LSTM layers, width = filters of the frame CNN, LSTM units.
    aliases={"depth": "lstm_layers"},
    search_space={
        "depth": {"values": [1, 2]},
        "width": {"values": [32, 16]},
        "lstm_units": {"values": [128, 64]},
    },
    tiny={"steps": 8, "angles_per_step": 2, "radii": 8, "width": 4, "frame_features": 8,
          "lstm_units": 8},
)
def build_cnn_lstm(
    x,
    *,
    view: str = "polar",
    steps: int = 16,
    angles_per_step: int = 4,
    radii: int | None = None,
    max_radius: float | None = None,
    patch_size: int | None = None,
    width: int = 32,
    frame_features: int = 128,
    lstm_units: int = 128,
    lstm_layers: int = 1,
    bidirectional: bool = True,
    bn_momentum: float = 0.95,
):
    """CNN-LSTM encoder: preprocessed image `[B, h, w, c]` -> `[B, lstm_units * (2 if bidirectional else 1)]`.

    Args:
        view: "polar" (angle as time) or "raster" (patches in raster order).
        steps, angles_per_step, radii, max_radius: the polar grid (`PolarUnwrap`);
            radii None = about one per pixel out to the inscribed circle, at most 32.
        patch_size: raster patch side in pixels; None = ceil(size / 8).
        width: filters of the frame CNN's first conv (then 2x, 4x).
        frame_features: per-frame feature size fed to the LSTM.
        lstm_units, lstm_layers, bidirectional: the recurrent part (always unrolled).
        bn_momentum: BatchNorm momentum in the frame CNN.
    """
    size = spatial_size(x)
    require(view in VIEWS, "cnn_lstm", "view", view, " or ".join(VIEWS))
    for option, value in (
        ("steps", steps),
        ("angles_per_step", angles_per_step),
        ("width", width),
        ("frame_features", frame_features),
        ("lstm_units", lstm_units),
        ("lstm_layers", lstm_layers),
    ):
        require(
            isinstance(value, int) and value > 0, "cnn_lstm", option, value, "a positive integer"
        )
    require(0.0 < bn_momentum < 1.0, "cnn_lstm", "bn_momentum", bn_momentum, "in (0, 1)")

    if view == "polar":
        require(
            max_radius is None or 0 < max_radius, "cnn_lstm", "max_radius", max_radius, "positive"
        )
        outer = max_radius if max_radius is not None else (size - 1) / 2.0
        if radii is None:
            radii = int(min(MAX_RADII, max(4, round(outer))))
        require(
            isinstance(radii, int) and radii > 0, "cnn_lstm", "radii", radii, "a positive integer"
        )
        x = PolarUnwrap(steps, angles_per_step, radii, max_radius, name="polar_unwrap")(x)
    else:
        if patch_size is None:
            patch_size = math.ceil(size / RASTER_GRID)
        require(
            isinstance(patch_size, int) and 1 <= patch_size <= size,
            "cnn_lstm",
            "patch_size",
            patch_size,
            f"an integer between 1 and the image size {size}",
        )
        x = PatchSequence(patch_size, name="patch_sequence")(x)

    encoder = _frame_encoder(tuple(x.shape[2:]), width, frame_features, bn_momentum)
    x = FoldedTimeDistributed(encoder, name="frames")(x)
    for i in range(lstm_layers):
        lstm = keras.layers.LSTM(
            lstm_units, return_sequences=i < lstm_layers - 1, unroll=True, name=f"lstm{i}"
        )
        if bidirectional:
            lstm = keras.layers.Bidirectional(lstm, name=f"bilstm{i}")
        x = lstm(x)
    return x
