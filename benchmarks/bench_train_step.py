"""Training-step throughput of ResNet-18 shapes on this machine: the measurement behind the
benchmark config's width and stem (configs/benchmark-model2-resnet.yaml), side by side in
one process, printed as a markdown table.

    python benchmarks/bench_train_step.py                  # the default five shapes
    python benchmarks/bench_train_step.py --steps 3 --shapes 16:1 24:2   # a quick look

Each shape is a `resnet` from the registry on 64x64 one-channel images with the benchmark's
48 px crop and peak + asinh input, one AdamW step per batch of 64 inside a tf.function
(the trainer's loop without the data pipeline, which runs two orders of magnitude faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SHAPES = ("16:1", "32:1", "16:2", "24:2", "32:2")


def images_per_second(width: int, stem_stride: int, batch: int, steps: int, repeats: int) -> tuple[float, int]:
    import keras
    import numpy as np
    import tensorflow as tf

    from deeplense_tf.models import build_model

    model = build_model("resnet", (64, 64, 1), ["t"], head="point", crop=48,
                        depth=18, width=width, variant="resnet", stem_stride=stem_stride)
    optimizer = keras.optimizers.AdamW(1e-3)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.gamma(0.5, 1.0, size=(batch, 64, 64, 1)).astype("float32"))
    targets = tf.constant(rng.normal(size=(batch, 1)).astype("float32"))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(images, training=True)["t"] - targets))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step().numpy()  # trace and warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        loss.numpy()
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates), model.count_params()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), metavar="WIDTH:STRIDE",
                        help=f"ResNet-18 width and stem stride pairs (default: {' '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="steps per timing (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per shape; the median is shown")
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes]
    except ValueError:
        parser.error("--shapes takes WIDTH:STRIDE pairs such as 24:2")

    import platform

    print(f"`python {' '.join(sys.argv)}` on {platform.node()} ({os.cpu_count()} CPUs)\n")
    print("| width | stem stride | parameters | train images/s |")
    print("|---|---|---|---|")
    for width, stride in shapes:
        rate, params = images_per_second(width, stride, args.batch, args.steps, args.repeats)
        print(f"| {width} | {stride} | {params / 1e6:.2f} M | {rate:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
