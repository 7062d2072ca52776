"""Export: SavedModel signatures for TF Serving, TFLite variants, on-device training, atomicity.

One tiny run (16x16 images, a 2-block CNN) is exported once per module with every
TFLite variant and the on-device model; most tests inspect that export. Run folders are
written directly in the documented layout (docs/architecture.md, "Run folder") rather
than trained, which keeps the module within its time budget; `Run.load` reads them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import write_dataset

from deeplense_tf import cli
from deeplense_tf.errors import ConfigError, ExportError, RunError
from deeplense_tf.export import exporter, on_device, savedmodel
from deeplense_tf.export import tflite as tflite_lib
from deeplense_tf.export.spec import ExportSpec, keras_reference
from deeplense_tf.models import build_model
from deeplense_tf.models.layers import ImagePreprocess
from deeplense_tf.runs import Run
from deeplense_tf.training.config import load_config, save_config

SIZE = 16
TARGETS = ["theta_e_arcsec", "source_x_arcsec"]


# --- shared helpers (also used by test_export_architectures.py) -----------------------------


def make_run(run_dir, data_dir, *, model=None, name="cnn", head="gaussian", options=None,
             input_shape=(SIZE, SIZE, 1), targets=TARGETS, target_stats=None, point_loss="huber"):
    """Write a finished run folder around `model` (default: a tiny `name` model, untrained).

    Follows docs/architecture.md ("Run folder"); the weights are whatever `model` holds.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    options = options if options is not None else {"width": 4, "blocks": 2}
    if model is None:
        model = build_model(name, input_shape, targets, head=head, crop=None, **options)
    if target_stats is None:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
        target_stats = {t: manifest["target_stats"][t] for t in targets}
        (run_dir / "data_manifest.json").write_text(json.dumps(manifest))
    config = load_config(None, {
        "data.path": str(data_dir), "model.name": name, "model.head": head, "model.crop": None,
        "model.options": options, "training.point_loss": point_loss,
    })
    save_config(config, run_dir / "config.yaml")
    model.save(run_dir / "model.keras")
    stats = {t: {"mean": float(s["mean"]), "std": float(s["std"])} for t, s in target_stats.items()}
    (run_dir / "target_stats.json").write_text(json.dumps(stats))
    (run_dir / "run.json").write_text(json.dumps({
        "format_version": 1, "deeplense_tf": "test", "model": name, "head": head,
        "targets": list(targets), "input_shape": list(input_shape), "complete": True,
    }))
    return run_dir


def scaled_diff(actual, reference) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(actual - reference) / np.maximum(1.0, np.abs(reference))))


def run_predict_outputs(run, images) -> dict:
    """`Run.predict` flattened to the export's output names."""
    outputs = {}
    for target, pred in run.predict(images).items():
        outputs[target] = pred["mean"]
        if pred["std"] is not None:
            outputs[f"{target}_std"] = pred["std"]
    return outputs


