"""Model registry, architectures, heads and custom layers (deeplense_tf.models).

Training steps run compiled (Keras's `tf.function` train step, the graph path every
training in the package takes), never eagerly: the eager `train_on_batch` of a conv net
reaches oneDNN's `conv2d_backprop_filter` kernel, which crashes with a segmentation fault
on some AVX-512 CPUs (seen on AMD EPYC; tensorflow#57749, oneDNN#5942), while the compiled
step passes there. Tracing costs a few seconds per model, the price of testing the path
users take. `.ci/run` runs this module with oneDNN on and off (`TF_ENABLE_ONEDNN_OPTS=0`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from roundtrip import (
    assert_config_roundtrip,
    assert_keras_roundtrip,
    assert_layer_config_roundtrip,
)

from deeplense_tf.data import transforms
from deeplense_tf.errors import ConfigError
from deeplense_tf.models import (
    LOG_VAR_LIMIT,
    MODEL_NAMES,
    FoldedTimeDistributed,
    GaussianNLL,
    ImagePreprocess,
    PatchSequence,
    PolarUnwrap,
    SoftClipLogVariance,
    batchnorm_layers,
    build_model,
    embedding_model,
    encoder_layers,
    head_layers,
    make_losses,
    make_metrics,
    model_options,
    reestimate_batchnorm_statistics,
    set_encoder_trainable,
    split_gaussian,
)

TARGETS = ["log10_m_axion", "theta_e_arcsec"]
SHAPE = (64, 64, 1)

# Tiny configurations: every architecture's topology, a fraction of its size.
TINY = {
    "cnn": {"width": 4, "blocks": 2},
    "resnet": {"depth": 18, "width": 4},
    "efficientnet": {"variant": "b0"},
    "vit": {"dim": 16, "depth": 1, "heads": 2, "patch_size": 8},
    "cnn_lstm": {
        "steps": 8,
        "angles_per_step": 2,
        "radii": 8,
        "width": 4,
        "frame_features": 8,
        "lstm_units": 8,
    },
}
TINY_RASTER = {
    "view": "raster",
    "patch_size": 16,
    "width": 4,
    "frame_features": 8,
    "lstm_units": 8,
    "bidirectional": False,
}


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.5, size=(n, *SHAPE)).astype("float32")


def _targets(n=2, seed=1):
    rng = np.random.default_rng(seed)
    return {t: rng.normal(size=(n, 1)).astype("float32") for t in TARGETS}


@pytest.fixture(scope="module")
def efficientnet_models():
    """EfficientNetV2-B0 takes seconds to build: once per head for the module."""
    return {
        head: build_model(
            "efficientnet", SHAPE, TARGETS, head=head, crop=32, **TINY["efficientnet"]
        )
        for head in ("gaussian", "point")
    }


def _model(name, head, efficientnet_models, **extra):
    if name == "efficientnet" and not extra:
        return efficientnet_models[head]
    options = {**(TINY_RASTER if name == "cnn_lstm_raster" else TINY[name]), **extra}
    arch = "cnn_lstm" if name == "cnn_lstm_raster" else name
    return build_model(arch, SHAPE, TARGETS, head=head, crop=48, **options)


ARCHS = ["cnn", "resnet", "efficientnet", "vit", "cnn_lstm", "cnn_lstm_raster"]


def test_registry_lists_every_architecture():
    assert set(MODEL_NAMES) >= {"cnn", "resnet", "efficientnet", "vit", "cnn_lstm"}


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("head", ["gaussian", "point"])
def test_builds_and_trains_one_step(name, head, efficientnet_models):
    model = _model(name, head, efficientnet_models)
    assert model.input.name == "image" or model.inputs[0].name == "image"
    assert model.get_layer("preprocess").__class__ is ImagePreprocess
    images, targets = _images(), _targets()
    outputs = model(images, training=False)
    assert set(outputs) == set(TARGETS)
    width = 2 if head == "gaussian" else 1
    for target in TARGETS:
        assert tuple(outputs[target].shape) == (2, width)
        assert outputs[target].dtype == "float32"
    embedding = model.get_layer("embedding").output
    assert len(embedding.shape) == 2

    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=make_losses(head, TARGETS, point_loss="huber"),
        metrics=make_metrics(head, TARGETS),
    )
    trainable = [w.numpy().copy() for w in model.trainable_weights]
    logs = model.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert f"{TARGETS[0]}_mae" in logs
    changed = [not np.array_equal(a, w.numpy()) for a, w in zip(trainable, model.trainable_weights)]
    assert np.mean(changed) > 0.9, "one training step should update (nearly) every weight"


@pytest.mark.parametrize("name", ARCHS)
def test_keras_and_config_roundtrip(name, efficientnet_models, tmp_path):
    head = "gaussian" if name in ("cnn", "efficientnet", "cnn_lstm") else "point"
    model = _model(name, head, efficientnet_models)
    images, targets = _images(), _targets()
    # One training step moves the BatchNorm statistics off their initial values,
    # so a reload that lost them would show. Compiled with our losses and metrics: a
    # saved model.keras must come back compiled with them.
    model.compile(
        optimizer="sgd",
        loss=make_losses(head, TARGETS),
        metrics=make_metrics(head, TARGETS),
    )
    model.train_on_batch(images, targets)
    reloaded = assert_keras_roundtrip(model, images, tmp_path, atol=1e-6)
    assert reloaded.get_layer("embedding") is not None
    loss_type = GaussianNLL if head == "gaussian" else keras.losses.Huber
    assert all(isinstance(reloaded.loss[t], loss_type) for t in TARGETS)
    expected = model.evaluate(images, targets, verbose=0, return_dict=True)
    got = reloaded.evaluate(images, targets, verbose=0, return_dict=True)
    assert set(got) == set(expected) and f"{TARGETS[1]}_mae" in got
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)
    if name != "efficientnet":  # stock Keras layers; load_model above rebuilt it from config
        assert_config_roundtrip(model, images, atol=1e-6)


def test_custom_layer_configs_roundtrip():
    layers = [
        ImagePreprocess("asinh", 40),
        PolarUnwrap(8, 3, 5, max_radius=12.5, center=(30.0, 31.5)),
        PatchSequence(6),
        SoftClipLogVariance(4.0),
        FoldedTimeDistributed(keras.layers.Dense(3)),
    ]
    for layer in layers:
        clone = assert_layer_config_roundtrip(layer)
        assert clone.__class__ is layer.__class__
    loss = GaussianNLL(log_var_limit=6.0)
    clone = GaussianNLL.from_config(loss.get_config())
    assert clone.log_var_limit == 6.0
    assert (
        keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(loss)
        ).log_var_limit
        == 6.0
    )


def test_resnet18_parameter_count_is_pinned():
    # Default resnet (depth 18, width 32) on the 2-channel peak_asinh input with one
    # Gaussian target: the 2.8M-parameter network of the reference experiment.
    model = build_model("resnet", SHAPE, ["log10_m_axion"], crop=48)
    # 2,800,066 weights plus the Gaussian head's one non-trainable calibration offset.
    assert model.count_params() == 2_800_067
    # Image size does not change a conv net's parameter count.
    assert build_model("resnet", (150, 150, 1), ["log10_m_axion"]).count_params() == 2_800_067


def test_unknown_model_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet50'.*cnn.*vit"):
        build_model("resnet50", SHAPE, TARGETS)
    with pytest.raises(ConfigError, match="unknown option 'widht' for model 'cnn'"):
        build_model("cnn", SHAPE, TARGETS, widht=8)
    with pytest.raises(ConfigError, match="depth=50"):
        build_model("resnet", SHAPE, TARGETS, depth=50)
    with pytest.raises(ConfigError, match="unknown head"):
        build_model("cnn", SHAPE, TARGETS, head="quantile")
    with pytest.raises(ConfigError, match="crop 80"):
        build_model("cnn", SHAPE, TARGETS, crop=80)
    with pytest.raises(ConfigError, match="unknown normalization"):
        build_model("cnn", SHAPE, TARGETS, normalization="log")
    with pytest.raises(ConfigError, match="heads=3"):
        build_model("vit", SHAPE, TARGETS, dim=16, heads=3)
    with pytest.raises(ConfigError, match="no targets"):
        build_model("cnn", SHAPE, [])
    assert (
        "bn_momentum" in model_options("resnet") and model_options("resnet")["bn_momentum"] == 0.95
    )
    assert "dropout" in model_options("cnn_lstm")


def test_default_bn_momentum_reaches_every_batchnorm(efficientnet_models):
    for name in ("cnn", "resnet", "vit", "cnn_lstm"):
        bns = batchnorm_layers(build_model(name, SHAPE, TARGETS, crop=48, **TINY[name]))
        assert bns and all(bn.momentum == 0.95 for bn in bns), name
    bns = batchnorm_layers(efficientnet_models["point"])
    assert len(bns) > 50 and all(bn.momentum == 0.95 for bn in bns)


def test_encoder_split_and_freezing():
    model = build_model("cnn", SHAPE, TARGETS, crop=48, dropout=0.2, **TINY["cnn"])
    encoder = encoder_layers(model)
    assert encoder[0].name == "preprocess" and encoder[-1].name == "embedding"
    head = {layer.name for layer in head_layers(model)}
    assert head == {"head_dropout", *TARGETS, *(f"head_{t}" for t in TARGETS)}
    set_encoder_trainable(model, False)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {f"head_{t}" for t in TARGETS}
    set_encoder_trainable(model, True)
    assert len(model.trainable_weights) > 2 * len(TARGETS)
    features = embedding_model(model)(_images())
    assert tuple(features.shape) == (2, 4 * 2)  # cnn: width * 2**(blocks-1)


def test_mixed_precision_keeps_heads_and_preprocess_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("cnn", SHAPE, TARGETS, crop=48, **TINY["cnn"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("cnn_block0_conv0").compute_dtype == "float16"
    assert model.get_layer("preprocess").compute_dtype == "float32"
    outputs = model(_images(), training=False)
    assert all(v.dtype == "float32" for v in outputs.values())
    model.compile(optimizer="adam", loss=make_losses("gaussian", TARGETS))
    logs = model.train_on_batch(_images(), _targets(), return_dict=True)
    assert np.isfinite(logs["loss"])


# --- heads and losses -----------------------------------------------------------


def test_gaussian_nll_matches_numpy():
    y = np.array([[0.5], [-1.0], [2.0], [0.0]], dtype="float32")
    pred = np.array([[0.0, 0.0], [-0.5, -2.0], [1.0, 1.5], [0.3, -4.0]], dtype="float32")
    mean, log_var = pred[:, 0], pred[:, 1]
    per_example = 0.5 * (log_var + (y[:, 0] - mean) ** 2 / np.exp(log_var) + np.log(2 * np.pi))
    loss = GaussianNLL()
    np.testing.assert_allclose(float(loss(y, pred)), per_example.mean(), rtol=1e-6)
    np.testing.assert_allclose(loss.call(y, pred).numpy(), per_example, rtol=1e-6)
    # y_true given as [B] is the same loss
    np.testing.assert_allclose(float(loss(y[:, 0], pred)), per_example.mean(), rtol=1e-6)


def test_gaussian_nll_is_finite_for_extreme_log_variances():
    y = np.array([[1e3], [0.0], [-1e3], [5.0]], dtype="float32")
    pred = np.array([[0.0, -1e4], [0.0, 1e4], [0.0, -80.0], [0.0, 80.0]], dtype="float32")
    loss = GaussianNLL()
    pred_tensor = tf.constant(pred)
    with tf.GradientTape() as tape:
        tape.watch(pred_tensor)
        value = loss(y, pred_tensor)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(tape.gradient(value, pred_tensor).numpy()))
    # Clipped to the limit: the first example's log-variance acts as -LOG_VAR_LIMIT.
    expected = 0.5 * (-LOG_VAR_LIMIT + 1e6 * np.exp(LOG_VAR_LIMIT) + np.log(2 * np.pi))
    np.testing.assert_allclose(loss.call(y, pred).numpy()[0], expected, rtol=1e-5)


def test_soft_clip_log_variance_is_bounded_and_smooth():
    layer = SoftClipLogVariance()
    raw = tf.constant([[1.0, 0.0], [2.0, 0.3], [3.0, 1e4], [4.0, -1e4]])
    with tf.GradientTape() as tape:
        tape.watch(raw)
        out = layer(raw)
        log_var = out[:, 1]
    out_np = out.numpy()
    np.testing.assert_array_equal(out_np[:, 0], [1.0, 2.0, 3.0, 4.0])  # means untouched
    np.testing.assert_allclose(
        out_np[1, 1], LOG_VAR_LIMIT * np.tanh(0.3 / LOG_VAR_LIMIT), rtol=1e-6
    )
    assert np.all(np.abs(out_np[:, 1]) <= LOG_VAR_LIMIT)
    grad = tape.gradient(log_var, raw).numpy()[:, 1]
    np.testing.assert_allclose(grad[:2], [1.0, 1.0 - np.tanh(0.03) ** 2], rtol=1e-5)


def test_point_losses_match_numpy():
    y = np.array([[0.0], [1.0], [-2.0], [3.0]], dtype="float32")
    pred = np.array([[0.5], [-1.0], [-2.2], [0.0]], dtype="float32")
    err = pred - y
    mse = make_losses("point", ["t"], point_loss="mse")["t"]
    np.testing.assert_allclose(float(mse(y, pred)), np.mean(err**2), rtol=1e-6)
    huber = make_losses("point", ["t"], point_loss="huber", huber_delta=1.0)["t"]
    a = np.abs(err)
    expected = np.where(a <= 1.0, 0.5 * a**2, a - 0.5).mean()
    np.testing.assert_allclose(float(huber(y, pred)), expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="point_loss"):
        make_losses("point", ["t"], point_loss="l1")
    assert isinstance(make_losses("gaussian", ["a", "b"])["b"], GaussianNLL)


def test_split_gaussian_numpy_and_tensor():
    out = np.array([[1.0, 0.0], [-2.0, np.log(4.0)]], dtype="float32")
    mean, std = split_gaussian(out)
    np.testing.assert_allclose(mean, [1.0, -2.0])
    np.testing.assert_allclose(std, [1.0, 2.0], rtol=1e-6)
    mean_t, std_t = split_gaussian(tf.constant(out))
    np.testing.assert_allclose(std_t.numpy(), [1.0, 2.0], rtol=1e-6)


# --- layers -----------------------------------------------------------------------


@pytest.mark.parametrize("method", transforms.NORMALIZATIONS)
def test_image_preprocess_matches_transforms(method):
    images = _images(3) * np.array([1.0, 100.0, 1e-3], dtype="float32")[:, None, None, None]
    images[0, :5, :5, 0] = -0.3  # negative pixels exercise the odd asinh
    layer = ImagePreprocess(method, 40)
    expected = transforms.normalize_images(transforms.center_crop(tf.constant(images), 40), method)
    got = layer(images)
    assert tuple(got.shape) == (3, 40, 40, transforms.output_channels(method))
    assert tuple(layer.compute_output_shape((None, 64, 64, 1))) == (None, 40, 40, got.shape[-1])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-6, rtol=1e-5)


def test_polar_unwrap_rotation_is_a_cyclic_shift():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(1, 48, 48, 2)).astype("float32")
    layer = PolarUnwrap(steps=16, angles_per_step=3, radii=10)
    seq = layer(image).numpy()
    assert seq.shape == (1, 16, 10, 3, 2)
    # np.rot90 turns the displayed image counter-clockwise by 90 degrees: what sat at
    # angle theta now sits at theta + 90, so the sequence rolls forward by a quarter.
    rotated = layer(np.rot90(image, k=1, axes=(1, 2)).copy()).numpy()
    np.testing.assert_allclose(rotated, np.roll(seq, 16 // 4, axis=1), atol=1e-5)
    rotated2 = layer(np.rot90(image, k=2, axes=(1, 2)).copy()).numpy()
    np.testing.assert_allclose(rotated2, np.roll(seq, 16 // 2, axis=1), atol=1e-5)
    # and it is not trivially shift-invariant: a random image's wedges differ
    assert np.abs(seq - np.roll(seq, 1, axis=1)).max() > 0.1


def test_polar_unwrap_turns_a_ring_into_a_constant_sequence_and_samples_bilinearly():
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 31.5, xx - 31.5)
    ring = np.exp(-0.5 * ((r - 10.0) / 1.5) ** 2).astype("float32")[None, :, :, None]
    seq = PolarUnwrap(steps=16, angles_per_step=4, radii=16)(ring).numpy()[0, :, :, :, 0]
    profile = seq.mean(axis=(0, 2))
    assert np.abs(seq - profile[None, :, None]).max() < 0.05  # same radial profile at every angle
    radii = (np.arange(16) + 0.5) * 31.5 / 16
    assert abs(radii[np.argmax(profile)] - 10.0) < 31.5 / 16
    # a linear ramp is reproduced exactly by bilinear sampling
    ramp = (2.0 * yy + 0.5 * xx).astype("float32")[None, :, :, None]
    layer = PolarUnwrap(steps=4, angles_per_step=2, radii=3, max_radius=12.0)
    got = layer(ramp).numpy()[0, :, :, :, 0]
    step, ring_i, within = np.meshgrid(np.arange(4), np.arange(3), np.arange(2), indexing="ij")
    theta = 2 * np.pi * (step * 2 + within) / 8
    rad = (ring_i + 0.5) * 12.0 / 3
    rows, cols = 31.5 - rad * np.sin(theta), 31.5 + rad * np.cos(theta)
    np.testing.assert_allclose(got, 2.0 * rows + 0.5 * cols, atol=1e-4)


def test_patch_sequence_is_raster_order():
    image = np.arange(2 * 10 * 10 * 1, dtype="float32").reshape(2, 10, 10, 1)
    seq = PatchSequence(4)(image).numpy()
    assert seq.shape == (2, 4, 4, 4, 1)
    # central 8x8 region (offset 1): patch k = (row k // 2, col k % 2)
    for k in range(4):
        r, c = 1 + 4 * (k // 2), 1 + 4 * (k % 2)
        np.testing.assert_array_equal(seq[:, k], image[:, r : r + 4, c : c + 4])


def test_folded_time_distributed_matches_per_frame_calls():
    inner = keras.Sequential(
        [keras.Input((6, 4, 2)), keras.layers.Conv2D(3, 3), keras.layers.Flatten()]
    )
    layer = FoldedTimeDistributed(inner)
    frames = np.random.default_rng(0).normal(size=(2, 5, 6, 4, 2)).astype("float32")
    got = layer(frames).numpy()
    assert got.shape == (2, 5, 4 * 2 * 3)
    for t in range(5):
        np.testing.assert_allclose(got[:, t], inner(frames[:, t]).numpy(), atol=1e-5)


def test_tiny_model_overfits_tiny_set():
    # 16 images whose target is the (log) brightness of a blob: learnable from pixels.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    widths = rng.uniform(2.0, 8.0, size=16)
    images = np.stack([np.exp(-0.5 * (np.hypot(yy - 32, xx - 32) / w) ** 2) for w in widths])
    images = images[..., None].astype("float32")
    y = ((widths - widths.mean()) / widths.std()).astype("float32")[:, None]
    keras.utils.set_random_seed(0)
    model = build_model("cnn", SHAPE, ["w"], head="point", crop=48, width=4, blocks=3)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=make_losses("point", ["w"], "mse"),
        jit_compile=False,
    )
    first = model.evaluate(images, {"w": y}, verbose=0)
    history = model.fit(images, {"w": y}, epochs=40, batch_size=16, verbose=0).history
    assert history["loss"][-1] < first / 100, (first, history["loss"][-1])
    # In inference mode the BatchNorm moving averages still describe older weights
    # (fast Adam steps on one batch); re-estimated with the final weights, the
    # inference-mode loss falls by the same order.
    assert reestimate_batchnorm_statistics(model, [images]) == 1
    last = model.evaluate(images, {"w": y}, verbose=0)
    assert last < first / 100, (first, last)


def test_reestimated_batchnorm_matches_training_mode_on_that_batch():
    model = build_model("resnet", SHAPE, TARGETS, crop=48, **TINY["resnet"])
    images = _images(4)
    assert len(batchnorm_layers(model)) == 1 + 8 * 2 + 3  # stem, two per block, 3 shortcuts
    before = model(images, training=False)[TARGETS[0]].numpy()
    reestimate_batchnorm_statistics(model, [images])
    # one batch: moving statistics equal that batch's, so inference = training mode
    train_mode = model(images, training=True)[TARGETS[0]].numpy()
    after = model(images, training=False)[TARGETS[0]].numpy()
    np.testing.assert_allclose(after, train_mode, atol=1e-4)
    assert np.abs(before - train_mode).max() > 10 * np.abs(after - train_mode).max()
    assert all(bn.momentum == 0.95 for bn in batchnorm_layers(model))  # restored
    # averaging over two batches: the moving mean is the mean of the two batch means
    model2 = build_model("cnn", SHAPE, TARGETS, crop=48, **TINY["cnn"])
    a, b = _images(2, seed=5), 3.0 * _images(2, seed=6)
    assert (
        reestimate_batchnorm_statistics(
            model2, iter([(a, None), (b, None), (a, None)]), max_batches=2
        )
        == 2
    )
    bn = batchnorm_layers(model2)[0]
    conv = keras.Model(model2.inputs[0], model2.get_layer("cnn_block0_conv0").output)
    means = [conv(x).numpy().mean(axis=(0, 1, 2)) for x in (a, b)]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-6)


# --- `import deeplense_tf` registers every Keras object ------------------------------------

_RELOAD = """
import sys
{imports}
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1])
assert model.optimizer is not None and model.optimizer.iterations.numpy() == 1, "not compiled"
out = model(np.load(sys.argv[2]), training=False)
np.savez(sys.argv[3], **{{k: keras.ops.convert_to_numpy(v) for k, v in out.items()}})
"""


@pytest.fixture(scope="module")
def saved_run_model(tmp_path_factory):
    """A compiled, once-trained model.keras as a run writes it (schedule, loss, metrics, layers)."""
    from deeplense_tf.training import compile_model, load_config

    folder = tmp_path_factory.mktemp("saved")
    model = build_model("cnn_lstm", SHAPE, TARGETS, crop=48, **TINY["cnn_lstm"])
    compile_model(model, load_config("smoke"), steps_per_epoch=4)
    images = _images()
    model.fit(images, _targets(), epochs=1, batch_size=2, verbose=0)
    path = folder / "model.keras"
    model.save(path)
    np.save(folder / "images.npy", images)
    expected = {k: v.numpy() for k, v in model(images, training=False).items()}
    return path, folder / "images.npy", expected


@pytest.mark.parametrize(
    "imports",
    [
        "import deeplense_tf",  # the promise: the package alone, Keras imported after it
        "import keras\nimport deeplense_tf",  # Keras first: registration happens at once
        "import deeplense_tf.data",  # any sub-package import is the package import too
    ],
)
def test_model_keras_reloads_in_a_fresh_process_after_import_deeplense_tf(
    saved_run_model, imports, tmp_path
):
    path, images, expected = saved_run_model
    out = tmp_path / "out.npz"
    code = _RELOAD.format(imports=imports)
    result = subprocess.run(
        [sys.executable, "-c", code, str(path), str(images), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(out)
    for target in TARGETS:
        np.testing.assert_allclose(got[target], expected[target], atol=1e-6)


def test_without_deeplense_tf_the_model_does_not_reload(saved_run_model, tmp_path):
    # The test above can fail: plain Keras does not know our layers.
    path, images, _ = saved_run_model
    code = _RELOAD.format(imports="")
    result = subprocess.run(
        [sys.executable, "-c", code, str(path), str(images), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0 and "deeplense" in result.stderr


def test_package_import_is_light_and_lists_every_keras_object_module():
    import deeplense_tf

    # Importing the package loads neither TensorFlow nor Keras (simulation workers,
    # `deeplense --help`); the registration waits for Keras's own import.
    code = ("import sys, deeplense_tf\n"
            "heavy = {'tensorflow', 'keras'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    # Every module that registers a Keras object is in the list the package imports.
    root = Path(deeplense_tf.__file__).parent
    registering = {
        "deeplense_tf." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if "register_keras_serializable(" in p.read_text()
    }
    assert registering == set(deeplense_tf.KERAS_OBJECT_MODULES)


def test_no_test_trains_a_model_eagerly():
    # An eager conv backward crashes oneDNN on some AVX-512 CPUs (module docstring): a test
    # that needs one must set TF_ENABLE_ONEDNN_OPTS=0 in a subprocess of its own.
    offenders = [p.name for p in Path(__file__).parent.glob("test_*.py")
                 if "run_eagerly=" + "True" in p.read_text()]
    assert not offenders, offenders
