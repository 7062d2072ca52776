"""`resnet`: ResNet-18/34 with basic blocks, its stem adapted to small images.

The published DeepLense regression winners were a ResNet34 (ImageNet init) and an
XResNet18; this builder reproduces both topologies so the comparison is fair:

- `depth` 18 -> stages of (2, 2, 2, 2) basic blocks, 34 -> (3, 4, 6, 3).
- `width` is the first stage's filters (the published nets use 64; the default 32
  gives a 2.8M-parameter ResNet-18, the size that reached 0.048 dex on Model II on
  this CPU budget). Stages use width x (1, 2, 4, 8) and strides (1, 2, 2, 2).
- `variant="resnet"`: 3x3 conv stem, 1x1 strided-conv shortcuts.
  `variant="xresnet"` (Bag of Tricks / fastai): three 3x3 convs in the stem,
  shortcuts that average-pool before their 1x1 conv (no information thrown away by
  a strided 1x1), and the last BatchNorm of each residual branch initialised to
  zero so every block starts as the identity.
- Stem: the ImageNet stem (7x7 stride-2 conv + max-pool, /4) would shrink a 48 px
  crop to 12 px before the first block and blur the sub-pixel vortex the axion mass
  hides in; here the stem keeps full resolution (`stem_stride` 1) for images up to
  80 px and halves it (stride 2, no max-pool) for larger ones such as 150 px
  Model I images. A 48 px crop ends at 6x6, a 64 px image at 8x8, 150 px at 10x10.
"""

from __future__ import annotations

import keras

from deeplense_tf.models.registry import register, require, spatial_size

_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_VARIANTS = ("resnet", "xresnet")


def _conv_bn(x, filters, kernel, stride, name, bn_momentum, relu=True, zero_gamma=False):
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(
        momentum=bn_momentum, gamma_initializer="zeros" if zero_gamma else "ones", name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters, stride, name, variant, bn_momentum):
    shortcut = x
    y = _conv_bn(x, filters, 3, stride, f"{name}_1", bn_momentum)
    y = _conv_bn(
        y, filters, 3, 1, f"{name}_2", bn_momentum, relu=False, zero_gamma=variant == "xresnet"
    )
    if stride != 1 or x.shape[-1] != filters:
        if variant == "xresnet":
            if stride != 1:
                shortcut = keras.layers.AveragePooling2D(
                    stride, strides=stride, padding="same", name=f"{name}_shortcut_pool"
                )(shortcut)
            shortcut = _conv_bn(
                shortcut, filters, 1, 1, f"{name}_shortcut", bn_momentum, relu=False
            )
        else:
            shortcut = _conv_bn(
                shortcut, filters, 1, stride, f"{name}_shortcut", bn_momentum, relu=False
            )
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


@register(
    "resnet",
    # depth 18 or 34, width = filters of the first stage, plain or xresnet stem.
    search_space={
        "depth": {"values": [18, 34]},
        "width": {"values": [32, 16, 64]},
        "variant": {"values": ["resnet", "xresnet"]},
    },
    tiny={"depth": 18, "width": 4},
)
def build_resnet(
    x,
    *,
    depth: int = 18,
    width: int = 32,
    variant: str = "resnet",
    stem_stride: int | None = None,
    bn_momentum: float = 0.95,
):
    """ResNet encoder: preprocessed image `[B, h, w, c]` -> pooled features `[B, 8 * width]`.

    Args:
        depth: 18 or 34.
        width: filters of the first stage.
        variant: "resnet" or "xresnet" (see the module docstring).
        stem_stride: 1 or 2; None = 1 for images up to 80 px, else 2.
        bn_momentum: BatchNorm moving-average momentum. 0.95 rather than Keras's 0.99:
            at high learning rates the moving statistics lag the weights, and the
            inference-mode error was five times the training-mode error.
    """
    require(depth in _STAGES, "resnet", "depth", depth, "18 or 34")
    require(isinstance(width, int) and width >= 2, "resnet", "width", width, "an integer >= 2")
    require(variant in _VARIANTS, "resnet", "variant", variant, " or ".join(_VARIANTS))
    require(stem_stride in (None, 1, 2), "resnet", "stem_stride", stem_stride, "1, 2 or null")
    require(0.0 < bn_momentum < 1.0, "resnet", "bn_momentum", bn_momentum, "in (0, 1)")
    if stem_stride is None:
        stem_stride = 1 if spatial_size(x) <= 80 else 2

    if variant == "xresnet":
        x = _conv_bn(x, max(width // 2, 1), 3, stem_stride, "stem1", bn_momentum)
        x = _conv_bn(x, max(width // 2, 1), 3, 1, "stem2", bn_momentum)
        x = _conv_bn(x, width, 3, 1, "stem3", bn_momentum)
    else:
        x = _conv_bn(x, width, 3, stem_stride, "stem", bn_momentum)

    for stage, blocks in enumerate(_STAGES[depth]):
        filters = width * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(
                x, filters, stride, f"stage{stage + 1}_block{block + 1}", variant, bn_momentum
            )
    return keras.layers.GlobalAveragePooling2D(name="resnet_pool")(x)
