"""`deeplense_tf.models.cut`, the one copy of "cut the model at a layer" that clustering,
export, the registry and `Run.embedding_model` share."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from deeplense_tf.errors import ConfigError
from deeplense_tf.models import build_model
from deeplense_tf.models.cut import EMBEDDING_LAYER, POOLINGS, cut_model, layer_names


@pytest.fixture(scope="module")
def model():
    return build_model("cnn", (16, 16, 1), ["theta_e_arcsec"], crop=None, normalization="none",
                       width=4, blocks=2, convs_per_block=1)


def test_default_cut_is_the_embedding(model):
    images = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    cut = cut_model(model)
    assert cut.name == f"{model.name}_{EMBEDDING_LAYER}"
    expected = model.get_layer(EMBEDDING_LAYER).output.shape[1:]
    features = np.asarray(cut(images, training=False))
    assert features.shape == (3, *expected)
    # Shares the weights: the same numbers as the model's own embedding layer output.
    direct = np.asarray(cut_model(model, EMBEDDING_LAYER, pooling="mean")(images, training=False))
    np.testing.assert_allclose(features, direct, rtol=1e-6)


def test_no_pooling_keeps_a_feature_map_and_pooling_makes_a_vector(model):
    conv = next(layer.name for layer in model.layers if "conv" in layer.name)
    images = np.random.default_rng(1).random((2, 16, 16, 1)).astype(np.float32)
    raw = np.asarray(cut_model(model, conv)(images, training=False))
    assert raw.ndim == 4 and raw.shape[1:3] == (16, 16)
    pooled = np.asarray(cut_model(model, conv, pooling="mean")(images, training=False))
    np.testing.assert_allclose(pooled, raw.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="flattens to"):
        cut_model(model, conv, pooling="flatten", max_flat_features=10)


def test_unknown_layer_names_the_valid_ones(model):
    with pytest.raises(ConfigError, match="has no layer 'nope'; valid layer names: image, preprocess"):
        cut_model(model, "nope")
    assert layer_names(model)[:2] == ["image", "preprocess"]


def test_clustering_offers_the_cuts_choices_without_starting_tensorflow():
    """clustering.embedding restates the default layer and the poolings so that
    `deeplense cluster --help` does not import TensorFlow; they must agree with the cut."""
    from deeplense_tf.clustering import embedding

    assert embedding.DEFAULT_LAYER == EMBEDDING_LAYER
    assert embedding.POOLINGS == POOLINGS
    code = "import sys, deeplense_tf.clustering.cluster_cli; assert 'tensorflow' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
