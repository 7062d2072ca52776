"""Evaluate a run on a data set and write what `deeplense evaluate` writes.

`evaluate_run(run, examples)` predicts and computes the metrics; `write_evaluation`
writes `metrics.json`, `predictions.csv` and one figure per target; `format_table` and
`markdown_table` render the overall and binned metrics for the terminal and for
`report.md`. `run` is a `deeplense_tf.training.run.Run` (anything with `targets`,
`head`, `input_shape` and `predict(images, batch_size=, tta=)` works, which keeps
this module testable without a trained model); `examples` is a
`deeplense_tf.data.Examples`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from deeplense_tf.errors import DataError
from deeplense_tf.evaluation.metrics import DEFAULT_BINS, evaluate_target, to_jsonable
from deeplense_tf.evaluation.plots import plot_target

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"


def check_fits(run, examples) -> None:
    """Raise DataError naming the data set when its images or targets do not fit the run."""
    images = examples.images
    expected = tuple(int(d) for d in run.input_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise DataError(
            f"{examples.source}: images have shape {tuple(images.shape[1:])} (per image) but the run "
            f"expects {expected} (H, W, channels); evaluate on data made with the run's preset"
        )
    available = sorted(examples.targets)
    if not available:
        raise DataError(
            f"{examples.source}: the data set holds no target values, so there is nothing to compare "
            f"with; use `deeplense predict` for unlabelled images"
        )
    missing = [t for t in run.targets if t not in examples.targets]
    if missing:
        raise DataError(
            f"{examples.source}: no target {', '.join(missing)} (the data set has "
            f"{', '.join(available)}; the run predicts {', '.join(run.targets)})"
        )


def evaluate_run(
    run,
    examples,
    *,
    tta: bool = False,
    bins: int = DEFAULT_BINS,
    batch_size: int = 256,
) -> tuple[dict, dict]:
    """Predict `examples` with `run` and compute every metric.

    Returns `(metrics, table)`: `metrics` is what goes into metrics.json (per target:
    overall, binned, baseline MAE, calibration curve; plus counts and speed), `table`
    holds per target the arrays `true`, `mean`, `std` (physical units, only the examples
    where that target is defined) for plots and predictions.csv.
    """
    check_fits(run, examples)
    truth = {t: np.asarray(examples.targets[t], dtype=np.float64) for t in run.targets}
    # Examples of another class have NaN targets (no axion mass in a `no_sub` image): skip them.
    defined = {t: np.isfinite(v) for t, v in truth.items()}
    for target, mask in defined.items():
        if not mask.any():
            raise DataError(
                f"{examples.source}: no example has a value for target {target} "
                f"(all {mask.size} are NaN; is this the right class or preset?)"
            )
    used = np.logical_or.reduce(list(defined.values()))
    images = examples.images[used]
    if not np.all(np.isfinite(images)):
        bad = int(np.sum(~np.isfinite(images).all(axis=(1, 2, 3))))
        raise DataError(f"{examples.source}: {bad} images contain NaN or infinite pixels")

    start = time.perf_counter()
    predictions = run.predict(images, batch_size=batch_size, tta=tta)
    seconds = time.perf_counter() - start

    metrics = {
        "data": str(examples.source),
        "head": run.head,
        "tta": bool(tta),
        "examples": int(used.sum()),
        "skipped_undefined": int((~used).sum()),
        "predict_seconds": round(seconds, 3),
        "images_per_second": round(images.shape[0] / seconds, 1) if seconds > 0 else None,
        "bins": int(bins),
        "targets": {},
    }
    table = {}
    for target in run.targets:
        keep = defined[target][used]
        mean = np.asarray(predictions[target]["mean"], dtype=np.float64).reshape(-1)[keep]
        std = predictions[target].get("std")
        std = None if std is None else np.asarray(std, dtype=np.float64).reshape(-1)[keep]
        true = truth[target][used][keep]
        metrics["targets"][target] = evaluate_target(true, mean, std, bins=bins)
        table[target] = {"true": true, "mean": mean, "std": std}
    return metrics, table


def write_evaluation(metrics: dict, table: dict, out_dir, *, title: str | None = None) -> list[Path]:
    """Write metrics.json, predictions.csv and `plots/<target>.png` into `out_dir`; return the paths.

    Adds `plots` (`{target: path relative to out_dir}`) to `metrics`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for target, cols in table.items():
        path = plot_target(
            target, cols["true"], cols["mean"], cols["std"], out_dir / "plots" / f"{target}.png",
            title=title or f"{target}: {metrics['examples']} examples of {metrics['data']}"
            + (" (D4 test-time augmentation)" if metrics.get("tta") else ""),
            bins=metrics.get("bins", DEFAULT_BINS),
        )
        written.append(path)
    metrics["plots"] = {t: f"plots/{t}.png" for t in table}  # relative to out_dir

    pred_path = out_dir / PREDICTIONS_NAME
    tmp = pred_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "true", "mean", "std"])
        for target, cols in table.items():
            std = cols["std"] if cols["std"] is not None else [math.nan] * len(cols["true"])
            for row in zip(cols["true"], cols["mean"], std):
                writer.writerow([target, *(f"{v:.6g}" if math.isfinite(v) else "" for v in row)])
    tmp.replace(pred_path)
    written.append(pred_path)

    # Written last and atomically: its presence means the evaluation finished.
    metrics_path = out_dir / METRICS_NAME
    tmp = metrics_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
    tmp.replace(metrics_path)
    written.append(metrics_path)
    return written


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


