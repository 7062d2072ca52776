"""Every architecture on the same data and the same training-time budget: the accuracy table
(issue 3), optionally the ensemble of the trained runs against its best member (issue 4)
and each run's TFLite variants (issue 6), printed as markdown tables for BENCHMARKS.md.

    python benchmarks/bench_architectures.py --data data/model2-axion --work bench_work/arch \
        --budget-minutes 5 --steps-per-epoch 100 --ensemble --tflite
    python benchmarks/bench_architectures.py --smoke     # seconds: checks that it runs

Steps (a finished run is reused, an interrupted one resumes):
1. WORK/<arch>: `configs/benchmark-model2-<arch>.yaml` trained on --data with
   `training.time_budget_minutes` = --budget-minutes (and `--steps-per-epoch`; the cosine
   schedule ends at the last epoch that fits; stds calibrated on the val split as in
   `deeplense train`).
2. Each run scored on the test split: MAE, RMSE, R², bias, coverage, NLL, parameters,
   epochs, training time and images/s; MAE in bins of the true value.
3. --ensemble: WORK/ensemble combines all runs (`deeplense ensemble`); the best member is
   chosen by validation MAE, without looking at the test split.
4. --tflite: WORK/export/<arch> (`deeplense export --tflite all`): per variant the file
   size, the largest difference to Keras, the test-MAE change on --tflite-check test images
   and the single-image latency (median, 1 thread; Keras direct call beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ensemble import (  # noqa: E402  (shared benchmark helpers)
    fmt,
    markdown_table,
    print_header,
    test_scores,
    train_once,
    validation_mae,
)
from bench_latency import keras_call_row, measure, tflite_row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("cnn", "resnet", "efficientnet", "vit", "cnn_lstm")


def run_config(arch: str, data, budget_minutes: float, steps_per_epoch: int | None, smoke: bool) -> dict:
    from deeplense_tf.training import load_config

    overrides = {"data.path": str(data), "training.time_budget_minutes": budget_minutes}
    if steps_per_epoch:
        overrides["training.steps_per_epoch"] = steps_per_epoch
    if smoke:
        overrides["smoke"] = True
    return load_config(ROOT / "configs" / f"benchmark-model2-{arch}.yaml", overrides)


def score(run, examples, target: str) -> dict:
    from deeplense_tf.evaluation.report import evaluate_run

    metrics, _ = evaluate_run(run, examples)
    return metrics["targets"][target]


def training_facts(run_dir) -> dict:
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {k: metrics.get(k) for k in ("parameters", "epochs", "train_seconds", "train_images_per_second")}


def single_image_latency_ms(predict, image, seconds: float) -> float:
    return measure(predict, image[None], seconds=seconds)["median_ms"]


def tflite_rows(arch: str, run, run_dir, export_dir, examples, target: str, check: int, seconds: float):
    from deeplense_tf.export import exporter

    version_dir = export_dir / arch / "1"
    if not (version_dir / exporter.REPORT_FILE).is_file():
        exporter.export_run(run_dir, export_dir, name=arch, version=1, tflite="all", overwrite=True,
                            check_count=check, progress=False)
    report = json.loads((version_dir / exporter.REPORT_FILE).read_text())["checks"]
    image = examples.images[0]
    rows = [[arch, "Keras", float("nan"), float("nan"), float("nan"),
             single_image_latency_ms(keras_call_row(run.model), image, seconds)]]
    for variant, r in report["tflite"].items():
        change = r["mae_tflite"][target] - r["mae_keras"][target]
        latency = single_image_latency_ms(tflite_row(version_dir / exporter.TFLITE_DIR / r["file"], 1), image, seconds)
        rows.append([arch, variant, r["bytes"] / 1e6, r["max_abs_diff"][target], change, latency])
    return rows, report["images"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="simulated deeplense-model-2 data folder (required unless --smoke)")
    parser.add_argument("--work", default="bench_work/arch", help="folder for the runs (default: bench_work/arch)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--budget-minutes", type=float, default=45.0,
                        help="training-time budget of every run (default: 45, the issue's budget)")
    parser.add_argument("--steps-per-epoch", type=int,
                        help="batches per epoch (default: one pass over the train split). A short "
                        "budget needs short epochs: the budget ends training at an epoch boundary and "
                        "the cosine schedule is planned from the measured epoch time")
    parser.add_argument("--ensemble", action="store_true", help="also combine the runs into an ensemble")
    parser.add_argument("--tflite", action="store_true", help="also export and time every TFLite variant")
    parser.add_argument("--tflite-check", type=int, default=1000,
                        help="test images the TFLite MAE change is measured on (default: 1000)")
    parser.add_argument("--latency-seconds", type=float, default=1.0, help="timing per latency row")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data and the configs' smoke switch: checks that it runs, not a result")
    args = parser.parse_args(argv)

    from deeplense_tf.data import load_examples
    from deeplense_tf.training.ensemble import ensemble_runs

    work = Path(args.work)
    start = time.perf_counter()
    if args.smoke:
        from bench_ensemble import simulate

        args.data = simulate("deeplense-model-2", 120, work / "data")
        args.tflite_check = min(args.tflite_check, 8)
        args.latency_seconds = min(args.latency_seconds, 0.05)
    elif not args.data:
        parser.error("--data is required (or --smoke)")
    examples = load_examples(str(args.data), split="test")

    runs, rows, binned = {}, [], []
    for arch in args.archs:
        print(f"--- {arch}", file=sys.stderr, flush=True)
        run, _ = train_once(run_config(arch, args.data, args.budget_minutes, args.steps_per_epoch, args.smoke), work / arch)
        runs[arch] = run
        target = run.targets[0]
        scores = score(run, examples, target)
        o, facts = scores["overall"], training_facts(work / arch)
        rows.append([arch, facts["parameters"] / 1e6, facts["epochs"], facts["train_seconds"] / 60,
                     facts["train_images_per_second"], o["mae"], o["rmse"], o["r2"], o["bias"],
                     o.get("coverage_68"), o.get("coverage_95"), o.get("nll")])
        binned.append([arch] + [b["mae"] for b in scores["binned"]])
        edges = [f"{b['lo']:.2f}…{b['hi']:.2f}" for b in scores["binned"]]

    print_header(f"Architectures at an equal {args.budget_minutes:g}-minute training budget "
                 f"({examples.source}, {target})", args)
    print(f"{len(examples.images)} test images; total {(time.perf_counter() - start) / 60:.1f} min.\n")
    print(markdown_table(["model", "params (M)", "epochs", "train min", "train img/s", "MAE", "RMSE", "R²",
                          "bias", "68% cov.", "95% cov.", "NLL"], rows))
    print("\nTest MAE in bins of the true value:\n")
    print(markdown_table(["model", *edges], binned))

    if args.ensemble and len(runs) >= 2:
        ensemble = ensemble_runs([work / a for a in runs], work / "ensemble", overwrite=True)
        best = min(runs, key=lambda a: validation_mae(work / a, target))
        table = []
        for name, run in ((f"best member ({best}, by val MAE)", runs[best]),
                          (f"ensemble of {len(runs)}", ensemble)):
            o = test_scores(run, examples, target)
            table.append([name, o["mae"], o["nll"], o["coverage_68"], o["coverage_95"]])
        print(f"\n### Ensemble of the {len(runs)} architectures vs its best member\n")
        print(markdown_table(["run", "test MAE", "test NLL", "68% cov.", "95% cov."], table))

    if args.tflite:
        table, checked = [], None
        for arch, run in runs.items():
            print(f"--- export {arch}", file=sys.stderr, flush=True)
            arch_rows, checked = tflite_rows(arch, run, work / arch, work / "export", examples, target,
                                             args.tflite_check, args.latency_seconds)
            table += arch_rows
        print(f"\n### TFLite per architecture ({checked} test images, single-image latency: median, "
              "1 thread)\n")
        print(markdown_table(["model", "variant", "size (MB)", "max |diff| (dex)", "test-MAE change (dex)",
                              "latency (ms)"], table))
    print(f"\nMAE, RMSE, bias in the target's units (dex); NLL in nats per example; "
          f"total {fmt((time.perf_counter() - start) / 60, 3)} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
