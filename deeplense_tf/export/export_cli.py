"""`deeplense export --run RUN --out DIR [--name deeplense] [--version N] [--tflite fp32,fp16,dynamic_int8,int8] [--on-device] [--overwrite]`.

Writes `DIR/<name>/<version>/` (SavedModel in TF Serving's layout, with warm-up
requests, `tflite/` files and `export.json`) atomically, plus `DIR/models.config` and
`DIR/batching_parameters.txt` for tensorflow/serving:

    docker run -p 8501:8501 -v "$PWD/DIR:/models" tensorflow/serving \\
        --model_config_file=/models/models.config    # after pointing base_path at /models/<name>

TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json

VARIANT_NAMES = ("fp32", "fp16", "dynamic_int8", "int8")  # = tflite.VARIANTS, without importing TF


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN", help="run folder written by `deeplense train`")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="serving base folder; the model goes to DIR/<name>/<version>/")
    parser.add_argument("--name", default="deeplense", help="model name (default: deeplense)")
    parser.add_argument("--version", metavar="N",
                        help="integer version (default: one more than the highest in DIR/<name>)")
    parser.add_argument("--tflite", metavar="LIST", default="",
                        help=f"TFLite variants, comma-separated: {','.join(VARIANT_NAMES)} or all "
                        "(default: none)")
    parser.add_argument("--on-device", action="store_true",
                        help="also write the on-device fine-tuning TFLite model "
                        "(signatures infer, train, get_weights, set_weights)")
    parser.add_argument("--train-batch-size", type=int, default=16, metavar="B",
                        help="static batch of the on-device train signature (default: 16)")
    parser.add_argument("--calibration-data", metavar="PATH",
                        help="data for int8 calibration and the export checks "
                        "(default: the run's training data, from RUN/config.yaml)")
    parser.add_argument("--calibration-count", type=int, default=100, metavar="N",
                        help="training images used to calibrate int8 (default: 100)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")


def run(args: argparse.Namespace) -> int:
    from deeplense_tf.errors import ConfigError
    from deeplense_tf.export.exporter import REPORT_FILE, export_run

    if args.train_batch_size < 1:
        raise ConfigError(f"--train-batch-size must be at least 1, got {args.train_batch_size}")
    if args.calibration_count < 1:
        raise ConfigError(f"--calibration-count must be at least 1, got {args.calibration_count}")
    paths = export_run(
        args.run,
        args.out,
        name=args.name,
        version=args.version,
        tflite=args.tflite,
        overwrite=args.overwrite,
        on_device=args.on_device,
        train_batch_size=args.train_batch_size,
        calibration_data=args.calibration_data,
        calibration_count=args.calibration_count,
    )
    report = json.loads((paths["version_dir"] / REPORT_FILE).read_text())
    print(summary(report))
    for key, path in paths.items():
        if key != "saved_model":
            print(f"wrote {key}: {path}")
    return 0


def summary(report: dict) -> str:
    """A few lines: signatures and how far each artefact is from the Keras model."""
    checks = report["checks"]
    lines = [
        f"exported {report['model']} ({report['head']} head) as {report['name']} version "
        f"{report['version']}; checked on {checks['images']} images from {checks['source']}",
    ]
    for name, sig in report["signatures"].items():
        inputs = ", ".join(f"{k} {v}" for k, v in sig["inputs"].items())
        outputs = ", ".join(sig["outputs"])
        lines.append(f"  signature {name}: {inputs} -> {outputs}")
    worst = max(checks["saved_model"]["max_scaled_diff"].values())
    lines.append(f"  SavedModel vs Keras: max diff {worst:.2g} (tolerance {checks['saved_model']['tolerance']:g})")
    for variant, item in (checks.get("tflite") or {}).items():
        diff = max(item["max_abs_diff"].values())
        line = f"  tflite {variant}: {item['bytes'] / 1e6:.2f} MB, max abs diff {diff:.2g}"
        if item.get("mae_tflite"):
            line += ", MAE " + ", ".join(
                f"{t} {item['mae_keras'][t]:.4g} -> {v:.4g}" for t, v in item["mae_tflite"].items()
            )
        lines.append(line)
    if "on_device" in checks:
        item = checks["on_device"]
        lines.append(
            f"  on-device: {item['bytes'] / 1e6:.2f} MB, train batch {item['train_batch_size']}, "
            f"infer max abs diff {max(item['max_abs_diff'].values()):.2g}"
        )
    return "\n".join(lines)
