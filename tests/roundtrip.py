"""Shared round-trip checks for Keras models and layers (import as `from roundtrip import ...`).

pytest puts `tests/` on `sys.path` (rootdir-relative "prepend" import mode, no
`tests/__init__.py`), so every test module can use these helpers:

- `assert_keras_roundtrip(model, inputs, tmp_path, atol)`: save as `.keras`, reload
  with `keras.saving.load_model(path)` alone (no custom_objects), same outputs.
- `assert_config_roundtrip(model, inputs, atol)`: rebuild from `get_config()`,
  copy the weights, same config and same outputs.
- `assert_layer_config_roundtrip(layer)`: `from_config(get_config())` gives the
  same config.
Outputs are compared in inference mode (`training=False`); dict outputs key by key.
"""

from __future__ import annotations

import copy
import json

import keras
import numpy as np


def _as_numpy(outputs):
    if isinstance(outputs, dict):
        return {key: keras.ops.convert_to_numpy(value) for key, value in outputs.items()}
    if isinstance(outputs, list | tuple):
        return [keras.ops.convert_to_numpy(value) for value in outputs]
    return keras.ops.convert_to_numpy(outputs)


def assert_outputs_close(actual, expected, atol: float = 1e-6, rtol: float = 0.0):
    """Compare two model outputs (array, list or dict of arrays) elementwise."""
    actual, expected = _as_numpy(actual), _as_numpy(expected)
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"expected a dict output, got {type(actual)}"
        assert set(actual) == set(expected), f"output keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            np.testing.assert_allclose(
                actual[key], expected[key], atol=atol, rtol=rtol, err_msg=key
            )
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)
    else:
        np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


def assert_keras_roundtrip(model: keras.Model, inputs, tmp_path, atol: float = 1e-6) -> keras.Model:
    """Save `model` to `tmp_path/<name>.keras`, reload it without custom_objects, compare.

    Returns the reloaded model. Fails if any layer is not registered serializable,
    if the reloaded model's outputs differ by more than `atol`, or if its config or
    weight count changed.
    """
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    expected = model(inputs, training=False)
    reloaded = keras.saving.load_model(path)
    assert len(reloaded.weights) == len(model.weights)
    assert_outputs_close(reloaded(inputs, training=False), expected, atol=atol)
    assert json.dumps(reloaded.get_config(), sort_keys=True, default=str) == json.dumps(
        model.get_config(), sort_keys=True, default=str
    )
    return reloaded


def assert_config_roundtrip(model: keras.Model, inputs, atol: float = 1e-6) -> keras.Model:
    """Rebuild `model` from its config, copy the weights, check config and outputs match."""
    config = model.get_config()
    # from_config consumes parts of the dict it is given (Keras 3): pass a copy.
    rebuilt = model.__class__.from_config(copy.deepcopy(config))
    assert json.dumps(rebuilt.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str
    )
    rebuilt.set_weights(model.get_weights())
    assert_outputs_close(rebuilt(inputs, training=False), model(inputs, training=False), atol=atol)
    return rebuilt


def assert_layer_config_roundtrip(layer: keras.layers.Layer) -> keras.layers.Layer:
    """`type(layer).from_config(layer.get_config())` has the same config; returns it."""
    config = layer.get_config()
    clone = layer.__class__.from_config(copy.deepcopy(config))
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str
    )
    return clone
