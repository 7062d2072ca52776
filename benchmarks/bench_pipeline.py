"""Input pipeline throughput vs training throughput of a small CNN, on this machine.

    python benchmarks/bench_pipeline.py                 # synthetic 64x64 shards in a temp dir
    python benchmarks/bench_pipeline.py --data DIR      # an existing simulated 64x64 data set

Measures, in images per second:
- pipeline: `build_dataset(..., augment="d4", shuffle=True, batch_size=64)` read from
  TFRecord shards on disk, timed after the first epoch has filled the cache (what every
  later epoch of training costs), with every target standardised and the spin-2 / vector
  targets transformed with the images;
- training: `model.fit` steps of the package's `cnn` model (width 16, 3 blocks; a
  stand-in Keras CNN if `deeplense_tf.models` cannot build it) on one in-memory batch of
  64 repeated, so the input costs nothing;
and prints their ratio (the aim is >= 10x: input never starves training). Both use every
core; in real training they share them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SIZE = 64
BATCH = 64
TARGET_KINDS = {
    "theta_e_arcsec": {"kind": "scalar"},
    "lens_e1": {"kind": "spin2", "partner": "lens_e2", "component": 0},
    "lens_e2": {"kind": "spin2", "partner": "lens_e1", "component": 1},
    "source_x_arcsec": {"kind": "vector", "partner": "source_y_arcsec", "component": 0},
    "source_y_arcsec": {"kind": "vector", "partner": "source_x_arcsec", "component": 1},
}


def write_synthetic(directory: Path, count: int, shards: int = 4) -> Path:
    """`count` 64x64 noisy Gaussian-ring images in `shards` TFRecord shards + a manifest."""
    import tensorflow as tf

    from deeplense_tf.data import schema

    rng = np.random.default_rng(0)
    axis = np.arange(SIZE) - (SIZE - 1) / 2
    x, y = np.meshgrid(axis, axis)
    targets = {
        "theta_e_arcsec": rng.uniform(0.6, 1.6, count),
        "lens_e1": rng.uniform(-0.2, 0.2, count),
        "lens_e2": rng.uniform(-0.2, 0.2, count),
        "source_x_arcsec": rng.uniform(-0.35, 0.35, count),
        "source_y_arcsec": rng.uniform(-0.35, 0.35, count),
    }
    names = [schema.shard_name("train", k, shards) for k in range(shards)]
    writers = [tf.io.TFRecordWriter(str(directory / name)) for name in names]
    for i in range(count):
        radius = targets["theta_e_arcsec"][i] / 0.101
        ring = np.exp(-0.5 * ((np.hypot(x, y) - radius) / 1.5) ** 2)
        image = (ring + 0.05 * rng.normal(size=ring.shape)).astype(np.float32)[..., None]
        writers[i % shards].write(
            schema.encode_example(image, i, 2, {k: float(v[i]) for k, v in targets.items()}, {})
        )
    for writer in writers:
        writer.close()
    stats = {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in targets.items()}
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "preset": "bench-synthetic",
        "seed": 0,
        "classes": list(schema.CLASS_NAMES),
        "image_shape": [SIZE, SIZE, 1],
        "targets": list(TARGET_KINDS),
        "nuisances": [],
        "target_kinds": TARGET_KINDS,
        "exact_symmetries": list(schema.D4_ELEMENTS),
        "splits": {"train": {"count": count, "shards": names}},
        "target_stats": stats,
    }
    (directory / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    return directory


def pipeline_throughput(data_dir: Path, seconds: float) -> tuple[float, int]:
    """Images/s of the augmented pipeline once the cache is full, and the example count."""
    from deeplense_tf.data import build_dataset, read_manifest

    manifest = read_manifest(data_dir)
    count = manifest["splits"]["train"]["count"]
    dataset = build_dataset(
        data_dir,
        "train",
        targets=None,
        batch_size=BATCH,
        augment="d4",
        shuffle=True,
        seed=0,
        cache=True,
        repeat=True,
        drop_remainder=True,
    )
    iterator = iter(dataset)
    for _ in range(count // BATCH + 1):  # first epoch: reads the shards and fills the cache
        next(iterator)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch, _ = next(iterator)
        images += int(batch.shape[0])
    return images / (time.perf_counter() - start), count


def small_cnn(targets):
    """The package's `cnn` (small settings); a plain Keras CNN if that cannot be built."""
    import keras

    try:
        from deeplense_tf.models import build_model

        model = build_model(
            "cnn",
            (SIZE, SIZE, 1),
            targets,
            head="point",
            normalization="asinh",
            crop=None,
            width=16,
            blocks=3,
        )
        return model, "deeplense_tf.models cnn (width 16, 3 blocks, point head)"
    except Exception as error:  # the models package is optional for this benchmark
        print(f"(package cnn unavailable: {type(error).__name__}: {error}; using a stand-in)")
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = {t: keras.layers.Dense(1, name=t)(x) for t in targets}
    return keras.Model(inputs, outputs), "stand-in Keras CNN (16-32-64 filters, 2 convs each)"


def training_throughput(seconds: float) -> tuple[float, str]:
    """Images/s of `model.fit` train steps on one in-memory batch (input cost ~0)."""
    import keras
    import tensorflow as tf

    targets = list(TARGET_KINDS)
    model, description = small_cnn(targets)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={t: "mse" for t in targets})
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((BATCH, SIZE, SIZE, 1)), tf.float32)
    labels = {t: tf.constant(rng.normal(size=(BATCH, 1)), tf.float32) for t in targets}
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    steps = 5
    while True:
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or steps >= 4096:
            return steps * BATCH / elapsed, description
        steps = int(steps * max(2.0, 1.2 * seconds / max(elapsed, 1e-3)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a simulated 64x64 data set (default: synthetic shards)")
    parser.add_argument("--num", type=int, default=4096, help="synthetic examples (default 4096)")
    parser.add_argument("--seconds", type=float, default=15.0, help="timing window per measurement")
    args = parser.parse_args(argv)

    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        data_dir = Path(args.data) if args.data else write_synthetic(Path(tmp), args.num)
        pipeline, count = pipeline_throughput(data_dir, args.seconds)
    training, description = training_throughput(args.seconds)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}, GPUs: {len(tf.config.list_physical_devices('GPU'))}"
    )
    print(f"data: {args.data or f'synthetic {count} x {SIZE}x{SIZE}, 4 shards'}")
    print(f"pipeline (augment=d4, shuffle, batch {BATCH}, after cache): {pipeline:,.0f} images/s")
    print(f"training ({description}, batch {BATCH}): {training:,.0f} images/s")
    print(f"ratio pipeline / training: {pipeline / training:.1f}x (aim >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
