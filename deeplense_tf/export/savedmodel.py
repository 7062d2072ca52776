"""SavedModel for TF Serving: signatures, in-graph input checks, warm-up requests.

Signatures (docs/architecture.md, "Exported SavedModel"), built with
`keras.export.ExportArchive` so the outputs carry their names (`model.export` would
call them `output_0`, ...):

- `serving_default`: `image` float32 `[None, H, W, C]` raw pixels ->
  `<target>` float32 `[None]` (physical units) and, for the Gaussian head,
  `<target>_std` float32 `[None]`. Preprocessing is the model's own first layer;
  de-standardisation is added here.
- `embed`: `image` -> `embedding` float32 `[None, D]` (the model's `embedding` layer;
  absent for models without one, such as ensembles).

Both check their input inside the graph, so TF Serving (or any server running the
graph) answers 400 with the message: an image that is not `[batch, H, W, C]` fails an
`Assert` ("image must be float32 [batch, 64, 64, 1] raw pixels; got shape [1 32 32 1]"),
and NaN or infinite pixels fail a `CheckNumerics` ("image has NaN or infinite pixels :
Tensor had NaN values"). The declared input shape stays static `[None, H, W, C]`, which
is what `saved_model_cli` and the metadata endpoint show: signature callers (TF
Serving, `loaded.signatures[...]`) do not enforce it, the graph does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ExportError
from deeplense_tf.export.spec import (
    EMBEDDING_LAYER,
    INPUT_NAME,
    ExportSpec,
    keras_reference,
    max_abs_difference,
    max_scaled_difference,
    physical_outputs,
)
from deeplense_tf.files import write_text_atomic

SERVING_SIGNATURE = "serving_default"
EMBED_SIGNATURE = "embed"
EMBEDDING_OUTPUT = "embedding"
WARMUP_FILE = "tf_serving_warmup_requests"

#: max |SavedModel - Keras| / max(1, |Keras|) allowed on every output. The traced graph
#: and Keras sum in different orders in float32: the Model I CNN-LSTM (150x150 input, a
#: 64-step bidirectional LSTM) differs by 1.0e-5 on its Student-t degrees of freedom.
#: Export bugs (a wrong normalisation, unit or output) differ by far more than 1e-4, the
#: TFLite fp32 check's tolerance too.
SAVED_MODEL_TOLERANCE = 1e-4

# Written next to the model folders for the real server (tensorflow/serving reads both).
MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
DEFAULT_BATCHING = {
    "max_batch_size": 64,
    "batch_timeout_micros": 2000,
    "max_enqueued_batches": 100,
    "num_batch_threads": 4,
}


def has_embedding(model) -> bool:
    return any(layer.name == EMBEDDING_LAYER for layer in model.layers)


def embedding_submodel(model):
    """`image -> embedding` sharing `model`'s weights (the clustering features)."""
    from deeplense_tf.models.cut import cut_model

    return cut_model(model, EMBEDDING_LAYER)


def validate_images(image, input_shape):
    """Raise InvalidArgument inside the graph unless `image` is `[B, H, W, C]` and finite.

    Returns `image` (with the checks as control dependencies), so callers use the
    returned tensor.
    """
    import tensorflow as tf

    height, width, channels = (int(d) for d in input_shape)
    shape = tf.shape(image, out_type=tf.int32)
    # Pad with -1 so an input of the wrong rank fails the same comparison (instead of
    # a shape-mismatch error from `equal` that does not say what was expected).
    padded = tf.concat([shape, tf.constant([-1, -1, -1, -1], tf.int32)], axis=0)
    shape_ok = tf.reduce_all(tf.equal(padded[1:5], [height, width, channels, -1]))
    check_shape = tf.debugging.Assert(
        shape_ok,
        [f"image must be float32 [batch, {height}, {width}, {channels}] raw pixels; got shape", shape],
        summarize=8,
        name="check_image_shape",
    )
    with tf.control_dependencies([check_shape]):
        image = tf.debugging.assert_all_finite(image, "image has NaN or infinite pixels")
    return image


