"""Which layers full-int8 TFLite should leave in float32: one trained run converted with
several sets of float layers, each scored on the same test images, as a markdown table.

    python benchmarks/bench_int8_float_layers.py --run runs/cnn_lstm \
        --sets preprocess,log10_m_axion_ev default +bilstm0

A set is a comma-separated list of layer names; `default` is what `deeplense export` keeps
float (`export.tflite.float_layer_names`), and a set starting with `+` adds to it. Every
set is calibrated on the same training images (`--calibration`) and checked on the same
first `--check` images of the run's test split against the Keras model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_set(text: str, default: set[str]) -> set[str]:
    if text == "default":
        return set(default)
    if text.startswith("+"):
        return set(default) | {name for name in text[1:].split(",") if name}
    return {name for name in text.split(",") if name}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="finished run folder")
    parser.add_argument("--sets", nargs="+", default=["default"], help="float-layer sets (see above)")
    parser.add_argument("--calibration", type=int, default=100, help="calibration images (default 100)")
    parser.add_argument("--check", type=int, default=500, help="test images to score (default 500)")
    args = parser.parse_args(argv)

    from deeplense_tf.export import tflite
    from deeplense_tf.export.exporter import load_images
    from deeplense_tf.export.spec import (
        ExportSpec,
        keras_reference,
        max_abs_difference,
        mean_absolute_errors,
    )
    from deeplense_tf.training import Run

    run = Run.load(args.run)
    spec = ExportSpec.from_run(run)
    calibration, images, targets, source = load_images(
        run, spec, calibration_count=args.calibration, check_count=args.check
    )
    if targets is None:
        parser.error(f"{source} has no test split with targets to score against")
    model = tflite.conversion_copy(run.model)
    target = spec.targets[0]
    reference = keras_reference(model, spec, images)
    keras_mae = mean_absolute_errors(reference, targets, spec)[target]
    default = tflite.float_layer_names(model)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as work:
        saved = tflite.write_conversion_savedmodel(model, spec, Path(work) / "saved_model")
        for text in args.sets:
            layers = parse_set(text, default)
            print(f"--- int8 with {sorted(layers)} in float", file=sys.stderr, flush=True)
            data = tflite.convert_variant(saved, "int8", calibration, model, float_layers=layers)
            outputs = tflite.run_tflite(data, images)
            mae = mean_absolute_errors(outputs, targets, spec)[target]
            rows.append((", ".join(sorted(layers)), len(data) / 1e6,
                         max_abs_difference(outputs, reference)[target], mae, mae - keras_mae))

    print(f"`python {' '.join(sys.argv)}`\n")
    print(f"{args.run}: {target}, {len(images)} test images of {source}, int8 calibrated on "
          f"{len(calibration)} training images; Keras MAE {keras_mae:.4f}\n")
    print("| float32 layers | MB | max abs diff | int8 MAE | change |")
    print("|---|---|---|---|---|")
    for layers, size, diff, mae, change in rows:
        print(f"| {layers} | {size:.2f} | {diff:.3f} | {mae:.4f} | {change:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
