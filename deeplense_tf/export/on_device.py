"""A TFLite model that fine-tunes its own regression head on the device.

Signatures (builtin ops only; run in `ai_edge_litert.interpreter.Interpreter`):

- `infer(image [N, H, W, C])` -> `<target>` and (Gaussian head) `<target>_std`, `[N]`,
  physical units: the same outputs as the SavedModel's `serving_default`, computed
  with the head's *current* weights.
- `train(image [B, H, W, C], <target> [B] for each target, learning_rate [])` ->
  `loss []`: one Adam step on the head, encoder frozen. Targets are in physical units
  (NaN = undefined, ignored); `loss` is the training loss of the batch *before* the
  step, in standardised units (Gaussian NLL in nats, or the run's point loss, summed
  over targets). `B` is fixed at export (`train_batch_size`).
- `get_weights()` -> `<target>_kernel [D, k]`, `<target>_bias [k]` for each target.
- `set_weights(<target>_kernel, <target>_bias, ...)` -> the same tensors; restores
  weights saved from `get_weights` and resets the optimiser state.

Why it is written this way (see DESIGN.md, "Known traps"): gradients that TensorFlow
generates lower to Flex ops (`ReluGrad`, `BroadcastGradientArgs` with a dynamic batch,
checkpoint `Save`/`Restore`), which `ai_edge_litert` cannot run. So the encoder is
frozen into constants (its forward pass only), the head is the model's last linear
layer per target with its gradient and the Adam update written out in plain tensor
ops (matmul, add, mul, tanh, where), the train batch is static, the weights are
resource variables, and persistence goes through tensors rather than checkpoint ops.
The head that trains is exactly the model's: `Dense` per target, followed for the
Gaussian head by the soft clip of the log-variance (`SoftClipLogVariance`), whose
derivative is part of the update. Dropout before the head is off (inference mode).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ExportError
from deeplense_tf.export.spec import (
    INPUT_NAME,
    ExportSpec,
    keras_reference,
    max_abs_difference,
    max_scaled_difference,
    model_input,
    physical_outputs,
)

FILENAME = "model_on_device.tflite"
SIGNATURES = ("infer", "train", "get_weights", "set_weights")
LEARNING_RATE = "learning_rate"
LOSS = "loss"

#: max |infer - Keras| / max(1, |Keras|) before any training step (as fp32 TFLite).
INFER_TOLERANCE = 1e-4

_ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def head_parameters(model, spec: ExportSpec) -> dict:
    """Per target: `{"dense": Dense layer, "units": k, "log_var_limit": float | None,
    "log_var_offset": float}` (the offset is the calibration in `SoftClipLogVariance`).

    Follows the layer naming of `deeplense_tf.models.heads.add_heads`: point head
    `Dense(1)` named `<target>`; Gaussian head `Dense(2)` named `head_<target>` then
    `SoftClipLogVariance` named `<target>`. Raises `ExportError` for any other head
    (an ensemble's, say), which this module cannot differentiate by hand.
    """
    import keras

    def layer(name):
        try:
            return model.get_layer(name)
        except ValueError:
            return None

    if spec.head not in ("gaussian", "point"):
        raise ExportError(
            f"on-device training: model {spec.model_name!r} has a {spec.head} head; the on-device "
            "update is written for the Gaussian and point heads (export without --on-device)"
        )
    heads = {}
    for target in spec.targets:
        output = layer(target)
        dense = output if spec.head == "point" else layer(f"head_{target}")
        expected_units = 1 if spec.head == "point" else 2
        problem = None
        if not isinstance(dense, keras.layers.Dense):
            problem = f"has no Dense head layer for {target!r}"
        elif dense.units != expected_units or keras.activations.serialize(dense.activation) != "linear":
            problem = f"head layer {dense.name!r} is not a linear Dense({expected_units})"
        elif spec.head == "gaussian" and type(output).__name__ != "SoftClipLogVariance":
            problem = f"output {target!r} is {type(output).__name__}, not SoftClipLogVariance"
        if problem:
            raise ExportError(
                f"on-device training: model {spec.model_name!r} {problem}; it needs the "
                "heads of deeplense_tf.models.build_model"
            )
        limit = getattr(output, "limit", None) if spec.head == "gaussian" else None
        offset = float(output.log_variance_offset.numpy()) if spec.head == "gaussian" else 0.0
        heads[target] = {
            "dense": dense, "units": expected_units, "log_var_limit": limit, "log_var_offset": offset,
        }
    return heads


def _frozen_features(model, spec: ExportSpec, heads: dict):
    """`image -> [features for each distinct head input]` with the encoder as constants.

    Returns `(concrete_function, index)` where `index[target]` is the position of that
    target's features in the function's outputs.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    inputs, index = [], {}
    for target, head in heads.items():
        tensor = head["dense"].input
        position = next((i for i, t in enumerate(inputs) if t is tensor), None)
        if position is None:
            inputs.append(tensor)
            position = len(inputs) - 1
        index[target] = position
    features = keras.Model(model_input(model), inputs)

    @tf.function
    def encode(image):
        out = features(image, training=False)
        return list(out) if isinstance(out, list | tuple) else [out]

    concrete = encode.get_concrete_function(spec.image_spec())
    return convert_variables_to_constants_v2(concrete), index


def build_module(model, spec: ExportSpec, *, train_batch_size: int = 16, point_loss: str = "huber",
                 huber_delta: float = 1.0):
    """The `tf.Module` and its four signature functions (see the module docstring).

    point_loss: "huber" or "mse", the loss of a point-head run (ignored for Gaussian).
    Returns `(module, {signature name: concrete function})`.
    """
    import tensorflow as tf

    from deeplense_tf.export.tflite import conversion_copy

    if train_batch_size < 1:
        raise ExportError(f"on-device training batch size must be >= 1, got {train_batch_size}")
    if point_loss not in ("huber", "mse"):
        raise ExportError(f"on-device training: unknown point loss {point_loss!r} (huber or mse)")
    clash = {INPUT_NAME, LEARNING_RATE} & set(spec.targets)
    if clash:
        raise ExportError(f"on-device training: a target may not be named {sorted(clash)[0]!r}")

    model = conversion_copy(model)
    heads = head_parameters(model, spec)
    encode, index = _frozen_features(model, spec, heads)

    module = tf.Module()
    module.kernels, module.biases, module.slots = {}, {}, {}
    for target, head in heads.items():
        kernel, bias = head["dense"].get_weights()
        module.kernels[target] = tf.Variable(kernel.astype(np.float32), name=f"{target}_kernel")
        module.biases[target] = tf.Variable(bias.astype(np.float32), name=f"{target}_bias")
        for name, value in ((f"{target}_kernel", kernel), (f"{target}_bias", bias)):
            module.slots[name] = (
                tf.Variable(np.zeros_like(value, np.float32), name=f"{name}_m"),
                tf.Variable(np.zeros_like(value, np.float32), name=f"{name}_v"),
            )
    module.step = tf.Variable(0.0, name="adam_step")

    def raw_outputs(image):
        features = encode(image)
        raw = {}
        for target, head in heads.items():
            params = tf.matmul(features[index[target]], module.kernels[target]) + module.biases[target]
            if head["log_var_limit"] is not None:
                limit = head["log_var_limit"]
                log_var = limit * tf.tanh(params[:, 1:2] / limit) + head["log_var_offset"]
                params = tf.concat([params[:, :1], log_var], axis=-1)
            raw[target] = params
        return features, raw

    @tf.function(input_signature=[spec.image_spec()])
    def infer(image):
        return physical_outputs(raw_outputs(image)[1], spec)

    target_specs = [tf.TensorSpec([train_batch_size], tf.float32, name=t) for t in spec.targets]

    @tf.function(
        input_signature=[
            spec.image_spec(train_batch_size),
            *target_specs,
            tf.TensorSpec([], tf.float32, name=LEARNING_RATE),
        ]
    )
    def train(image, *args):
        *truths, learning_rate = args
        features, raw = raw_outputs(image)
        loss = tf.constant(0.0)
        grads = {}
        for target, truth in zip(spec.targets, truths):
            stats = spec.target_stats[target]
            defined = tf.equal(truth, truth)  # False for NaN (no IsFinite builtin)
            mask = tf.cast(defined, tf.float32)
            count = tf.maximum(tf.reduce_sum(mask), 1.0)
            z = tf.where(defined, (truth - stats["mean"]) / stats["std"], tf.zeros_like(truth))
            params = raw[target]
            if spec.head == "gaussian":
                limit = heads[target]["log_var_limit"]
                residual = z - params[:, 0]
                log_var = params[:, 1]
                inv_var = tf.exp(-log_var)
                nll = 0.5 * (log_var + residual * residual * inv_var) + _HALF_LOG_2PI
                loss += tf.reduce_sum(mask * nll) / count
                d_mean = -residual * inv_var
                # d/d(raw) of limit * tanh(raw / limit) + offset is 1 - tanh^2.
                clipped = log_var - heads[target]["log_var_offset"]
                d_raw = 0.5 * (1.0 - residual * residual * inv_var) * (
                    1.0 - tf.square(clipped / limit)
                )
                d_params = tf.stack([d_mean, d_raw], axis=1)
            else:
                residual = params[:, 0] - z
                if point_loss == "mse":
                    loss += tf.reduce_sum(mask * residual * residual) / count
                    d_params = (2.0 * residual)[:, None]
                else:
                    size = tf.abs(residual)
                    huber = tf.where(
                        size <= huber_delta,
                        0.5 * residual * residual,
                        huber_delta * (size - 0.5 * huber_delta),
                    )
                    loss += tf.reduce_sum(mask * huber) / count
                    d_params = tf.clip_by_value(residual, -huber_delta, huber_delta)[:, None]
            d_params = d_params * (mask / count)[:, None]
            grads[f"{target}_kernel"] = tf.matmul(features[index[target]], d_params, transpose_a=True)
            grads[f"{target}_bias"] = tf.reduce_sum(d_params, axis=0)

        step = module.step + 1.0
        module.step.assign(step)
        b1, b2, eps = _ADAM["beta_1"], _ADAM["beta_2"], _ADAM["epsilon"]
        rate = learning_rate * tf.sqrt(1.0 - tf.pow(b2, step)) / (1.0 - tf.pow(b1, step))
        for target in spec.targets:
            for name, variable in (
                (f"{target}_kernel", module.kernels[target]),
                (f"{target}_bias", module.biases[target]),
            ):
                m, v = module.slots[name]
                grad = grads[name]
                m.assign(b1 * m + (1.0 - b1) * grad)
                v.assign(b2 * v + (1.0 - b2) * grad * grad)
                variable.assign_sub(rate * m / (tf.sqrt(v) + eps))
        return {LOSS: loss}

    def weights():
        result = {}
        for target in spec.targets:
            result[f"{target}_kernel"] = tf.identity(module.kernels[target])
            result[f"{target}_bias"] = tf.identity(module.biases[target])
        return result

    @tf.function(input_signature=[])
    def get_weights():
        return weights()

    weight_specs = []
    for target in spec.targets:
        weight_specs.append(tf.TensorSpec(module.kernels[target].shape, tf.float32, name=f"{target}_kernel"))
        weight_specs.append(tf.TensorSpec(module.biases[target].shape, tf.float32, name=f"{target}_bias"))

    @tf.function(input_signature=weight_specs)
    def set_weights(*values):
        for target, kernel, bias in zip(spec.targets, values[0::2], values[1::2]):
            module.kernels[target].assign(kernel)
            module.biases[target].assign(bias)
        for m, v in module.slots.values():
            m.assign(tf.zeros_like(m))
            v.assign(tf.zeros_like(v))
        module.step.assign(0.0)
        return weights()

    functions = {"infer": infer, "train": train, "get_weights": get_weights, "set_weights": set_weights}
    for name, fn in functions.items():
        setattr(module, name, fn)
    return module, {name: fn.get_concrete_function() for name, fn in functions.items()}


def convert_on_device(model, spec: ExportSpec, **options) -> bytes:
    """Build the module (options as in `build_module`) and convert it with builtins only."""
    import tensorflow as tf

    from deeplense_tf.export.tflite import describe_conversion_error

    module, signatures = build_module(model, spec, **options)
    with tempfile.TemporaryDirectory(prefix="deeplense-on-device-") as work:
        # The frozen encoder may hold ops with custom gradients (swish) whose captures
        # cannot be saved; nothing here is differentiated by TensorFlow, so drop them.
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        tf.saved_model.save(module, work, signatures=signatures, options=options)
        converter = tf.lite.TFLiteConverter.from_saved_model(work, signature_keys=list(SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        # Loading warns about the custom gradients dropped above; nothing asks for them.
        absl_logger.setLevel(logging.ERROR)
        try:
            return converter.convert()
        except Exception as err:
            raise ExportError(f"on-device TFLite model: {describe_conversion_error(err)}") from err
        finally:
            absl_logger.setLevel(level)


def verify_on_device(path, model, spec: ExportSpec, images, reference=None) -> dict:
    """Load in ai_edge_litert: signatures present, `infer` equals Keras, weights equal the head's.

    Raises `ExportError` on a mismatch. Training itself is exercised by the tests.
    """
    from deeplense_tf.export.tflite import interpreter, run_tflite

    runtime = interpreter(path)
    missing = [s for s in SIGNATURES if s not in runtime.get_signature_list()]
    if missing:
        raise ExportError(f"on-device TFLite model {path} lacks signatures {missing}")
    if reference is None:
        reference = keras_reference(model, spec, images)
    outputs = run_tflite(path, images, signature="infer")
    scaled = max_scaled_difference(outputs, reference)
    worst = max(scaled, key=scaled.get)
    if scaled[worst] > INFER_TOLERANCE:
        raise ExportError(
            f"on-device model: infer output {worst!r} differs from the Keras model by "
            f"{scaled[worst]:.3g} (tolerance {INFER_TOLERANCE:g}); not exported"
        )
    weights = runtime.get_signature_runner("get_weights")()
    for target, head in head_parameters(model, spec).items():
        kernel, bias = head["dense"].get_weights()
        if not (np.array_equal(weights[f"{target}_kernel"], kernel)
                and np.array_equal(weights[f"{target}_bias"], bias)):
            raise ExportError(f"on-device model: get_weights does not return the head of {target!r}")
    return {
        "file": Path(path).name,
        "bytes": Path(path).stat().st_size,
        "signatures": {k: {"inputs": v["inputs"], "outputs": v["outputs"]}
                       for k, v in runtime.get_signature_list().items()},
        "max_abs_diff": max_abs_difference(outputs, reference),
        "max_scaled_diff": scaled,
        "tolerance": INFER_TOLERANCE,
    }


def export_on_device(model, spec: ExportSpec, out_dir, images, reference=None, **options) -> dict:
    """Write and verify `out_dir/model_on_device.tflite`; returns its report (with "path")."""
    path = Path(out_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(convert_on_device(model, spec, **options))
    report = verify_on_device(path, model, spec, images, reference)
    report.update(path=os.fspath(path), train_batch_size=options.get("train_batch_size", 16))
    return report
