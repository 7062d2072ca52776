"""Prediction latency and throughput of one model, every way it can be run, side by side.

Rows: Keras `model.predict`, Keras direct call, the exported SavedModel's
`serving_default` signature, and each TFLite variant in `ai_edge_litert` with 1 and 2
threads; each at batch 1 (one image) and batch 64. Every row is a function
`predict(images) -> outputs` built by a `*_row` factory below; `measure` times any such
function, so the REST and gRPC rows of the serving benchmark plug in the same way:

    from bench_latency import benchmark, default_rows, format_table
    rows = default_rows(model, spec, workdir)
    rows["REST (local server)"] = lambda images: rest_client.predict(images)
    print(format_table(benchmark(rows, images)))

Usage:
    python benchmarks/bench_latency.py                       # untrained resnet (the default config's model), 64x64
    python benchmarks/bench_latency.py --options '{"width": 16}'   # the quickstart's resnet-18
    python benchmarks/bench_latency.py --run RUN             # a trained run (its test images when available)
    python benchmarks/bench_latency.py --json out.json --variants fp32,int8 --seconds 1

Latency is the median wall time of one call (after warm-up calls); throughput is
images per second at that median. Numbers depend on the machine and its load; the
table header says how many CPU cores were visible.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCH_SIZES = (1, 64)
THREADS = (1, 2)

Predict = Callable[[np.ndarray], object]


# --- one factory per row --------------------------------------------------------------------


def keras_predict_row(model) -> Predict:
    """`model.predict` (the Keras fit/evaluate-style loop, with its per-call overhead)."""
    return lambda images: model.predict(images, batch_size=len(images), verbose=0)


def keras_call_row(model) -> Predict:
    """`model(images, training=False)`: eager call, no data-adapter overhead."""
    return lambda images: model(images, training=False)


def saved_model_row(saved_model_dir) -> Predict:
    """The exported `serving_default` signature via `tf.saved_model.load` (input checks included)."""
    import tensorflow as tf

    signature = tf.saved_model.load(os.fspath(saved_model_dir)).signatures["serving_default"]
    return lambda images: signature(image=tf.constant(images))


def tflite_row(path, num_threads: int) -> Predict:
    """One `ai_edge_litert` interpreter per row (and per batch size: no resizing while timed)."""
    from deeplense_tf.export.tflite import interpreter

    runners = {}

    def predict(images):
        batch = len(images)
        if batch not in runners:
            runners[batch] = interpreter(path, num_threads).get_signature_runner("serving_default")
        return runners[batch](image=images)

    return predict


def default_rows(model, spec, workdir, variants=None, threads=THREADS, calibration_images=None,
                 saved_model_dir=None, tflite_paths=None) -> dict[str, Predict]:
    """Rows for the Keras model, its SavedModel and its TFLite variants.

    Exports into `workdir` what is not given: `saved_model_dir` (a version folder) and
    `tflite_paths` (`{variant: path}`).
    """
    from deeplense_tf.export import savedmodel
    from deeplense_tf.export import tflite as tflite_lib

    variants = tflite_lib.VARIANTS if variants is None else tflite_lib.parse_variants(variants)
    workdir = Path(workdir)
    if saved_model_dir is None:
        saved_model_dir = savedmodel.write_saved_model(model, spec, workdir / "saved_model",
                                                       model_name="bench")
    tflite_paths = dict(tflite_paths or {})
    missing = [v for v in variants if v not in tflite_paths]
    if missing:
        reports = tflite_lib.export_tflite(model, spec, workdir / "tflite", missing,
                                           calibration_images=calibration_images)
        tflite_paths.update({v: r["path"] for v, r in reports.items()})
    rows = {
        "Keras model.predict": keras_predict_row(model),
        "Keras direct call": keras_call_row(model),
        "SavedModel serving_default": saved_model_row(saved_model_dir),
    }
    for variant in variants:
        for n in threads:
            rows[f"TFLite {variant}, {n} thread{'s' if n > 1 else ''}"] = tflite_row(tflite_paths[variant], n)
    return rows


# --- timing ---------------------------------------------------------------------------------


def measure(predict: Predict, images: np.ndarray, *, warmup: int = 3, min_calls: int = 5,
            max_calls: int = 200, seconds: float = 2.0) -> dict:
    """Median / p90 latency (ms) and throughput (images/s) of `predict(images)`.

    Calls until `seconds` have passed (at least `min_calls`, at most `max_calls`).
    """
    for _ in range(warmup):
        predict(images)
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "batch": len(images),
        "calls": len(times),
        "median_ms": 1e3 * median,
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        "images_per_s": len(images) / median,
    }


def benchmark(rows: dict[str, Predict], images: np.ndarray, batch_sizes=BATCH_SIZES, progress=True,
              **timing) -> list[dict]:
    """Time every row at every batch size (batches cut from `images`, repeated if needed)."""
    results = []
    for batch in batch_sizes:
        reps = int(np.ceil(batch / len(images)))
        batch_images = np.ascontiguousarray(np.concatenate([images] * reps)[:batch], np.float32)
        for label, predict in rows.items():
            result = {"row": label, **measure(predict, batch_images, **timing)}
            results.append(result)
            if progress:
                print(f"  {label:34s} batch {batch:3d}: {result['median_ms']:9.2f} ms", file=sys.stderr)
    return results


def format_table(results: list[dict]) -> str:
    """Markdown: one line per row, single-image and batch columns side by side."""
    batches = sorted({r["batch"] for r in results})
    by_row: dict[str, dict[int, dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], {})[r["batch"]] = r
    header = "| | " + " | ".join(
        f"batch {b}: median ms | batch {b}: images/s" for b in batches) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(batches))]
    for label, cells in by_row.items():
        values = []
        for b in batches:
            cell = cells.get(b)
            values += ["" if cell is None else f"{cell['median_ms']:.2f}",
                       "" if cell is None else f"{cell['images_per_s']:.0f}"]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------


def _model_and_images(args):
    from deeplense_tf.export.spec import ExportSpec

    if args.run:
        from deeplense_tf.export.exporter import load_images
        from deeplense_tf.runs import Run

        run = Run.load(args.run)
        spec = ExportSpec.from_run(run)
        calibration, images, _, source = load_images(run, spec, check_count=64)
        return run.model, spec, calibration, images, f"run {args.run} ({source} images)"

    import keras

    from deeplense_tf.models import build_model

    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, 1)
    crop = args.crop if args.crop and args.crop < args.image_size else None
    targets = ["log10_m_axion_ev"]
    model = build_model(args.model, shape, targets, head="gaussian", crop=crop, **json.loads(args.options))
    spec = ExportSpec(args.model, tuple(targets), "gaussian", shape,
                      {"log10_m_axion_ev": {"mean": -23.0, "std": 0.58}})
    rng = np.random.default_rng(0)
    images = rng.gamma(0.5, 1.0, size=(64, *shape)).astype(np.float32)
    return model, spec, images, images, (f"untrained {args.model} {args.options}, "
                                         f"{shape[0]}x{shape[1]} px, crop {crop}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="trained run folder (default: an untrained --model)")
    parser.add_argument("--model", default="resnet", help="architecture when no --run (default: resnet)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels per side when no --run")
    parser.add_argument("--crop", type=int, default=48, help="centre crop when no --run (default 48)")
    parser.add_argument("--options", default="{}",
                        help='builder options as JSON when no --run, e.g. \'{"width": 16}\' (the quickstart resnet)')
    parser.add_argument("--variants", default="all", help="TFLite variants (default: all)")
    parser.add_argument("--seconds", type=float, default=1.5, help="time budget per row and batch size")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    model, spec, calibration, images, what = _model_and_images(args)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as workdir:
        rows = default_rows(model, spec, workdir, variants=args.variants,
                            calibration_images=calibration)
        results = benchmark(rows, images, seconds=args.seconds)
    params = model.count_params()
    title = (f"{what}; {params / 1e6:.2f} M parameters; {os.cpu_count()} CPU cores visible; "
             f"median of >= 5 calls after 3 warm-up calls")
    print(title)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
    sys.exit(main())
