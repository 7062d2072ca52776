"""The Student-t head: its loss against scipy, its output layer's ranges, save/reload,
one training step, and the calibration offset scaling its std exactly."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from roundtrip import assert_keras_roundtrip
from scipy import stats

from deeplense_tf.errors import ConfigError
from deeplense_tf.models import build_model
from deeplense_tf.models.heads import (
    DF_MAX,
    DF_MIN,
    StudentTNLL,
    StudentTOutput,
    make_losses,
    make_metrics,
    output_width,
)
from deeplense_tf.predictive import Predictive

TARGET = "log10_m_axion_ev"
SHAPE = (16, 16, 1)


def test_nll_matches_scipy_and_predictive():
    y = np.array([0.3, -1.2, 4.0], np.float32)
    mean = np.array([0.0, -1.0, 0.5])
    log_var = np.array([0.2, -2.0, 1.0])
    df = np.array([3.0, 8.0, 50.0])
    y_pred = np.stack([mean, log_var, df], axis=1).astype(np.float32)
    loss = StudentTNLL(reduction=None)(y, y_pred).numpy()
    std = np.exp(0.5 * log_var)
    scale = std * np.sqrt((df - 2) / df)
    expected = -stats.t.logpdf(y, df, loc=mean, scale=scale)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(loss, -Predictive(mean, std, df).logpdf(y), rtol=1e-4)


def test_output_layer_bounds_df_and_variance():
    layer = StudentTOutput()
    raw = tf.constant([[0.0, 0.0, 0.0], [1.0, 1e4, 1e4], [-1.0, -1e4, -1e4]])
    out = layer(raw).numpy()
    assert out[0, 2] == pytest.approx(2.0 + math.sqrt((DF_MIN - 2) * (DF_MAX - 2)), rel=1e-5)
    assert DF_MIN - 1e-3 <= out[:, 2].min() and out[:, 2].max() <= DF_MAX + 1e-3
    assert out[1, 2] > 0.99 * DF_MAX and out[2, 2] < 1.01 * DF_MIN
    assert np.all(np.abs(out[:, 1]) <= layer.limit)
    with pytest.raises(ConfigError, match="df_min"):
        StudentTOutput(df_min=2.0)


def test_losses_metrics_and_width():
    assert isinstance(make_losses("student_t", [TARGET])[TARGET], StudentTNLL)
    assert make_metrics("student_t", [TARGET])[TARGET][0].name == "mae"
    assert [output_width(h) for h in ("point", "gaussian", "student_t")] == [1, 2, 3]


def test_model_trains_reloads_and_offset_scales_only_the_std(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("cnn", SHAPE, [TARGET], head="student_t", width=4, blocks=2, convs_per_block=1)
    images = np.random.default_rng(0).gamma(2.0, 0.1, size=(8, *SHAPE)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(8, 1)).astype(np.float32)
    model.compile("adam", loss=make_losses("student_t", [TARGET]), metrics=make_metrics("student_t", [TARGET]))
    history = model.fit(images, {TARGET: y}, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    before = model(images, training=False)[TARGET].numpy()
    assert before.shape == (8, 3)
    layer = model.get_layer(TARGET)
    layer.log_variance_offset.assign(2.0 * math.log(1.5))  # what calibration does
    after = assert_keras_roundtrip(model, images, tmp_path)(images, training=False)[TARGET].numpy()
    np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-6)
    np.testing.assert_allclose(np.exp(0.5 * (after[:, 1] - before[:, 1])), 1.5, rtol=1e-5)
    np.testing.assert_allclose(after[:, 2], before[:, 2], atol=1e-5)
