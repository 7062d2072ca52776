"""TFLite / LiteRT variants of a trained model, builtin ops only.

Variants (`VARIANTS`):

- `fp32`: float32 weights and activations.
- `fp16`: float16 weights (dequantised at load), float32 compute.
- `dynamic_int8`: int8 weights, activations quantised on the fly where a kernel allows.
- `int8`: int8 weights and activations with ranges calibrated on training images
  (the representative data set), from the first layer with weights to the output
  layers. The input transforms ahead of it (`ImagePreprocess`, `PolarUnwrap`), the
  output layers and the map to physical units stay float32 (selective quantisation,
  `float_layer_names`): raw pixels span five decades, and one 8-bit range over them
  zeroes the faint arcs the asinh stretch exists to lift (+0.6 dex test MAE when the
  input was quantised). Input and output are float32, so every variant has the same
  interface.

Every file has one signature, `serving_default`, with the SavedModel's interface:
input `image` float32 `[-1, H, W, C]` raw pixels, outputs `<target>` and (Gaussian
head) `<target>_std` float32 `[B]` in physical units. They contain builtin ops only
(converted with `supported_ops=[TFLITE_BUILTINS(_INT8)]`, never SELECT_TF_OPS, which
`keras.export`'s LiteRT path would switch on), so they run in
`ai_edge_litert.interpreter.Interpreter` and on any LiteRT runtime.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ConfigError, ExportError
from deeplense_tf.export.spec import (
    INPUT_NAME,
    ExportSpec,
    keras_reference,
    max_abs_difference,
    max_scaled_difference,
    mean_absolute_errors,
)

VARIANTS = ("fp32", "fp16", "dynamic_int8", "int8")
SIGNATURE = "serving_default"

#: max |fp32 TFLite - Keras| / max(1, |Keras|); the quantised variants are measured and reported.
FP32_TOLERANCE = 1e-4

_RNN_CLASSES = ("LSTM", "GRU", "SimpleRNN")
_HALF_DTYPES = ("float16", "bfloat16")


def parse_variants(value) -> tuple[str, ...]:
    """`"fp32,int8"` (or a sequence of names, or "all") -> validated tuple in `VARIANTS` order.

    Raises `ConfigError` naming the unknown variant.
    """
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n and n.strip()]
    if names == ["all"]:
        return VARIANTS
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(
            f"--tflite: unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)} (or all)"
        )
    return tuple(v for v in VARIANTS if v in names)


def tflite_filename(variant: str) -> str:
    return f"model_{variant}.tflite"


def needs_unroll(model) -> list[str]:
    """Names of recurrent layers that are not unrolled (they need Flex ops or crash int8)."""
    found = []

    def visit(layer):
        inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
        if type(layer).__name__ in _RNN_CLASSES and not getattr(layer, "unroll", True):
            found.append(layer.name)
        for child in getattr(layer, "layers", []) or []:
            visit(child)
        if inner is not None and inner is not layer:
            visit(inner)
        backward = getattr(layer, "backward_layer", None)
        if backward is not None:
            visit(backward)

    visit(model)
    return found


def reduced_precision_layers(model) -> list[str]:
    """Names of layers computing in float16/bfloat16 (a `training.mixed_precision` run)."""
    found = []

    def visit(layer):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and getattr(policy, "compute_dtype", "float32") in _HALF_DTYPES:
            found.append(layer.name)
        for child in getattr(layer, "layers", []) or []:
            visit(child)
        for attr in ("layer", "forward_layer", "backward_layer"):
            inner = getattr(layer, attr, None)
            if inner is not None and inner is not layer:
                visit(inner)

    visit(model)
    return found


def conversion_copy(model):
    """`model` as TFLite can take it: float32 compute everywhere, recurrent layers unrolled.

    Same weights and, up to float rounding, the same outputs. A recurrent layer with a
    dynamic batch converts to builtins only when unrolled (and full-int8 calibration of
    its `While` loop crashes the converter); float16 Conv2D, Relu ... of a
    mixed-precision model are not TFLite builtins (TFLite's fp16 means fp16 *weights*,
    the `fp16` variant). A model needing neither change is returned as is.
    """
    if not needs_unroll(model) and not reduced_precision_layers(model):
        return model
    import keras

    def rewrite(config):
        if isinstance(config, dict):
            inner = config.get("config")
            kind = config.get("class_name")
            if kind in _RNN_CLASSES and isinstance(inner, dict):
                inner["unroll"] = True
            if kind in ("DTypePolicy", "FloatDTypePolicy") and isinstance(inner, dict) and str(
                inner.get("name", "")
            ).startswith("mixed_"):
                inner["name"] = "float32"
            if kind == "__keras_tensor__" and isinstance(inner, dict) and inner.get("dtype") in _HALF_DTYPES:
                inner["dtype"] = "float32"
            for value in config.values():
                rewrite(value)
        elif isinstance(config, list):
            for value in config:
                rewrite(value)
        return config

    copy = keras.saving.deserialize_keras_object(rewrite(keras.saving.serialize_keras_object(model)))
    copy.set_weights(model.get_weights())
    return copy


def write_conversion_savedmodel(model, spec: ExportSpec, path) -> Path:
    """SavedModel with only `serving_default`, without the in-graph checks, for the converter.

    `model` should be a `conversion_copy`.
    """
    from deeplense_tf.export.savedmodel import build_archive

    archive = build_archive(model, spec, validate=False, embed=False)
    archive.write_out(os.fspath(path), verbose=False)
    return Path(path)


def _representative(images: np.ndarray):
    def generate():
        for image in images:
            yield {INPUT_NAME: np.asarray(image[np.newaxis], np.float32)}

    return generate


def float_layer_names(model) -> set[str]:
    """Layers the `int8` variant keeps in float32: the input transforms, the output layers
    and what the architecture's registry entry adds (the rule lives with the architectures:
    `deeplense_tf.models.registry.int8_float_layer_names`)."""
    from deeplense_tf.models.registry import int8_float_layer_names

    return int8_float_layer_names(model)


def float_tensor_names(tensor_names: Iterable[str], model_name: str, float_layers: Iterable[str]) -> list[str]:
    """The converted graph's tensors to leave unquantised.

    TFLite names a tensor after the TF ops fused into it (`;`-separated), each a name
    scope path such as `cnn_1/preprocess_1/Abs` (Keras appends `_<n>` to scopes). A
    tensor stays float if one of its ops lies inside a float layer or outside the model
    (the serving function's map to physical units).
    """
    suffix = r"(?:_\d+)?"
    inside_model = re.compile(rf"^{re.escape(model_name)}{suffix}/")
    layers = "|".join(re.escape(name) for name in sorted(float_layers))
    inside_float_layer = re.compile(rf"(?:^|/)(?:{layers}){suffix}/") if layers else None

    def keep_float(op_name: str) -> bool:
        if not inside_model.match(op_name):
            return True
        return bool(inside_float_layer and inside_float_layer.search(op_name))

    return [name for name in tensor_names if any(keep_float(op) for op in name.split(";"))]


def convert_variant(
    saved_model_dir, variant: str, representative_images=None, model=None, float_layers=None
) -> bytes:
    """Convert the conversion SavedModel to one TFLite variant (builtin ops only).

    representative_images: raw training images `[N, H, W, C]`, required for `int8`.
    model: the Keras model the SavedModel was written from; for `int8`, the layers named
        by `float_layers` (default `float_layer_names(model)`) stay float32. Without a
        model every op with an int8 kernel is quantised, the input included.
    Raises `ExportError` naming the ops that have no TFLite builtin.
    """
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ConfigError(f"unknown TFLite variant {variant!r}; choose from {', '.join(VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir), signature_keys=[SIGNATURE]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ExportError("int8 needs calibration images (the run's training data)")
        converter.representative_dataset = _representative(representative_images)
        # int8 kernels wherever they exist; float builtins for the rest (still no Flex).
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    try:
        with warnings.catch_warnings():
            # int8 calibration runs the deprecated tf.lite.Interpreter inside the converter;
            # the files themselves are checked with ai_edge_litert.
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
            if variant == "int8" and model is not None:
                if float_layers is None:
                    float_layers = float_layer_names(model)
                return _selective_int8(converter, representative_images, model.name, float_layers)
            return converter.convert()
    except Exception as err:  # ConverterError and friends: say which ops are missing
        raise ExportError(f"TFLite {variant}: {describe_conversion_error(err)}") from err


def _selective_int8(converter, representative_images, model_name: str, float_layers) -> bytes:
    """Full int8 with the layers named `float_layers` left in float32.

    TFLite's selective quantisation goes through the quantisation debugger: calibrate
    once, then quantise with the float layers' tensors deny-listed.
    """
    import tensorflow as tf

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=_representative(representative_images)
    )
    names = [t["name"] for t in interpreter(debugger.calibrated_model).get_tensor_details()]
    keep = float_tensor_names(names, model_name, float_layers)
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep)
    return debugger.get_nondebug_quantized_model()


def describe_conversion_error(err: Exception) -> str:
    """One line from a converter error: the TF ops without a builtin, when it lists them."""
    text = str(err)
    ops = sorted(set(re.findall(r"\btf\.([A-Z][A-Za-z0-9]+)", text)))
    if ops:
        return "the model uses ops with no TFLite builtin: " + ", ".join(ops)
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return (lines[0] if lines else text.strip().splitlines()[0] if text.strip() else repr(err))[:500]


def interpreter(model, num_threads: int = 1):
    """An `ai_edge_litert` Interpreter for a `.tflite` path or its bytes."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, bytes | bytearray):
        return Interpreter(model_content=bytes(model), num_threads=num_threads)
    return Interpreter(model_path=os.fspath(model), num_threads=num_threads)


def run_tflite(
    model, images: np.ndarray, *, num_threads: int = 1, batch_size: int = 64, signature: str = SIGNATURE
) -> dict[str, np.ndarray]:
    """Run a TFLite signature over raw images `[N, H, W, C]`; `{output: array [N, ...]}`.

    Static-batch files (the on-device model's `train`, say) run `batch` rows at a time.
    """
    runner = interpreter(model, num_threads).get_signature_runner(signature)
    static = runner.get_input_details()[INPUT_NAME]["shape_signature"][0]
    step = int(static) if static > 0 else batch_size
    chunks = []
    for start in range(0, len(images), step):
        batch = np.ascontiguousarray(images[start : start + step], np.float32)
        chunks.append({k: np.array(v) for k, v in runner(**{INPUT_NAME: batch}).items()})
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def verify_variant(path, variant: str, spec: ExportSpec, images, reference, targets=None) -> dict:
    """Load a written variant in ai_edge_litert and compare it with the Keras reference.

    Raises `ExportError` if fp32 misses `FP32_TOLERANCE`; the quantised variants are
    measured only. With `targets` (physical truth for `images`) the report also holds
    each target's MAE for Keras and for this variant.
    """
    try:
        outputs = run_tflite(path, images)
    except (RuntimeError, ValueError) as err:
        raise ExportError(f"TFLite {variant}: {path} does not run in ai_edge_litert: {err}") from err
    scaled = max_scaled_difference(outputs, reference)
    report = {
        "file": Path(path).name,
        "bytes": Path(path).stat().st_size,
        "max_abs_diff": max_abs_difference(outputs, reference),
        "max_scaled_diff": scaled,
        "tolerance": FP32_TOLERANCE if variant == "fp32" else None,
    }
    if targets is not None:
        report["mae_keras"] = mean_absolute_errors(reference, targets, spec)
        report["mae_tflite"] = mean_absolute_errors(outputs, targets, spec)
    worst = max(scaled, key=scaled.get)
    if variant == "fp32" and scaled[worst] > FP32_TOLERANCE:
        raise ExportError(
            f"TFLite fp32 output {worst!r} differs from the Keras model by {scaled[worst]:.3g} "
            f"(tolerance {FP32_TOLERANCE:g}); not exported"
        )
    return report


def export_tflite(
    model,
    spec: ExportSpec,
    out_dir,
    variants: Iterable[str],
    *,
    calibration_images=None,
    verify_images=None,
    verify_targets=None,
    progress=None,
) -> dict[str, dict]:
    """Write `out_dir/model_<variant>.tflite` for each variant and verify each one.

    The files are compared with the model they were converted from, `conversion_copy(model)`
    (the model itself unless it computes in mixed precision or has rolled-up LSTMs).
    Returns `{variant: report}` (see `verify_variant`; "path" added, and for `int8` the
    "float_layers" it kept in float32). `progress`, if
    given, is called with a short description before each step.
    """
    variants = parse_variants(list(variants))
    model = conversion_copy(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if verify_images is None:
        verify_images = calibration_images
    reference = keras_reference(model, spec, verify_images) if verify_images is not None else None
    reports = {}
    with tempfile.TemporaryDirectory(prefix="deeplense-tflite-") as work:
        saved = write_conversion_savedmodel(model, spec, Path(work) / "saved_model")
        for variant in variants:
            if progress:
                progress(f"tflite {variant}")
            path = out_dir / tflite_filename(variant)
            path.write_bytes(convert_variant(saved, variant, calibration_images, model))
            if reference is None:
                reports[variant] = {"file": path.name, "bytes": path.stat().st_size}
            else:
                reports[variant] = verify_variant(
                    path, variant, spec, verify_images, reference, verify_targets
                )
            reports[variant]["path"] = os.fspath(path)
            if variant == "int8":
                reports[variant]["float_layers"] = sorted(float_layer_names(model))
    return reports
