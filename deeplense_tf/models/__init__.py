"""Models: the name -> builder registry, layers, encoders and heads.

    from deeplense_tf.models import build_model, MODEL_NAMES, make_losses
    model = build_model("resnet", (64, 64, 1), ["log10_m_axion_ev"], crop=48)
    model.compile("adamw", loss=make_losses("gaussian", ["log10_m_axion_ev"]))

See `registry` for the layer naming rule (`image`, `preprocess`, ..., `embedding`,
heads) and `heads` for the output conventions.

Adding an architecture is one new file in this folder whose builder carries one
`register(...)` call (builder, search space, tiny test options, int8 rule): every module
here is imported with the package, so the CLI, the tuner, the tests and the export see
it without another edit.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from deeplense_tf.models.batchnorm import batchnorm_layers, reestimate_batchnorm_statistics
from deeplense_tf.models.heads import (
    HEADS,
    LOG_VAR_LIMIT,
    POINT_LOSSES,
    GaussianNLL,
    SoftClipLogVariance,
    make_losses,
    make_metrics,
    split_gaussian,
)
from deeplense_tf.models.layers import (
    AddPositionEmbedding,
    FoldedTimeDistributed,
    ImagePreprocess,
    PatchSequence,
    PolarUnwrap,
)
from deeplense_tf.models.registry import (
    MODEL_NAMES,
    Architecture,
    build_model,
    embedding_model,
    encoder_layers,
    get_architecture,
    head_layers,
    int8_float_layer_names,
    model_options,
    register,
    set_encoder_trainable,
    tiny_options,
    unregister,
)

__all__ = [
    "HEADS",
    "LOG_VAR_LIMIT",
    "MODEL_NAMES",
    "POINT_LOSSES",
    "AddPositionEmbedding",
    "Architecture",
    "FoldedTimeDistributed",
    "GaussianNLL",
    "ImagePreprocess",
    "PatchSequence",
    "PolarUnwrap",
    "SoftClipLogVariance",
    "batchnorm_layers",
    "build_model",
    "embedding_model",
    "encoder_layers",
    "get_architecture",
    "head_layers",
    "int8_float_layer_names",
    "make_losses",
    "make_metrics",
    "model_options",
    "reestimate_batchnorm_statistics",
    "register",
    "set_encoder_trainable",
    "split_gaussian",
    "tiny_options",
    "unregister",
]

# Import every module of the package so each architecture file's `register` call runs
# (in name order, which is MODEL_NAMES's order).
for _module in sorted(info.name for info in _pkgutil.iter_modules(__path__)):
    _importlib.import_module(f"{__name__}.{_module}")