def build_archive(model, spec: ExportSpec, *, validate: bool = True, embed: bool = True):
    """`keras.export.ExportArchive` with `serving_default` (and `embed`).

    validate: add the in-graph shape and finiteness checks (TFLite conversion turns
        them off: `CheckNumerics` is not a TFLite builtin).
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    embed_model = embedding_submodel(model) if embed and has_embedding(model) else None

    def serving_default(image):
        if validate:
            image = validate_images(image, spec.input_shape)
        return physical_outputs(model(image, training=False), spec)

    archive.add_endpoint(SERVING_SIGNATURE, serving_default, input_signature=[spec.image_spec()])
    if embed_model is not None:

        def embed_fn(image):
            if validate:
                image = validate_images(image, spec.input_shape)
            return {EMBEDDING_OUTPUT: embed_model(image, training=False)}

        archive.add_endpoint(EMBED_SIGNATURE, embed_fn, input_signature=[spec.image_spec()])
    return archive


def write_saved_model(model, spec: ExportSpec, path, *, model_name: str, warmup_images=None) -> Path:
    """Write the TF Serving SavedModel to `path` (which must not exist yet).

    warmup_images: float32 `[N, H, W, C]` raw images for
        `assets.extra/tf_serving_warmup_requests` (one request per signature, batch N);
        None writes no warm-up file.
    """
    path = Path(path)
    archive = build_archive(model, spec)
    archive.write_out(os.fspath(path), verbose=False)
    if warmup_images is not None:
        signatures = [SERVING_SIGNATURE] + ([EMBED_SIGNATURE] if has_embedding(model) else [])
        write_warmup_requests(path, warmup_images, model_name=model_name, signatures=signatures)
    return path


def write_warmup_requests(saved_model_dir, images, *, model_name: str, signatures) -> Path:
    """`assets.extra/tf_serving_warmup_requests`: a TFRecord of PredictionLog records.

    TF Serving replays them once when it loads the version, so the first real request
    does not pay for graph optimisation and memory allocation.
    """
    import tensorflow as tf

    try:
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    except ImportError as err:  # installed with --no-deps next to tensorflow-cpu (Makefile)
        raise ExportError(
            "warm-up requests need the tensorflow-serving-api package "
            "(pip install --no-deps 'tensorflow-serving-api>=2.21,<2.22')"
        ) from err

    images = np.asarray(images, np.float32)
    target = Path(saved_model_dir) / "assets.extra" / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(os.fspath(target)) as writer:
        for signature in signatures:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(images))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return target


def read_warmup_requests(saved_model_dir) -> list:
    """The PredictionLog records of a SavedModel's warm-up file (for checks and tests)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    target = Path(saved_model_dir) / "assets.extra" / WARMUP_FILE
    logs = []
    for record in tf.data.TFRecordDataset(os.fspath(target)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def run_signature(signature, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run a loaded signature over `images` in batches; `{output: array}`."""
    import tensorflow as tf

    chunks = []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start : start + batch_size], tf.float32)
        chunks.append({k: v.numpy() for k, v in signature(**{INPUT_NAME: batch}).items()})
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def verify_saved_model(path, model, spec: ExportSpec, images: np.ndarray, reference=None) -> dict:
    """Reload the SavedModel and compare both signatures with the Keras model.

    Raises `ExportError` if any output differs by more than `SAVED_MODEL_TOLERANCE`
    (scaled, see `max_scaled_difference`). Returns the measured differences.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(path))
    if reference is None:
        reference = keras_reference(model, spec, images)
    served = run_signature(loaded.signatures[SERVING_SIGNATURE], images)
    scaled = max_scaled_difference(served, reference)
    report = {
        "tolerance": SAVED_MODEL_TOLERANCE,
        "max_abs_diff": max_abs_difference(served, reference),
        "max_scaled_diff": scaled,
    }
    if has_embedding(model):
        embedded = run_signature(loaded.signatures[EMBED_SIGNATURE], images)[EMBEDDING_OUTPUT]
        expected = np.asarray(embedding_submodel(model)(images, training=False))
        scaled[EMBEDDING_OUTPUT] = max_scaled_difference(
            {EMBEDDING_OUTPUT: embedded}, {EMBEDDING_OUTPUT: expected}
        )[EMBEDDING_OUTPUT]
    worst = max(scaled, key=scaled.get)
    if scaled[worst] > SAVED_MODEL_TOLERANCE:
        raise ExportError(
            f"SavedModel output {worst!r} differs from the Keras model by {scaled[worst]:.3g} "
            f"(tolerance {SAVED_MODEL_TOLERANCE:g}); not exported"
        )
    return report


def signature_summary(path) -> dict:
    """`{signature: {"inputs": {name: shape}, "outputs": {name: shape}}}` of a SavedModel.

    Shapes as lists with -1 for unknown dimensions, as `saved_model_cli show` prints them.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(path))
    summary = {}
    for name, fn in loaded.signatures.items():
        inputs = fn.structured_input_signature[1]
        summary[name] = {
            "inputs": {k: _shape(v.shape) for k, v in sorted(inputs.items())},
            "outputs": {k: _shape(v.shape) for k, v in sorted(fn.structured_outputs.items())},
        }
    return summary


def _shape(shape) -> list[int]:
    return [-1 if d is None else int(d) for d in shape.as_list()]


# --- files for the real TF Serving next to the model folders ---------------------------


def model_names_in(out_dir) -> list[str]:
    """Sub-folders of `out_dir` holding at least one integer version folder with a SavedModel."""
    out_dir = Path(out_dir)
    names = []
    for child in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if child.is_dir() and any(
            v.name.isdigit() and (v / "saved_model.pb").is_file() for v in child.iterdir()
        ):
            names.append(child.name)
    return names


def write_models_config(out_dir) -> Path:
    """`out_dir/models.config`: a text-format ModelServerConfig listing every model folder.

    Each model serves all its versions (`model_version_policy { all {} }`), so clients
    can pin `/versions/N` and a new export is served next to the previous one. No
    version labels: TF Serving refuses to start with labels on versions it has not
    loaded yet unless run with `--allow_version_labels_for_unavailable_models`; add
    `version_labels { key: "stable" value: N }` once the versions are up. `base_path`
    is absolute, as TF Serving resolves relative paths against its own working
    directory; edit it when the folder is mounted elsewhere (`/models/<name>` in a
    container).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    out_dir = Path(out_dir)
    config = model_server_config_pb2.ModelServerConfig()
    for name in model_names_in(out_dir):
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = os.fspath((out_dir / name).resolve())
        entry.model_platform = "tensorflow"
        entry.model_version_policy.all.SetInParent()
    return write_text_atomic(out_dir / MODELS_CONFIG, text_format.MessageToString(config))


def write_batching_parameters(out_dir, parameters: dict | None = None) -> Path:
    """`out_dir/batching_parameters.txt` for `--enable_batching --batching_parameters_file`.

    Batches of up to 64 images (the size the latency benchmark measures), waiting at
    most 2 ms for a batch to fill.
    """
    values = {**DEFAULT_BATCHING, **(parameters or {})}
    text = "".join(f"{key} {{ value: {int(value)} }}\n" for key, value in values.items())
    return write_text_atomic(Path(out_dir) / BATCHING_PARAMETERS, text)
