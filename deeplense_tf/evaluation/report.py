"""Evaluate a run on a data set and write what `deeplense evaluate` writes.

`evaluate_run(run, examples)` predicts and computes the metrics; `write_evaluation`
writes `metrics.json`, `predictions.csv` and one figure per target; `format_table` and
`markdown_table` render the overall and binned metrics for the terminal and for
`report.md`; `coverage_markdown` renders the coverage section (curve, per-bin coverage,
figure) of any report from the metrics alone. `run` is a `deeplense_tf.runs.Run` (anything with `targets`,
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
from deeplense_tf.evaluation.plots import plot_coverage, plot_target
from deeplense_tf.files import atomic_path, write_text_atomic
from deeplense_tf.predictive import Predictive
from deeplense_tf.runs.run import check_examples_fit as check_fits  # noqa: F401  (public here too)

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"


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
    overall, binned, baseline MAE, coverage curve; plus counts and speed), `table`
    holds per target the arrays `true`, `mean`, `std` (physical units, only the examples
    where that target is defined) for plots and predictions.csv.

    Coverage and NLL are those of the predictive distribution the run deploys: the
    head's own (Gaussian or Student-t), and under `tta` the equal-weight mixture of the
    eight views (`Run.predict`'s `components`), not a Gaussian matched to its moments.
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
        predictive = None
        if std is not None:
            predictive = Predictive.from_prediction(predictions[target]).subset(keep)
            metrics.setdefault("distribution", {})[target] = {
                "family": predictive.family, "components": predictive.components,
            }
        metrics["targets"][target] = evaluate_target(true, mean, std, bins=bins, predictive=predictive)
        table[target] = {"true": true, "mean": mean, "std": std}
    if run.head == "full_covariance":  # the joint Gaussian over all targets (evaluation/joint.py)
        from deeplense_tf.evaluation.joint import evaluate_joint

        metrics["joint"] = evaluate_joint(run, images, {t: truth[t][used] for t in run.targets},
                                          tta=tta, batch_size=batch_size)
    return metrics, table


def write_evaluation(metrics: dict, table: dict, out_dir, *, title: str | None = None) -> list[Path]:
    """Write metrics.json, predictions.csv and `plots/<target>.png` into `out_dir`; return the paths.

    Adds `plots` (`{target: path relative to out_dir}`) to `metrics`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    metrics["plots"] = {}  # relative to out_dir
    for target, cols in table.items():
        result = metrics["targets"][target]
        heading = title or f"{target}: {metrics['examples']} examples of {metrics['data']}" + (
            " (D4 test-time augmentation)" if metrics.get("tta") else "")
        path = plot_target(
            target, cols["true"], cols["mean"], cols["std"], out_dir / "plots" / f"{target}.png",
            title=heading, bins=metrics.get("bins", DEFAULT_BINS), calibration=result.get("calibration"),
        )
        written.append(path)
        metrics["plots"][target] = f"plots/{target}.png"
        if result.get("calibration") is not None:
            written.append(plot_coverage(target, to_jsonable(result),
                                         out_dir / "plots" / f"{target}_coverage.png", title=heading))
            metrics["plots"][f"{target}_coverage"] = f"plots/{target}_coverage.png"

    if metrics.get("joint"):
        from deeplense_tf.evaluation.joint import CORNER_PLOT, plot_corner

        corner = metrics["joint"]["corner"]
        written.append(plot_corner(corner["mean"], corner["covariance"], corner["truth"],
                                   metrics["joint"]["targets"], out_dir / "plots" / CORNER_PLOT,
                                   title=f"posterior of test lens {corner['index']} and its truth (red)"))
        metrics["plots"]["corner"] = f"plots/{CORNER_PLOT}"

    pred_path = out_dir / PREDICTIONS_NAME
    with atomic_path(pred_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "true", "mean", "std"])
        for target, cols in table.items():
            std = cols["std"] if cols["std"] is not None else [math.nan] * len(cols["true"])
            for row in zip(cols["true"], cols["mean"], std):
                writer.writerow([target, *(f"{v:.6g}" if math.isfinite(v) else "" for v in row)])
    written.append(pred_path)

    # Written last and atomically: its presence means the evaluation finished.
    metrics_path = out_dir / METRICS_NAME
    write_text_atomic(metrics_path, json.dumps(to_jsonable(metrics), indent=2) + "\n")
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
    ("max gap", "max_coverage_deviation"),
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
    ("max gap", "max_coverage_deviation"),
)


