"""`cnn`: a plain VGG-style CNN baseline.

`blocks` stages of `convs_per_block` x (3x3 conv - BatchNorm - ReLU), each stage
doubling the filters (`width`, 2*width, ...) and halving the resolution with a
2x2 max-pool between stages, then global average pooling. Default: 4 stages,
32..256 filters, about 1.2M parameters; a 48 px crop ends at 6x6, a 150 px
image at 18x18.
"""

from __future__ import annotations

import keras

from deeplense_tf.models.registry import register, require, spatial_size


@register(
    "cnn",
    # depth = blocks (each halves the image and doubles the filters), width = filters of
    # the first block.
    aliases={"depth": "blocks"},
    search_space={"depth": {"values": [3, 2, 4]}, "width": {"values": [32, 16, 64]}},
    tiny={"width": 4, "blocks": 2},
)
def build_cnn(
    x, *, width: int = 32, blocks: int = 4, convs_per_block: int = 2, bn_momentum: float = 0.95
):
    """Plain CNN encoder: preprocessed image `[B, h, w, c]` -> pooled features `[B, width * 2**(blocks-1)]`.

    `bn_momentum` 0.95 (Keras default 0.99): at high learning rates the moving
    statistics otherwise lag the weights and inference-mode error is several times
    the training-mode error.
    """
    require(isinstance(width, int) and width > 0, "cnn", "width", width, "a positive integer")
    require(isinstance(blocks, int) and blocks > 0, "cnn", "blocks", blocks, "a positive integer")
    require(
        isinstance(convs_per_block, int) and convs_per_block > 0,
        "cnn",
        "convs_per_block",
        convs_per_block,
        "a positive integer",
    )
    require(0.0 < bn_momentum < 1.0, "cnn", "bn_momentum", bn_momentum, "in (0, 1)")
    for block in range(blocks):
        filters = width * 2**block
        for conv in range(convs_per_block):
            name = f"cnn_block{block}_conv{conv}"
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        # Pool between stages only while there is something left to pool.
        if block < blocks - 1 and spatial_size(x) >= 2:
            x = keras.layers.MaxPooling2D(2, name=f"cnn_block{block}_pool")(x)
    return keras.layers.GlobalAveragePooling2D(name="cnn_pool")(x)
