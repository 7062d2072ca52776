"""Training-step time with and without XLA (`training.jit_compile`), side by side in one process.

    python benchmarks/bench_xla.py --config configs/benchmark-model2-cnn_lstm-90min.yaml
    python benchmarks/bench_xla.py --config configs/benchmark-model2-classify.yaml --image 64

Builds the config's model (its architecture, head, crop and options) for `--image`-pixel
one-channel images, and times one AdamW step on a batch of the config's size, as the
training loop runs it: the forward and backward pass in a `tf.function` compiled by XLA
(`jit_compile=True`) or not, the update outside it. The two variants alternate step by
step (ABBA order), so a load that changes during the run hits both alike; the medians and
their ratio are printed, with XLA's one-off compile time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_step(model, batch_loss, jit: bool):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(model.trainable_variables)

    def gradients(images, targets):
        with tf.GradientTape() as tape:
            loss = batch_loss(model(images, training=True), targets)
        return tape.gradient(loss, model.trainable_variables), loss

    compiled = tf.function(gradients, jit_compile=jit)

    @tf.function
    def step(images, targets):
        grads, loss = compiled(images, targets)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/benchmark-model2-cnn_lstm-90min.yaml")
    parser.add_argument("--image", type=int, default=64, help="image side in pixels (150 for Model I)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from deeplense_tf.models import build_model
    from deeplense_tf.training import load_config

    config = load_config(args.config, {"data.path": None})
    m, batch = config["model"], config["training"]["batch_size"]
    head = m["head"] if m["head"] != "softmax" else "point"  # the encoder's cost is the point
    shape = (args.image, args.image, 1)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.gamma(0.5, 1.0, size=(batch, *shape)).astype("float32"))
    targets = tf.constant(rng.normal(size=(batch, 1)).astype("float32"))

    def batch_loss(outputs, y):
        out = outputs["t"] if isinstance(outputs, dict) else outputs
        return tf.reduce_mean(tf.square(tf.cast(out[:, :1], tf.float32) - y))

    steps, compile_s = {}, {}
    for jit in (False, True):
        model = build_model(m["name"], shape, ["t"], head=head, normalization=m["normalization"],
                            crop=m["crop"], **m["options"])
        steps[jit] = make_step(model, batch_loss, jit)
        start = time.perf_counter()
        steps[jit](images, targets).numpy()
        compile_s[jit] = time.perf_counter() - start
    times = {False: [], True: []}
    for r in range(args.steps + 2):
        for jit in ((False, True) if r % 2 == 0 else (True, False)):
            start = time.perf_counter()
            steps[jit](images, targets).numpy()
            times[jit].append(time.perf_counter() - start)
    plain, xla = (statistics.median(times[j][2:]) for j in (False, True))
    print(f"{args.config} ({m['name']}, {args.image}x{args.image}, batch {batch}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("| step | median ms | first call s |")
    print("|---|---:|---:|")
    print(f"| graph | {1000 * plain:.1f} | {compile_s[False]:.1f} |")
    print(f"| XLA (jit_compile) | {1000 * xla:.1f} | {compile_s[True]:.1f} |")
    print(f"graph / XLA: x{plain / xla:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