def builtin_op_names(path) -> set[str]:
    """Op names of a .tflite file as ai_edge_litert resolves them (no delegates applied)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return {op["op_name"] for op in interpreter._get_ops_details()}


def assert_nothing_left(out_dir: Path, expected: set[str], depth: int = 2):
    """`out_dir` holds exactly `expected` (paths up to `depth` levels), and no hidden temporaries."""
    found = {p.relative_to(out_dir) for p in out_dir.rglob("*")} if out_dir.exists() else set()
    hidden = [str(p) for p in found if any(part.startswith(".") for part in p.parts)]
    assert not hidden, f"temporary files left behind: {hidden}"
    assert {str(p) for p in found if len(p.parts) <= depth} == expected


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "blobs",
                         counts={"train": 24, "val": 6, "test": 12})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    keras.utils.set_random_seed(1)
    return make_run(tmp_path_factory.mktemp("runs") / "cnn", data_dir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_dir):
    """Every artefact at once: SavedModel, four TFLite variants, the on-device model."""
    out = tmp_path_factory.mktemp("export") / "serving"
    paths = exporter.export_run(run_dir, out, tflite="all", on_device=True, train_batch_size=8,
                                progress=False)
    return out, paths


@pytest.fixture(scope="module")
def run(run_dir):
    return Run.load(run_dir)


@pytest.fixture(scope="module")
def test_images(data_dir):
    from deeplense_tf.data import load_examples

    return load_examples(data_dir, split="test").images


# --- layout, report, serving files ------------------------------------------------------------


def test_export_writes_tf_serving_layout_and_report(exported, data_dir):
    out, paths = exported
    version_dir = out / "deeplense" / "1"
    assert paths["version_dir"] == version_dir
    for relative in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests",
                     "export.json", "tflite/model_fp32.tflite", "tflite/model_fp16.tflite",
                     "tflite/model_dynamic_int8.tflite", "tflite/model_int8.tflite",
                     "tflite/model_on_device.tflite"):
        assert (version_dir / relative).exists(), relative
    assert_nothing_left(out, {"models.config", "batching_parameters.txt", "deeplense", "deeplense/1"})
    # As readable as any folder made here (not mkdtemp's private 0700): the server may run as another user.
    assert version_dir.stat().st_mode & 0o777 == (out / "deeplense").stat().st_mode & 0o777

    report = json.loads((version_dir / "export.json").read_text())
    assert report["version"] == 1 and report["targets"] == TARGETS and report["head"] == "gaussian"
    checks = report["checks"]
    assert checks["source"] == str(data_dir) and checks["images"] == 12  # the test split
    assert max(checks["saved_model"]["max_scaled_diff"].values()) <= 1e-5
    assert set(checks["tflite"]) == set(tflite_lib.VARIANTS)
    assert checks["tflite"]["fp32"]["tolerance"] == 1e-4
    # Test-split targets are known, so the report holds the MAE change per variant.
    assert set(checks["tflite"]["int8"]["mae_tflite"]) == set(TARGETS)
    assert checks["tflite"]["int8"]["float_layers"] == sorted(["preprocess", *TARGETS])
    assert checks["tflite"]["fp32"]["path"] == "tflite/model_fp32.tflite"


def test_models_config_and_batching_parameters_parse(exported):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    out, paths = exported
    config = text_format.Parse(paths["models_config"].read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == "deeplense" and Path(entry.base_path) == (out / "deeplense").resolve()
    assert entry.model_platform == "tensorflow" and entry.model_version_policy.HasField("all")
    assert not entry.version_labels  # TF Serving would refuse to start with labels on unloaded versions

    from deeplense_tf.serving.batching import BatchingOptions

    options = BatchingOptions.from_file(paths["batching_parameters"])
    assert options.max_batch_size == 64 and options.batch_timeout_micros == 2000


# --- SavedModel ------------------------------------------------------------------------------


def test_saved_model_cli_lists_documented_signatures(exported):
    out, _ = exported
    cli_path = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli_path), "show", "--dir", str(out / "deeplense" / "1"), "--all"],
                           capture_output=True, text=True, check=True).stdout
    signatures = dict(re.findall(r"signature_def\['(\w+)'\]:(.*?)Method name", shown, re.S))
    assert {"serving_default", "embed"} <= set(signatures)
    serving = signatures["serving_default"]
    assert re.search(r"inputs\['image'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 16, 16, 1\)", serving)
    for name in ("theta_e_arcsec", "theta_e_arcsec_std", "source_x_arcsec", "source_x_arcsec_std"):
        assert re.search(rf"outputs\['{name}'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1\)", serving), name
    assert len(re.findall(r"outputs\[", serving)) == 4
    embed = signatures["embed"]
    assert re.search(r"inputs\['image'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 16, 16, 1\)", embed)
    assert re.search(r"outputs\['embedding'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, \d+\)", embed)


def test_saved_model_outputs_equal_keras(exported, run, test_images):
    out, _ = exported
    loaded = tf.saved_model.load(str(out / "deeplense" / "1"))
    served = loaded.signatures["serving_default"](image=tf.constant(test_images))
    expected = run_predict_outputs(run, test_images)  # Run.predict: Keras + numpy de-standardising
    assert set(served) == set(expected)
    for name, values in expected.items():
        assert served[name].shape == (len(test_images),)
        assert scaled_diff(served[name], values) <= 1e-5, name
    embedding = loaded.signatures["embed"](image=tf.constant(test_images))["embedding"]
    np.testing.assert_allclose(embedding, run.embedding_model().predict(test_images, verbose=0),
                               atol=1e-5, rtol=1e-5)
    # A single image and an empty batch go through the dynamic batch dimension too.
    one = loaded.signatures["serving_default"](image=tf.constant(test_images[:1]))
    assert one["theta_e_arcsec"].shape == (1,)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), "image has NaN or infinite pixels : Tensor had NaN values"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.inf, x), "image has NaN or infinite pixels : Tensor had Inf values"),
        (lambda x: x[:, :8, :8, :], "image must be float32 [batch, 16, 16, 1] raw pixels; got shape] [2 8 8 1]"),
        (lambda x: x[..., 0], "image must be float32 [batch, 16, 16, 1] raw pixels; got shape] [2 16 16]"),
        (lambda x: np.concatenate([x, x], axis=-1), "got shape] [2 16 16 2]"),
    ],
    ids=["nan", "inf", "wrong-size", "no-channel-axis", "two-channels"],
)
@pytest.mark.parametrize("signature", ["serving_default", "embed"])
def test_saved_model_rejects_bad_images_in_graph(exported, test_images, make_bad, message, signature):
    out, _ = exported
    loaded = tf.saved_model.load(str(out / "deeplense" / "1"))
    bad = make_bad(test_images[:2]).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        loaded.signatures[signature](image=tf.constant(bad))
    assert message in info.value.message


def test_warmup_requests_are_prediction_logs_that_run(exported):
    out, _ = exported
    version_dir = out / "deeplense" / "1"
    logs = savedmodel.read_warmup_requests(version_dir)
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "embed"]
    loaded = tf.saved_model.load(str(version_dir))
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "deeplense"
        image = tf.make_ndarray(request.inputs["image"])
        assert image.shape == (1, SIZE, SIZE, 1) and np.isfinite(image).all()
        result = loaded.signatures[request.model_spec.signature_name](image=tf.constant(image))
        assert all(np.isfinite(v.numpy()).all() for v in result.values())


# --- TFLite ----------------------------------------------------------------------------------

# Max |TFLite - Keras| in units of each target's std (fp32 also within 1e-4 scaled, below).
QUANTISED_TOLERANCE_IN_STDS = {"fp32": 1e-4, "fp16": 1e-2, "dynamic_int8": 5e-2, "int8": 0.25}


@pytest.mark.parametrize("variant", tflite_lib.VARIANTS)
def test_tflite_variant_runs_in_litert_with_builtins_and_is_close(exported, run, test_images, variant):
    out, paths = exported
    path = paths[f"tflite_{variant}"]
    ops = builtin_op_names(path)
    assert ops and not any(op.startswith("Flex") or op in ("CUSTOM", "DELEGATE") for op in ops), ops

    runtime = tflite_lib.interpreter(path)
    assert runtime.get_signature_list() == {"serving_default": {
        "inputs": ["image"],
        "outputs": sorted(["theta_e_arcsec", "theta_e_arcsec_std", "source_x_arcsec", "source_x_arcsec_std"]),
    }}
    outputs = tflite_lib.run_tflite(path, test_images, num_threads=2)
    expected = run_predict_outputs(run, test_images)
    for name, values in expected.items():
        std = run.target_stats[name.removesuffix("_std")]["std"]
        diff = np.max(np.abs(outputs[name] - values)) / std
        assert diff <= QUANTISED_TOLERANCE_IN_STDS[variant], (name, diff)
        if variant == "fp32":
            assert scaled_diff(outputs[name], values) <= 1e-4
    if variant == "int8":
        assert any(op in ops for op in ("QUANTIZE", "DEQUANTIZE"))


def _faint_arc_images(rng, count, size):
    """A bright point (4.0) on a faint pattern 1e-3.5..1e-1.5 of it: the arcs' dynamic range."""
    images = np.zeros((count, size, size, 1), np.float32)
    images[:, size // 2, size // 2] = 4.0
    amplitude = 4.0 * 10 ** rng.uniform(-3.5, -1.5, size=(count, 1, 1, 1))
    return (images + amplitude * rng.random((count, size, size, 1))).astype(np.float32)


def test_int8_keeps_the_preprocessing_float_so_faint_pixels_survive(tmp_path):
    """Full int8 of a cropping model must not quantise the raw pixels.

    One 8-bit range over a bright point zeroes the faint pattern these outputs depend on
    (with the crop first in the graph the converter quantised the input, and max |diff|
    was 0.27 of the outputs' spread across images); with the preprocessing and outputs
    in float it is 0.03.
    """
    size = 24
    inputs = keras.Input((size, size, 1), name="image")
    hidden = ImagePreprocess("peak_asinh", 16, name="preprocess")(inputs)
    hidden = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    model = keras.Model(inputs, {"t": keras.layers.Dense(1, name="t")(hidden)}, name="tiny")
    spec = ExportSpec(model_name="tiny", targets=("t",), head="point", input_shape=(size, size, 1),
                      target_stats={"t": {"mean": 0.0, "std": 1.0}})
    rng = np.random.default_rng(0)
    calibration, images = _faint_arc_images(rng, 64, size), _faint_arc_images(rng, 64, size)

    report = tflite_lib.export_tflite(model, spec, tmp_path, ["int8"], calibration_images=calibration,
                                      verify_images=images)["int8"]
    reference = keras_reference(model, spec, images)
    for name, values in reference.items():
        assert report["max_abs_diff"][name] < 0.2 * np.std(values), (name, report["max_abs_diff"])

    runtime = tflite_lib.interpreter(report["path"])
    tensors = {t["index"]: t for t in runtime.get_tensor_details()}
    image = runtime.get_input_details()[0]["index"]
    readers = [op["op_name"] for op in runtime._get_ops_details() if image in op["inputs"]]
    assert readers and "QUANTIZE" not in readers, readers
    assert any(t["dtype"] == np.int8 and "/conv" in t["name"] for t in tensors.values())
    head = [t for t in tensors.values() if "/t_1/" in t["name"]]
    assert head and all(t["dtype"] == np.float32 for t in head)


def test_float_tensor_names_follow_layer_scopes():
    names = [
        "serving_default_image:0",
        "cnn_1/preprocess_1/Abs",
        "cnn_1/block0_conv_1/Relu;cnn_1/block0_conv_1/convolution",
        "cnn_1/member_0_1/preprocess_1/truediv",
        "cnn_1/t_1/Tanh",
        "cnn_1/t_head_1/MatMul",
        "mul_1",
        "cnn_1/preprocessing_extra_1/Abs",
    ]
    kept = tflite_lib.float_tensor_names(names, "cnn", {"preprocess", "t"})
    assert kept == ["serving_default_image:0", "cnn_1/preprocess_1/Abs",
                    "cnn_1/member_0_1/preprocess_1/truediv", "cnn_1/t_1/Tanh", "mul_1"]


def test_float_layer_names_are_the_input_transforms_and_outputs_also_when_nested():
    model = build_model("cnn", (SIZE, SIZE, 1), TARGETS, crop=8, width=4, blocks=2)
    assert tflite_lib.float_layer_names(model) == {"preprocess", *TARGETS}
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    outer = keras.Model(inputs, model(inputs), name="outer")
    assert tflite_lib.float_layer_names(outer) == {"preprocess", *TARGETS}

    polar = build_model("cnn_lstm", (SIZE, SIZE, 1), TARGETS, crop=None, view="polar", width=4)
    assert tflite_lib.float_layer_names(polar) == {"preprocess", "polar_unwrap", *TARGETS}


def test_conversion_copy_unrolls_lstms(tmp_path):
    inputs = keras.Input((6, 3), name="image")
    hidden = keras.layers.Bidirectional(keras.layers.LSTM(4, unroll=False, name="lstm"), name="bi")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    assert tflite_lib.needs_unroll(model) == ["forward_lstm", "backward_lstm"]
    copy = tflite_lib.conversion_copy(model)
    assert tflite_lib.needs_unroll(copy) == []
    x = np.random.default_rng(0).normal(size=(3, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(copy(x), model(x), atol=1e-6)


def test_mixed_precision_run_converts_through_a_float32_copy(tmp_path, data_dir):
    """float16 Conv2D/Relu are not TFLite builtins: a mixed-precision run still converts."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("cnn", (SIZE, SIZE, 1), TARGETS, crop=None, width=4, blocks=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert tflite_lib.reduced_precision_layers(model)
    run_dir = make_run(tmp_path / "mixed", data_dir, model=model)
    paths = exporter.export_run(run_dir, tmp_path / "serving", tflite="fp32", on_device=True,
                                train_batch_size=2, progress=False)
    checks = json.loads(paths["report"].read_text())["checks"]
    assert "float32 copy" in checks["tflite_converted_from"]
    assert max(checks["saved_model"]["max_scaled_diff"].values()) <= 1e-5  # the mixed model itself
    assert max(checks["tflite"]["fp32"]["max_scaled_diff"].values()) <= 1e-4
    assert max(checks["on_device"]["max_scaled_diff"].values()) <= 1e-4
    for path in (paths["tflite_fp32"], paths["on_device"]):
        assert not any(op.startswith("Flex") or op == "CUSTOM" for op in builtin_op_names(path))


def test_parse_variants():
    assert tflite_lib.parse_variants("int8, fp32") == ("fp32", "int8")
    assert tflite_lib.parse_variants("all") == tflite_lib.VARIANTS
    assert tflite_lib.parse_variants("") == ()
    from deeplense_tf.export.export_cli import VARIANT_NAMES  # the CLI help, without importing TF

    assert VARIANT_NAMES == tflite_lib.VARIANTS
    with pytest.raises(ConfigError, match="unknown variant 'int4'; choose from fp32, fp16, dynamic_int8, int8"):
        tflite_lib.parse_variants("fp32,int4")


# --- on-device fine-tuning -------------------------------------------------------------------


def _shifted_set(run, images, rng):
    """Targets that the head can learn but the exported one misses: Keras + a shift of 1.5 std."""
    base = run_predict_outputs(run, images)
    return {t: (base[t] + 1.5 * run.target_stats[t]["std"] + rng.normal(0, 0.05, len(images)) * run.target_stats[t]["std"]).astype(np.float32)
            for t in run.targets}


def test_on_device_training_lowers_loss_and_held_out_error(exported, run):
    _, paths = exported
    runtime = tflite_lib.interpreter(paths["on_device"])
    assert set(runtime.get_signature_list()) == {"infer", "train", "get_weights", "set_weights"}
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in builtin_op_names(paths["on_device"]))
    infer, train = runtime.get_signature_runner("infer"), runtime.get_signature_runner("train")

    rng = np.random.default_rng(0)
    images = rng.gamma(0.5, 1.0, size=(40, SIZE, SIZE, 1)).astype(np.float32)
    truth = _shifted_set(run, images, rng)
    train_idx, held_out = np.arange(32), np.arange(32, 40)

    def mae():
        predicted = infer(image=images[held_out])
        return np.mean([np.mean(np.abs(predicted[t] - truth[t][held_out])) / run.target_stats[t]["std"]
                        for t in run.targets])

    before = mae()
    # infer starts as the exported model.
    np.testing.assert_allclose(infer(image=images[:4])["theta_e_arcsec"],
                               run_predict_outputs(run, images[:4])["theta_e_arcsec"], rtol=1e-5, atol=1e-5)
    saved = runtime.get_signature_runner("get_weights")()
    losses = []
    for _epoch in range(15):
        for start in range(0, 32, 8):
            batch = train_idx[start:start + 8]
            result = train(image=images[batch], learning_rate=np.float32(0.05),
                           **{t: truth[t][batch] for t in run.targets})
            losses.append(float(result["loss"]))
    after = mae()
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
    assert after < 0.5 * before, (before, after)

    # set_weights restores what get_weights saved: the app can persist and roll back.
    tuned = runtime.get_signature_runner("get_weights")()
    assert any(not np.array_equal(tuned[k], saved[k]) for k in saved)
    runtime.get_signature_runner("set_weights")(**saved)
    assert mae() == pytest.approx(before, rel=1e-6)


def test_on_device_train_step_matches_keras_adam(exported, run):
    """One `train` call = one Keras Adam step on the Gaussian NLL of the head (encoder frozen)."""
    from deeplense_tf.models import GaussianNLL

    _, paths = exported
    runtime = tflite_lib.interpreter(paths["on_device"])
    rng = np.random.default_rng(1)
    images = rng.gamma(0.5, 1.0, size=(8, SIZE, SIZE, 1)).astype(np.float32)
    truth = _shifted_set(run, images, rng)
    truth["source_x_arcsec"][2] = np.nan  # undefined targets are ignored
    lr = 0.01
    loss = runtime.get_signature_runner("train")(image=images, learning_rate=np.float32(lr), **truth)["loss"]
    updated = runtime.get_signature_runner("get_weights")()

    features = run.embedding_model()(images, training=False)
    nll = GaussianNLL()
    variables, expected_loss = [], 0.0
    with tf.GradientTape() as tape:
        total = 0.0
        for target in run.targets:
            head, clip = run.model.get_layer(f"head_{target}"), run.model.get_layer(target)
            kernel, bias = (tf.Variable(w) for w in head.get_weights())
            variables += [kernel, bias]
            stats = run.target_stats[target]
            z = (truth[target] - stats["mean"]) / stats["std"]
            keep = np.isfinite(z)
            output = clip(tf.matmul(features, kernel) + bias)
            total += nll(z[keep], tf.boolean_mask(output, keep))
        expected_loss = float(total)
    grads = tape.gradient(total, variables)
    optimizer = keras.optimizers.Adam(learning_rate=lr, epsilon=1e-7)
    optimizer.apply_gradients(zip(grads, variables))
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    for i, target in enumerate(run.targets):
        np.testing.assert_allclose(updated[f"{target}_kernel"], variables[2 * i].numpy(), atol=1e-6)
        np.testing.assert_allclose(updated[f"{target}_bias"], variables[2 * i + 1].numpy(), atol=1e-6)


def test_on_device_point_head_huber_step_matches_keras(tmp_path, data_dir):
    """Point head: the on-device step is a Keras Adam step on the Huber loss."""
    keras.utils.set_random_seed(2)
    run = Run.load(make_run(tmp_path / "point", data_dir, head="point", targets=["theta_e_arcsec"]))
    spec = ExportSpec.from_run(run)
    module, _ = on_device.build_module(run.model, spec, train_batch_size=4, point_loss="huber")
    rng = np.random.default_rng(3)
    images = rng.gamma(0.5, 1.0, size=(4, SIZE, SIZE, 1)).astype(np.float32)
    stats = run.target_stats["theta_e_arcsec"]
    # Residuals on both sides of the Huber delta (1 std).
    z = run.model(images)["theta_e_arcsec"][:, 0].numpy() + np.array([-3.0, -0.5, 0.4, 2.0])
    loss = module.train(tf.constant(images), tf.constant((z * stats["std"] + stats["mean"]).astype(np.float32)),
                        tf.constant(0.01))["loss"]

    head = run.model.get_layer("theta_e_arcsec")
    kernel, bias = (tf.Variable(w) for w in head.get_weights())
    features = run.embedding_model()(images, training=False)
    with tf.GradientTape() as tape:
        expected = keras.losses.Huber(delta=1.0)(z[:, None], tf.matmul(features, kernel) + bias)
    optimizer = keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-7)
    optimizer.apply_gradients(zip(tape.gradient(expected, [kernel, bias]), [kernel, bias]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    np.testing.assert_allclose(module.kernels["theta_e_arcsec"].numpy(), kernel.numpy(), atol=1e-6)
    np.testing.assert_allclose(module.biases["theta_e_arcsec"].numpy(), bias.numpy(), atol=1e-6)


def test_on_device_converts_encoders_with_custom_gradients(run):
    """swish (EfficientNet) carries a custom gradient that tf.saved_model cannot save as is."""
    from deeplense_tf.models import SoftClipLogVariance

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Activation("swish", name="stem_activation")(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.Identity(name="embedding")(keras.layers.GlobalAveragePooling2D()(x))
    outputs = {t: SoftClipLogVariance(name=t)(keras.layers.Dense(2, name=f"head_{t}")(x)) for t in TARGETS}
    model = keras.Model(inputs, outputs)
    spec = ExportSpec.from_run(run)
    content = on_device.convert_on_device(model, spec, train_batch_size=2)
    images = np.random.default_rng(0).gamma(0.5, 1.0, size=(3, SIZE, SIZE, 1)).astype(np.float32)
    outputs = tflite_lib.run_tflite(content, images, signature="infer")
    for name, values in keras_reference(model, spec, images).items():
        assert scaled_diff(outputs[name], values) <= 1e-4, name


def test_on_device_refuses_heads_it_cannot_train(run):
    spec = ExportSpec.from_run(run)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    features = keras.layers.Identity(name="embedding")(keras.layers.Flatten()(inputs))
    hidden = keras.layers.Dense(2, activation="relu", name="head_theta_e_arcsec")(features)
    outputs = {"theta_e_arcsec": hidden, "source_x_arcsec": keras.layers.Dense(2, name="x")(features)}
    with pytest.raises(ExportError, match="head layer 'head_theta_e_arcsec' is not a linear Dense"):
        on_device.head_parameters(keras.Model(inputs, outputs), spec)


# --- CLI, versions, bad input, atomicity -------------------------------------------------------


def test_cli_exports_next_version_and_refuses_existing_without_overwrite(exported, run_dir, capsys):
    out, _ = exported
    assert cli.main(["export", "--run", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "signature serving_default: image [-1, 16, 16, 1] -> " in printed
    assert f"wrote version_dir: {out / 'deeplense' / '2'}" in printed
    assert exporter.existing_versions(out / "deeplense") == [1, 2]

    before = (out / "deeplense" / "1" / "export.json").read_text()
    assert cli.main(["export", "--run", str(run_dir), "--out", str(out), "--version", "1"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "deeplense" / "1" / "export.json").read_text() == before

    assert cli.main(["export", "--run", str(run_dir), "--out", str(out), "--version", "1",
                     "--overwrite"]) == 0
    capsys.readouterr()
    report = json.loads((out / "deeplense" / "1" / "export.json").read_text())
    assert "tflite" not in report["checks"]  # the replacement, not the original
    assert not (out / "deeplense" / "1" / "tflite").exists()
    assert_nothing_left(out, {"models.config", "batching_parameters.txt", "deeplense",
                              "deeplense/1", "deeplense/2"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tflite", "fp32,int4"], "--tflite: unknown variant 'int4'"),
        (["--version", "0"], "--version '0': must be a positive integer"),
        (["--name", "../up"], "--name '../up'"),
    ],
)
def test_cli_rejects_bad_options_before_writing(tmp_path, run_dir, capsys, argv, message):
    out = tmp_path / "serving"
    assert cli.main(["export", "--run", str(run_dir), "--out", str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("deeplense export: error: ") and message in err
    assert not out.exists()


def test_incomplete_or_foreign_run_is_refused(tmp_path, run_dir, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    info = json.loads((broken / "run.json").read_text())
    (broken / "run.json").write_text(json.dumps({**info, "complete": False}))
    out = tmp_path / "serving"
    with pytest.raises(RunError, match="incomplete run"):
        exporter.export_run(broken, out, progress=False)
    (broken / "run.json").write_text(json.dumps({**info, "format_version": 99}))
    assert cli.main(["export", "--run", str(broken), "--out", str(out)]) == 1
    assert "run format_version 99" in capsys.readouterr().err
    (broken / "run.json").write_text(json.dumps(info))
    (broken / "model.keras").unlink()
    with pytest.raises(RunError, match="missing model.keras"):
        exporter.export_run(broken, out, progress=False)
    assert not out.exists()


def test_int8_without_training_data_names_the_fix(tmp_path, run_dir):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = (moved / "config.yaml").read_text()
    data_path = load_config(moved / "config.yaml")["data"]["path"]
    (moved / "config.yaml").write_text(config.replace(data_path, str(tmp_path / "gone")))
    with pytest.raises(ExportError, match="int8 needs calibration images .* pass --calibration-data PATH"):
        exporter.export_run(moved, tmp_path / "serving", tflite="int8", progress=False)
    assert not (tmp_path / "serving").exists()


def test_failure_mid_export_leaves_no_version_folder(tmp_path, run_dir, monkeypatch):
    """The SavedModel is written, then TFLite conversion fails: nothing becomes visible."""
    out = tmp_path / "serving"

    def fail(*args, **kwargs):
        assert any(p.name.startswith(".tmp-export-") for p in (out / "deeplense").iterdir())
        raise ExportError("TFLite fp32: simulated converter failure")

    monkeypatch.setattr(tflite_lib, "convert_variant", fail)
    with pytest.raises(ExportError, match="simulated converter failure"):
        exporter.export_run(run_dir, out, tflite="fp32", progress=False)
    assert not out.exists()  # created by this export, removed with it

    # An existing version survives a failed --overwrite untouched.
    existing = out / "deeplense" / "1"
    existing.mkdir(parents=True)
    (existing / "saved_model.pb").write_text("previous")

    def fail_checks(*args, **kwargs):
        raise ExportError("SavedModel output 'theta_e_arcsec' differs (simulated)")

    monkeypatch.setattr(savedmodel, "verify_saved_model", fail_checks)
    with pytest.raises(ExportError, match="simulated"):
        exporter.export_run(run_dir, out, version=1, overwrite=True, progress=False)
    assert (existing / "saved_model.pb").read_text() == "previous"
    assert_nothing_left(out, {"deeplense", "deeplense/1", "deeplense/1/saved_model.pb"}, depth=3)


@keras.saving.register_keras_serializable(package="deeplense_test")
class AsinhLayer(keras.layers.Layer):
    """Uses tf.math.asinh, which has no TFLite builtin."""

    def call(self, x):
        return tf.math.asinh(x)


def test_architecture_without_builtins_is_refused_cleanly(tmp_path, data_dir):
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(AsinhLayer(name="preprocess")(inputs))
    x = keras.layers.Identity(name="embedding")(x)
    head = keras.layers.Dense(2, name="head_theta_e_arcsec")(x)
    from deeplense_tf.models import SoftClipLogVariance

    model = keras.Model(inputs, {"theta_e_arcsec": SoftClipLogVariance(name="theta_e_arcsec")(head)})
    run_dir = make_run(tmp_path / "asinh", data_dir, model=model, targets=["theta_e_arcsec"])
    out = tmp_path / "serving"
    with pytest.raises(ExportError, match="TFLite fp32: the model uses ops with no TFLite builtin: Asinh"):
        exporter.export_run(run_dir, out, tflite="fp32", progress=False)
    assert not out.exists()


def test_version_helpers(tmp_path):
    assert exporter.next_version(tmp_path / "none") == 1
    for name in ("1", "3", ".tmp-export-4-x", "notes"):
        (tmp_path / name).mkdir()
    assert exporter.existing_versions(tmp_path) == [1, 3]
    assert exporter.next_version(tmp_path) == 4
    assert exporter.check_version("2") == 2
    for bad in ("0", "-1", "1.5", "two"):
        with pytest.raises(ConfigError):
            exporter.check_version(bad)
