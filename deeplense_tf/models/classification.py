"""The substructure classifier's head, its loss and accuracy, and temperature scaling.

`model.head: softmax` turns a run into a classifier over the classes its training data
hold (`deeplense_tf.data.classes.class_names(manifest)`: `no_sub`, `cdm`, `axion` for a
`--classes mix` data set). The model has one output, named `CLASS_TARGET` ("class"),
built by `add_softmax_head`:

    embedding -> Dense(K) named `head_class` (logits) -> TemperatureSoftmax named `class`

The output is the class probabilities `[B, K]` (float32, rows sum to 1); the label the
pipeline yields next to it is the class index `[B, 1]` (float32, an index into the
run's class names). `ClassCrossEntropy` is the per-example loss the training loop
sums, `class_accuracy` the per-example accuracy.

Calibration is temperature scaling (Guo et al. 2017): `TemperatureSoftmax` holds a
non-trainable `log_temperature` (0 until calibrated) and divides the logits by
`exp(log_temperature)`. `fit_temperature` fits it on the validation split's logits (one
scalar minimising the mean negative log-likelihood, which leaves every argmax and so
the accuracy unchanged); being a weight of the model, it travels with `model.keras`
into evaluation, SavedModels and TFLite files, like the regression heads'
`log_variance_offset`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.data.schema import CLASS_TARGET
from deeplense_tf.errors import RunError

LOGITS_LAYER = f"head_{CLASS_TARGET}"

#: Temperatures searched by `fit_temperature`. A validation split the model gets 100%
#: right asks for T -> 0 (ever sharper probabilities); the bounds keep the fit finite.
TEMPERATURE_RANGE = (0.05, 20.0)

# Probabilities are clipped here before the log: the smallest normal float32 is 1.2e-38,
# so the loss keeps its gradient for any probability a float32 softmax can represent.
_MIN_PROBABILITY = 1e-30


@keras.saving.register_keras_serializable(package="deeplense")
class TemperatureSoftmax(keras.layers.Layer):
    """Logits `[B, K]` -> `softmax(logits / exp(log_temperature))`, float32.

    `log_temperature` is a non-trainable scalar weight, 0 after training; calibration
    (`set_temperature`) sets it so the deployed probabilities are the calibrated ones.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.log_temperature = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="log_temperature"
        )

    def call(self, logits):
        logits = tf.cast(logits, tf.float32)
        return tf.nn.softmax(logits * tf.exp(-self.log_temperature), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def add_softmax_head(features, num_classes: int) -> dict:
    """`{CLASS_TARGET: probabilities [B, K]}` on `features` `[B, D]` (layers named as above)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise RunError(f"softmax head: needs at least two classes, got {num_classes!r}")
    logits = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)(features)
    return {CLASS_TARGET: TemperatureSoftmax(name=CLASS_TARGET)(logits)}


@keras.saving.register_keras_serializable(package="deeplense")
class ClassCrossEntropy(keras.losses.Loss):
    """Cross-entropy of the class index `y_true` (`[B, 1]` or `[B]`) under the
    probabilities `y_pred` `[B, K]`, per example, in nats. Always float32."""

    def __init__(self, name: str = "class_cross_entropy", reduction: str = "sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        probabilities = tf.cast(y_pred, tf.float32)
        chosen = tf.gather(probabilities, labels, axis=1, batch_dims=1)
        return -tf.math.log(tf.maximum(chosen, _MIN_PROBABILITY))

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, "dtype": "float32"}


@keras.saving.register_keras_serializable(package="deeplense")
def class_accuracy(y_true, y_pred):
    """1.0 where the most probable class is the label, else 0.0, per example `[B]`."""
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
    return tf.cast(tf.equal(tf.argmax(y_pred, axis=-1), labels), tf.float32)


# --- temperature scaling ---------------------------------------------------------------------


def _nll(logits: np.ndarray, labels: np.ndarray, inverse_temperature: float) -> float:
    scaled = logits * inverse_temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels) -> dict:
    """The temperature T minimising the mean NLL of `softmax(logits / T)` on `labels`.

    The NLL is convex in 1/T, so a bounded one-dimensional search finds the optimum
    (within `TEMPERATURE_RANGE`). Returns `{"temperature", "examples", "nll_before",
    "nll_after"}` (nats per example; "before" is T = 1). RunError without examples.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise RunError(f"temperature scaling: need logits [N, K] and N labels, got {logits.shape} and {labels.shape}")
    lo, hi = TEMPERATURE_RANGE
    result = minimize_scalar(lambda b: _nll(logits, labels, b), bounds=(1.0 / hi, 1.0 / lo),
                             method="bounded", options={"xatol": 1e-6})
    inverse = float(result.x)
    before = _nll(logits, labels, 1.0)
    after = _nll(logits, labels, inverse)
    if after > before:  # the search's tolerance must never make calibration worse than none
        inverse, after = 1.0, before
    return {"temperature": 1.0 / inverse, "examples": int(len(labels)), "nll_before": before,
            "nll_after": after}


def temperature_layer(model) -> TemperatureSoftmax:
    """The model's `TemperatureSoftmax` output layer; RunError for a model without one."""
    for layer in model.layers:
        if isinstance(layer, TemperatureSoftmax):
            return layer
    raise RunError(f"model {model.name!r} has no softmax head to calibrate")


def set_temperature(model, temperature: float) -> None:
    """Make the model's probabilities `softmax(logits / temperature)` (replaces, not composes)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise RunError(f"temperature must be a positive number, got {temperature}")
    temperature_layer(model).log_temperature.assign(math.log(temperature))


def get_temperature(model) -> float:
    return float(math.exp(float(temperature_layer(model).log_temperature.numpy())))
