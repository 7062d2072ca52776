"""`vit`: a small vision transformer with an optional convolutional stem (hybrid).

- Patches: a `patch_size` x `patch_size` strided conv embeds non-overlapping
  patches into `dim` channels. Default patch size: the smallest of 4, 5, 6, 8, 10,
  12, 15, 16 that leaves at most 16 x 16 = 256 tokens: 4 px for 48 and 64 px
  inputs (12x12 and 16x16 tokens), 10 px for 150 px Model I images (15x15).
- `hybrid=True` (default) puts two 3x3 conv - BatchNorm - GELU layers at full
  resolution in front of the patch embedding. Pure ViTs need far more than the
  tens of thousands of images a lensing set has; a conv stem gives the locality
  prior back (Xiao et al. 2021, "Early convolutions help transformers see better").
- Learned position embedding (`AddPositionEmbedding`), no class token: tokens are
  mean-pooled after a final LayerNorm.
- Pre-norm blocks: x + MHA(LN(x)); x + MLP(LN(x)) with GELU. Default dim 128,
  depth 6, 4 heads, MLP ratio 2: about 0.9M parameters.
All ops convert to TFLite builtins (MultiHeadAttention's einsums lower to batch
matmuls, GELU is a builtin).
"""

from __future__ import annotations

import keras

from deeplense_tf.models.layers import AddPositionEmbedding
from deeplense_tf.models.registry import register, require, spatial_size

_PATCH_CANDIDATES = (4, 5, 6, 8, 10, 12, 15, 16)
MAX_GRID = 16


def default_patch_size(size: int) -> int:
    """Smallest candidate patch size leaving at most `MAX_GRID` patches per side."""
    for patch in _PATCH_CANDIDATES:
        if size // patch <= MAX_GRID:
            return patch
    return -(-size // MAX_GRID)


def _transformer_block(x, dim, heads, mlp_ratio, attention_dropout, name):
    y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    y = keras.layers.MultiHeadAttention(
        heads, dim // heads, dropout=attention_dropout, name=f"{name}_attention"
    )(y, y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    y = keras.layers.Dense(dim * mlp_ratio, activation="gelu", name=f"{name}_mlp1")(y)
    y = keras.layers.Dense(dim, name=f"{name}_mlp2")(y)
    return keras.layers.Add(name=f"{name}_add2")([x, y])


@register(
    "vit",
    # depth = transformer blocks, width = token width (`dim`), attention heads.
    aliases={"width": "dim"},
    search_space={
        "depth": {"min": 2, "max": 8, "step": 2, "default": 6},
        "width": {"values": [128, 64, 192]},
        "heads": {"values": [4, 2]},
    },
    tiny={"dim": 16, "depth": 1, "heads": 2, "patch_size": 8},
)
def build_vit(
    x,
    *,
    patch_size: int | None = None,
    dim: int = 128,
    depth: int = 6,
    heads: int = 4,
    mlp_ratio: int = 2,
    hybrid: bool = True,
    attention_dropout: float = 0.0,
    bn_momentum: float = 0.95,
):
    """ViT encoder: preprocessed image `[B, h, w, c]` -> pooled token features `[B, dim]`.

    Args:
        patch_size: patch side in pixels; None picks one from the image size.
        dim: token width. depth: transformer blocks. heads: attention heads (divides dim).
        mlp_ratio: MLP hidden width / dim.
        hybrid: conv stem before the patch embedding.
        attention_dropout: dropout on attention weights.
        bn_momentum: BatchNorm momentum in the conv stem.
    """
    size = spatial_size(x)
    if patch_size is None:
        patch_size = default_patch_size(size)
    require(
        isinstance(patch_size, int) and 1 <= patch_size <= size,
        "vit",
        "patch_size",
        patch_size,
        f"an integer between 1 and the image size {size}",
    )
    require(isinstance(dim, int) and dim > 0, "vit", "dim", dim, "a positive integer")
    require(
        isinstance(heads, int) and heads > 0 and dim % heads == 0,
        "vit",
        "heads",
        heads,
        f"a positive divisor of dim={dim}",
    )
    require(isinstance(depth, int) and depth > 0, "vit", "depth", depth, "a positive integer")
    require(
        isinstance(mlp_ratio, int) and mlp_ratio > 0,
        "vit",
        "mlp_ratio",
        mlp_ratio,
        "a positive integer",
    )
    require(
        0.0 <= attention_dropout < 1.0, "vit", "attention_dropout", attention_dropout, "in [0, 1)"
    )
    require(0.0 < bn_momentum < 1.0, "vit", "bn_momentum", bn_momentum, "in (0, 1)")

    if hybrid:
        for i, filters in enumerate((max(dim // 4, 8), max(dim // 2, 8))):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"vit_stem{i}_conv"
            )(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"vit_stem{i}_bn")(x)
            x = keras.layers.Activation("gelu", name=f"vit_stem{i}_gelu")(x)
    x = keras.layers.Conv2D(
        dim, patch_size, strides=patch_size, padding="valid", name="vit_patch_embed"
    )(x)
    x = keras.layers.Reshape((x.shape[1] * x.shape[2], dim), name="vit_tokens")(x)
    x = AddPositionEmbedding(name="vit_position")(x)
    for i in range(depth):
        x = _transformer_block(x, dim, heads, mlp_ratio, attention_dropout, f"vit_block{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="vit_final_ln")(x)
    return keras.layers.GlobalAveragePooling1D(name="vit_pool")(x)