_OVERALL_COLUMNS = (
    ("N", "count"),
    ("MAE", "mae"),
    ("RMSE", "rmse"),
    ("R²", "r2"),
    ("bias", "bias"),
    ("MedAE", "median_ae"),
    ("cov68", "coverage_68"),
    ("cov95", "coverage_95"),
    ("NLL", "nll"),
)
_BINNED_COLUMNS = (
    ("N", "count"),
    ("mean true", "mean_true"),
    ("mean pred", "mean_pred"),
    ("MAE", "mae"),
    ("bias", "bias"),
    ("RMSE", "rmse"),
    ("cov68", "coverage_68"),
    ("cov95", "coverage_95"),
)


def _rows(metrics: dict, binned: bool):
    """(title, header, rows) blocks for the overall table and, if asked, one binned table per target."""
    gaussian = metrics.get("head") == "gaussian"
    cols = [c for c in _OVERALL_COLUMNS if gaussian or not c[1].startswith(("coverage", "nll"))]
    header = ["target", *(c[0] for c in cols), "MAE of prior mean"]
    rows = []
    for target, result in metrics["targets"].items():
        overall = result["overall"]
        rows.append([target, *(_fmt(overall.get(key)) for _, key in cols),
                     _fmt(result.get("baseline_mae"))])
    blocks = [("Overall", header, rows)]
    if binned:
        bcols = [c for c in _BINNED_COLUMNS if gaussian or not c[1].startswith("coverage")]
        for target, result in metrics["targets"].items():
            brows = [
                [f"[{_fmt(b['lo'], 3)}, {_fmt(b['hi'], 3)}]", *(_fmt(b.get(key)) for _, key in bcols)]
                for b in result["binned"]
            ]
            blocks.append((f"{target} in bins of the true value", ["true range", *(c[0] for c in bcols)], brows))
    return blocks


def format_table(metrics: dict, binned: bool = True) -> str:
    """Plain-text tables (overall, then binned per target) for the terminal."""
    out = []
    for title, header, rows in _rows(metrics, binned):
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        out.append(title)
        out.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
        for row in rows:
            out.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def markdown_table(metrics: dict, binned: bool = True) -> str:
    """The same tables as GitHub-flavoured Markdown (for report.md)."""
    out = []
    for title, header, rows in _rows(metrics, binned):
        out.append(f"**{title}**\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for row in rows:
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)