def _rows(metrics: dict, binned: bool):
    """(title, header, rows) blocks for the overall table and, if asked, one binned table per target."""
    probabilistic = metrics.get("head", "gaussian") != "point"
    uncertain = ("coverage", "max_coverage", "nll")
    cols = [c for c in _OVERALL_COLUMNS if probabilistic or not c[1].startswith(uncertain)]
    header = ["target", *(c[0] for c in cols), "MAE of prior mean"]
    rows = []
    for target, result in metrics["targets"].items():
        overall = result["overall"]
        rows.append([target, *(_fmt(overall.get(key)) for _, key in cols),
                     _fmt(result.get("baseline_mae"))])
    blocks = [("Overall", header, rows)]
    joint = metrics.get("joint")
    if joint:  # the full-covariance head: fractions of lenses inside the joint regions
        blocks.append((
            f"Joint calibration over {joint['degrees_of_freedom']} targets ({joint['distribution']})",
            ["N", "d² ≤ χ²(68%)", "d² ≤ χ²(95%)", f"mean d² (nominal {joint['degrees_of_freedom']})"],
            [[str(joint["examples"]), _fmt(joint["coverage_68"], 3), _fmt(joint["coverage_95"], 3),
              _fmt(joint["mean_d2"], 2)]],
        ))
    if binned:
        bcols = [c for c in _BINNED_COLUMNS if probabilistic or not c[1].startswith(uncertain)]
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


def coverage_markdown(metrics: dict, *, plots_prefix: str = "") -> str:
    """The coverage section of a Markdown report, from an evaluation's metrics (as in
    metrics.json): per target, the largest deviation of the expected-coverage curve over
    5%..95%, 68% / 95% coverage, the curve level by level, coverage per bin of the true
    value, and the coverage figure (`plots_prefix` + its path relative to the
    evaluation folder, e.g. "eval/"). Empty for a point head.
    """
    out = []
    for target, result in metrics["targets"].items():
        curve = result.get("calibration")
        if curve is None:
            continue
        family = ((metrics.get("distribution") or {}).get(target) or {}).get("family", "gaussian")
        views = " mixed over the 8 D4 views (TTA)" if metrics.get("tta") else ""
        out.append(f"**Coverage of {target}** ({family} predictive distribution{views}; "
                   f"{result['overall']['count']} examples)\n")
        out.append(f"Largest |observed − nominal| over the 19 levels 5%..95%: "
                   f"**{_fmt(curve.get('max_deviation'), 3)}**; 68% intervals hold "
                   f"**{_fmt(curve.get('coverage_68'), 3)}**, 95% intervals "
                   f"**{_fmt(curve.get('coverage_95'), 3)}**.\n")
        out.append("| nominal | " + " | ".join(f"{e:.0%}" for e in curve["expected"]) + " |")
        out.append("|---|" + "---:|" * len(curve["expected"]))
        out.append("| observed | " + " | ".join(_fmt(o, 3) for o in curve["observed"]) + " |\n")
        out.append("| true range | N | cov68 | cov95 | max gap |")
        out.append("|---|---:|---:|---:|---:|")
        for row in result["binned"]:
            out.append(f"| [{_fmt(row['lo'], 3)}, {_fmt(row['hi'], 3)}] | {row['count']} | "
                       f"{_fmt(row.get('coverage_68'), 3)} | {_fmt(row.get('coverage_95'), 3)} | "
                       f"{_fmt(row.get('max_coverage_deviation'), 3)} |")
        plot = (metrics.get("plots") or {}).get(f"{target}_coverage")
        if plot:
            out.append(f"\n![coverage of {target}]({plots_prefix}{plot})")
        out.append("")
    return "\n".join(out)
