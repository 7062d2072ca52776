"""Shared test set-up: quiet TensorFlow, headless plotting, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same global seeds, whatever ran before it."""
    import keras

    keras.utils.set_random_seed(0)  # seeds Python's random, NumPy's global RNG and TensorFlow
    yield
