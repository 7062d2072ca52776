"""Cut a functional model at a named layer: the one copy, for clustering, export and runs.

`cut_model(model)` is `image -> embedding` (the encoder's pooled feature vector, a layer
named `embedding` in every model of `deeplense_tf.models`), sharing the model's layers
and weights. Any other layer works too, by its name or, inside a nested functional
model (an ensemble's members), as `outer/inner`; `layer_names(model)` lists them.

With `pooling` the output becomes one vector per example, for clustering:

- rank 2 `[B, D]`: used as is;
- rank 3 `[B, T, C]` (a sequence) and rank 4/5 `[B, H, W, C]` (feature maps): averaged over
  every axis except the batch and the last (`"mean"`, global average pooling), or their
  maximum (`"max"`); `"flatten"` keeps every value when the flat size is known (and at
  most `max_flat_features`);
- a rank-1 or non-float output is refused.

A layer with several outputs (tuple, list, dict) is refused either way. Errors are
`ConfigError`s naming the layer and, for an unknown one, the valid names.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.errors import ConfigError

EMBEDDING_LAYER = "embedding"
POOLINGS = ("mean", "max", "flatten")


def layer_names(model) -> list[str]:
    """Names usable as `layer`: top-level layers, then `outer/inner` for nested models."""
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if _is_functional(layer):
            names.extend(f"{layer.name}/{inner}" for inner in layer_names(layer))
    return names


def _is_functional(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and hasattr(layer, "get_layer")


def _find_layer_output(model, name: str):
    """Symbolic output of layer `name` expressed in terms of `model.inputs` (None: no such layer)."""
    top = {layer.name: layer for layer in model.layers}
    if name in top:
        return _single_output(top[name], name)
    # A nested functional model: `outer/inner`, or a bare inner name when it is unique.
    if "/" in name:
        outer_name, inner_name = name.split("/", 1)
        candidates = [(top[outer_name], inner_name)] if outer_name in top else []
    else:
        candidates = [
            (layer, name)
            for layer in model.layers
            if _is_functional(layer) and name in layer_names(layer)
        ]
    if len(candidates) != 1:
        return None
    outer, inner_name = candidates[0]
    if not _is_functional(outer) or inner_name not in layer_names(outer):
        return None
    nodes = getattr(outer, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        raise ConfigError(
            f"layer {name!r} is inside sub-model {outer.name!r}, which is called "
            f"{len(nodes)} times or with several inputs; choose a top-level layer"
        )
    import keras

    inner_out = _find_layer_output(outer, inner_name)
    cut = keras.Model(outer.inputs[0], inner_out, name=f"{outer.name}_cut")
    return cut(nodes[0].input_tensors[0])


def _single_output(layer, name: str):
    try:
        out = layer.output
    except (AttributeError, ValueError) as err:
        raise ConfigError(f"layer {name!r} has no single output ({err})") from err
    if isinstance(out, (list, tuple, dict)):
        raise ConfigError(
            f"layer {name!r} has {len(out)} outputs; choose a layer with one tensor output"
        )
    return out


def _pool(out, name: str, pooling: str, max_flat_features: int | None):
    import keras

    rank = len(out.shape)
    dtype = str(out.dtype)
    if "float" not in dtype:
        raise ConfigError(f"layer {name!r} outputs {dtype}, not floating-point features")
    if rank < 2:
        raise ConfigError(f"layer {name!r} outputs shape {tuple(out.shape)}: no feature axis")
    if rank == 2:
        return out
    if pooling == "flatten":
        flat = out.shape[1:]
        if any(d is None for d in flat):
            raise ConfigError(
                f"layer {name!r} output {tuple(out.shape)} has unknown sizes and cannot "
                "be flattened; use pooling='mean'"
            )
        size = int(np.prod(flat))
        if max_flat_features is not None and size > max_flat_features:
            raise ConfigError(
                f"layer {name!r} output {tuple(out.shape)} flattens to {size} features "
                f"(more than {max_flat_features}); use pooling='mean' or a deeper layer"
            )
        return keras.layers.Flatten(name="embedding_flatten")(out)
    reduce = keras.ops.mean if pooling == "mean" else keras.ops.max
    axes = tuple(range(1, rank - 1))
    return keras.layers.Lambda(lambda t: reduce(t, axis=axes), name="embedding_pool")(out)


def cut_model(model, layer: str | None = None, pooling: str | None = None, *,
              max_flat_features: int | None = None):
    """A `keras.Model` from `model`'s inputs to the output of `layer` (default `embedding`).

    Args:
        model: a functional Keras model.
        layer: a name from `layer_names(model)`.
        pooling: None keeps the layer's output as it is; `"mean"`, `"max"` or
            `"flatten"` make it one vector `[B, D]` per example (see the module doc).
        max_flat_features: the largest `"flatten"` output allowed (None: no limit).

    The model is named `<model>_<layer>` and shares `model`'s layers and weights.
    """
    import keras

    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    name = layer or EMBEDDING_LAYER
    out = _find_layer_output(model, name)
    if out is None:
        raise ConfigError(
            f"model {model.name!r} has no layer {name!r}; valid layer names: "
            f"{', '.join(layer_names(model))}"
        )
    if pooling is not None:
        out = _pool(out, name, pooling, max_flat_features)
    # A single input passed as itself (not a one-element list) matches how callers feed it.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, out, name=f"{model.name}_{name.replace('/', '_')}")
