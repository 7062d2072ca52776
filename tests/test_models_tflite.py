"""Every architecture converts to TFLite with builtin ops only and runs in LiteRT.

Slow (minutes: EfficientNet and the unrolled LSTM take a while to convert); run
with `pytest -m slow tests/test_models_tflite.py`. Default configurations at
64x64 with the benchmark's 48 px crop, Gaussian head, two targets.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from deeplense_tf.models import MODEL_NAMES, build_model

pytestmark = pytest.mark.slow

TARGETS = ["log10_m_axion", "theta_e_arcsec"]
CASES = [(name, {}) for name in MODEL_NAMES] + [("cnn_lstm", {"view": "raster"})]


def convert_builtins_only(model) -> bytes:
    """fp32 TFLite flatbuffer; raises if any op needs the Flex (SELECT_TF_OPS) delegate."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda c: str(c))
def test_converts_with_builtins_and_matches_keras(name, options):
    from ai_edge_litert.interpreter import Interpreter

    model = build_model(name, (64, 64, 1), TARGETS, crop=48, **options)
    flatbuffer = convert_builtins_only(model)
    interpreter = Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner()
    images = np.random.default_rng(0).gamma(2.0, 0.5, size=(3, 64, 64, 1)).astype("float32")
    assert list(runner.get_input_details()) == ["image"]
    got = runner(image=images)  # the runner resizes the dynamic batch itself
    expected = model(images, training=False)
    assert set(got) == set(TARGETS)
    for target in TARGETS:
        np.testing.assert_allclose(got[target], expected[target].numpy(), atol=1e-4, rtol=1e-4)
