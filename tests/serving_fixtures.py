"""Tiny SavedModels that follow the export contract, for the serving tests.

docs/architecture.md ("Exported SavedModel"): ``DIR/<name>/<version>/`` with
signature ``serving_default`` (input ``image`` float32 [None, H, W, 1]; outputs
``<target>`` and ``<target>_std`` float32 [None]; NaN / Inf pixels raise
InvalidArgument inside the graph) and ``embed`` (output ``embedding`` [None, D]).

The fixture's numbers are simple enough to check with numpy (`expected_outputs`):
``theta_e = scale * mean(image)``, ``theta_e_std = scale * (std(image) + 0.1)``,
``embedding = scale * [mean, max, min]``. Versions differ by `scale`.

To run the contract tests against a real TF Serving::

    python tests/serving_fixtures.py /tmp/tfs     # writes /tmp/tfs/deeplense/{1,2} + models.config
    docker run --rm -p 8500:8500 -p 8501:8501 -v /tmp/tfs:/models tensorflow/serving \\
        --model_config_file=/models/models.config
    DEEPLENSE_TFSERVING_URL=http://127.0.0.1:8501 pytest tests/test_serving_contract.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

MODEL_NAME = "deeplense"
TARGET = "theta_e"
IMAGE_SIZE = 8
VERSION_SCALES = {1: 1.0, 2: 2.0}  # the versions the tests serve, and what tells them apart
LABELS = {"stable": 1, "canary": 2}


def write_fixture_model(base_dir: str | Path, version: int, *, scale: float = 1.0,
                        image_size: int = IMAGE_SIZE, target: str = TARGET) -> Path:
    """Writes version `version` under `base_dir` (written aside, then renamed into place)."""
    import tensorflow as tf

    class FixtureModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(float(scale), trainable=False)

        @tf.function(input_signature=[
            tf.TensorSpec([None, image_size, image_size, 1], tf.float32, name="image")])
        def serve(self, image):
            # Checked inside the graph, as the exporter does: TF Serving itself passes
            # whatever shape it is sent straight to the graph.
            image = tf.ensure_shape(image, [None, image_size, image_size, 1])
            tf.debugging.assert_all_finite(image, "image has NaN or Inf pixels")
            mean = tf.reduce_mean(image, axis=[1, 2, 3])
            std = tf.math.reduce_std(image, axis=[1, 2, 3])
            return {target: self.scale * mean, f"{target}_std": self.scale * (std + 0.1)}

        @tf.function(input_signature=[
            tf.TensorSpec([None, image_size, image_size, 1], tf.float32, name="image")])
        def embed(self, image):
            image = tf.ensure_shape(image, [None, image_size, image_size, 1])
            tf.debugging.assert_all_finite(image, "image has NaN or Inf pixels")
            axes = [1, 2, 3]
            features = tf.stack([tf.reduce_mean(image, axes), tf.reduce_max(image, axes),
                                 tf.reduce_min(image, axes)], axis=1)
            return {"embedding": self.scale * features}

    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    final = base_dir / str(version)
    staging = base_dir / f".writing-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    module = FixtureModel()
    tf.saved_model.save(module, str(staging),
                        signatures={"serving_default": module.serve, "embed": module.embed})
    staging.rename(final)
    return final


def write_half_plus_two(base_dir: str | Path, version: int = 123) -> Path:
    """TF Serving's own test model, ``half_plus_two`` (y = 0.5 x + 2), as a TF1 SavedModel.

    The signatures its tests call (http_rest_api_handler_test.cc,
    tensorflow_model_server_test.py): ``serving_default`` (predict, input ``x`` float
    [-1, 1], output ``y``), ``regress_x_to_y`` and ``classify_x_to_y`` (tf.Example input
    with feature ``x``, output ``outputs`` / ``scores``). Added for the parity tests:
    ``classify_with_classes`` (classes "half" and "double" with scores y and 2y),
    ``two_inputs`` (``a``, ``b`` float [-1] -> their sums), ``complex_out`` (complex64 y)
    and ``none_out`` (the x values above 1e9: no rows for ordinary x).
    """
    import tensorflow as tf

    tf1 = tf.compat.v1
    base_dir = Path(base_dir)
    final = base_dir / str(version)
    staging = base_dir / f".writing-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.Variable(0.5, name="a")
        b = tf1.Variable(2.0, name="b")
        serialized = tf1.placeholder(tf.string, name="tf_example")
        parsed = tf1.io.parse_example(serialized, {"x": tf1.io.FixedLenFeature([1], tf.float32)})
        y_ex = tf.add(tf.multiply(a, parsed["x"]), b, name="y_ex")
        x = tf1.placeholder(tf.float32, shape=[None, 1], name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        labels = tf.tile(tf.constant([["half", "double"]]), [tf.shape(y_ex)[0], 1])
        in_a = tf1.placeholder(tf.float32, shape=[None], name="in_a")
        in_b = tf1.placeholder(tf.float32, shape=[None], name="in_b")
        signature = tf1.saved_model
        signatures = {
            "serving_default": signature.predict_signature_def({"x": x}, {"y": y}),
            "regress_x_to_y": signature.regression_signature_def(serialized, y_ex),
            "classify_x_to_y": signature.classification_signature_def(serialized, None, y_ex),
            "classify_with_classes": signature.classification_signature_def(
                serialized, labels, tf.concat([y_ex, 2 * y_ex], axis=1)),
            "two_inputs": signature.predict_signature_def(
                {"a": in_a, "b": in_b}, {"sum_a": tf.reduce_sum(in_a), "sum_b": tf.reduce_sum(in_b)}),
            "complex_out": signature.predict_signature_def({"x": x}, {"z": tf.complex(x, x)}),
            "none_out": signature.predict_signature_def(
                {"x": x}, {"big": tf.boolean_mask(x, x > 1e9)}),
        }
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            builder = tf1.saved_model.Builder(str(staging))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    base_dir.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    return final


def expected_outputs(images: np.ndarray, scale: float = 1.0, target: str = TARGET) -> dict:
    """What the fixture's serving_default returns for `images` [N, H, W, 1]."""
    x = np.asarray(images, dtype=np.float64)
    return {
        target: (scale * x.mean(axis=(1, 2, 3))).astype(np.float32),
        f"{target}_std": (scale * (x.std(axis=(1, 2, 3)) + 0.1)).astype(np.float32),
    }


