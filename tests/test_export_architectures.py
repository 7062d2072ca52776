"""Every registered architecture exports: SavedModel, all four TFLite variants with builtin
ops only (cnn_lstm's LSTM included), and the on-device training model.

Slow (default-size models at 64x64 pixels, minutes in all): `pytest -m slow tests/test_export_architectures.py`.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from data_fixtures import write_dataset
from test_export import builtin_op_names, make_run, run_predict_outputs, scaled_diff

from deeplense_tf.export import exporter
from deeplense_tf.export import tflite as tflite_lib
from deeplense_tf.models import MODEL_NAMES
from deeplense_tf.runs import Run

SIZE = 64
TARGETS = ["theta_e_arcsec", "source_x_arcsec"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "blobs", size=SIZE,
                         counts={"train": 24, "val": 6, "test": 12})


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_architecture_exports_everywhere_with_builtins(tmp_path, data_dir, name):
    from deeplense_tf.data import load_examples
    from deeplense_tf.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(name, (SIZE, SIZE, 1), TARGETS, crop=48)
    run_dir = make_run(tmp_path / name, data_dir, model=model, name=name, options={},
                       input_shape=(SIZE, SIZE, 1), targets=TARGETS)
    paths = exporter.export_run(run_dir, tmp_path / "serving", tflite="all", on_device=True,
                                progress=False)
    report = json.loads(paths["report"].read_text())
    assert max(report["checks"]["saved_model"]["max_scaled_diff"].values()) <= 1e-5

    run = Run.load(run_dir)
    images = load_examples(data_dir, split="test").images
    expected = run_predict_outputs(run, images)
    for variant in tflite_lib.VARIANTS:
        path = paths[f"tflite_{variant}"]
        ops = builtin_op_names(path)
        assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), (variant, ops)
        outputs = tflite_lib.run_tflite(path, images)
        for output, values in expected.items():
            assert np.isfinite(outputs[output]).all(), (variant, output)
            if variant == "fp32":
                assert scaled_diff(outputs[output], values) <= 1e-4, output
    assert not any(op.startswith("Flex") for op in builtin_op_names(paths["on_device"]))
    print(name, {v: (c["bytes"], max(c["max_abs_diff"].values()))
                 for v, c in report["checks"]["tflite"].items()},
          "on_device", report["checks"]["on_device"]["bytes"])