def expected_embedding(images: np.ndarray, scale: float = 1.0) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    axes = (1, 2, 3)
    return (scale * np.stack([x.mean(axes), x.max(axes), x.min(axes)], axis=1)).astype(np.float32)


def random_images(n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, image_size, image_size, 1)).astype(np.float32)


MODELS_CONFIG = """model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
{labels}
  }}
}}
"""


def write_fixture_models(root: str | Path, config_base: str | None = None) -> Path:
    """Writes every test version under ``root/deeplense/`` and ``root/models.config``.

    `config_base` is the base path written into models.config (``/models/deeplense``
    for the docker command in the module docstring); default: the real folder.
    """
    root = Path(root)
    for version, scale in VERSION_SCALES.items():
        if not (root / MODEL_NAME / str(version)).exists():
            write_fixture_model(root / MODEL_NAME, version, scale=scale)
    labels = "\n".join(f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in LABELS.items())
    config = MODELS_CONFIG.format(name=MODEL_NAME, labels=labels,
                                  base=config_base or str((root / MODEL_NAME).resolve()))
    (root / "models.config").write_text(config)
    return root / "models.config"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/serving_fixtures.py OUT_DIR")
    path = write_fixture_models(sys.argv[1], config_base=f"/models/{MODEL_NAME}")
    print(f"wrote {Path(sys.argv[1]) / MODEL_NAME} versions {sorted(VERSION_SCALES)} and {path}")
