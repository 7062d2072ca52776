"""Evaluate a classifier run (`model.head: softmax`): what `deeplense evaluate` writes for it.

`classification_metrics(labels, probabilities, class_names)` is pure NumPy:

- `accuracy`; `macro_f1` (the unweighted mean of the per-class F1, so a rare class counts
  as much as a common one);
- `auroc_ovr_macro`: the mean over classes of the one-vs-rest AUROC (the probability
  that a random example of the class scores higher for it than a random other example,
  ties counting half: the Mann-Whitney statistic), per class in `per_class`;
- `confusion_matrix` (rows: true class, columns: predicted class, counts);
- `ece`: the expected calibration error of the top-class confidence over `bins`
  equal-width confidence bins, `sum_b (n_b / N) |accuracy_b - confidence_b|`, and the
  bins themselves (`reliability`) for the reliability diagram;
- `nll` (mean cross-entropy, nats) and `brier` (mean squared error of the probability
  vector against the one-hot label).

`evaluate_classifier(run, examples)` predicts (optionally with D4 test-time
augmentation) and computes them; `write_classification` writes `metrics.json`,
`predictions.csv` (true and predicted class and one probability column per class),
`plots/reliability.png` and `plots/confusion.png`; `format_classification` is the terminal
table. A class the test data do not hold has no AUROC (None) and is left out of the macro
mean.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from deeplense_tf.data.classes import labels_for_run
from deeplense_tf.data.schema import CLASS_TARGET
from deeplense_tf.errors import DataError
from deeplense_tf.evaluation.metrics import to_jsonable
from deeplense_tf.files import atomic_path, save_figure, write_text_atomic

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
RELIABILITY_BINS = 15

_MIN_PROBABILITY = 1e-30  # as the training loss clips, so the NLL here is the loss's


def one_vs_rest_auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """AUROC of `scores` for the boolean `positive` (Mann-Whitney, ties half); None when
    either side is empty."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> list[dict]:
    """Equal-width confidence bins over [0, 1]: `{"lo", "hi", "count", "confidence",
    "accuracy"}` each (mean confidence and accuracy None in an empty bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b is [b / bins, (b + 1) / bins), the last one closed: floor(confidence * bins)
    # puts 0.6 in [0.6, 0.7) where a search among the rounded edges of linspace may not.
    which = np.clip(np.floor(np.asarray(confidence) * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        out.append({
            "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
            "confidence": float(confidence[inside].mean()) if count else None,
            "accuracy": float(correct[inside].mean()) if count else None,
        })
    return out


def classification_metrics(labels, probabilities, class_names, bins: int = RELIABILITY_BINS) -> dict:
    """Every classification metric of `probabilities` `[N, K]` against `labels` `[N]`
    (indices into `class_names`); see the module docstring for the definitions."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, np.float64)
    k = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), k):
        raise DataError(
            f"probabilities must be [N, {k}] for {len(labels)} labels, got {list(probabilities.shape)}"
        )
    if not len(labels):
        raise DataError("no examples to evaluate")
    if bins < 1:
        raise DataError(f"reliability bins must be at least 1, got {bins}")
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class, f1s, aurocs = {}, [], []
    for c, name in enumerate(class_names):
        tp = int(confusion[c, c])
        support, predicted_c = int(confusion[c].sum()), int(confusion[:, c].sum())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        auroc = one_vs_rest_auroc(probabilities[:, c], labels == c)
        per_class[name] = {"support": support, "precision": precision, "recall": recall, "f1": f1,
                           "auroc": auroc}
        if support:  # a class absent from the data has no F1 worth averaging
            f1s.append(f1)
        if auroc is not None:
            aurocs.append(auroc)
    confidence = probabilities[np.arange(len(labels)), predicted]
    correct = (predicted == labels).astype(np.float64)
    reliability = reliability_bins(confidence, correct, bins)
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability if b["count"])
    onehot = np.eye(k)[labels]
    chosen = np.maximum(probabilities[np.arange(len(labels)), labels], _MIN_PROBABILITY)
    return {
        "count": int(len(labels)),
        "accuracy": float(correct.mean()),
        "macro_f1": float(np.mean(f1s)),
        "auroc_ovr_macro": float(np.mean(aurocs)) if aurocs else None,
        "ece": float(ece / len(labels)),
        "nll": float(-np.mean(np.log(chosen))),
        "brier": float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1))),
        "mean_confidence": float(confidence.mean()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "reliability": {"bins": reliability},
    }


def evaluate_classifier(run, examples, *, tta: bool = False, bins: int = RELIABILITY_BINS,
                        batch_size: int = 256) -> tuple[dict, dict]:
    """Predict `examples` with the classifier `run` and compute every metric.

    `examples` is a `deeplense_tf.data.Examples` with class labels; its classes are matched
    to the run's by name (DataError for a class the run does not predict). Returns
    `(metrics, table)`: `table` holds `labels` `[N]` and `probabilities` `[N, K]`.
    """
    names = tuple(run.class_names)
    images = examples.images
    expected = tuple(int(d) for d in run.input_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise DataError(
            f"{examples.source}: images have shape {tuple(images.shape[1:])} (per image) but the run "
            f"expects {expected} (H, W, channels)"
        )
    labels = labels_for_run(examples.class_id, list(examples.class_names), names, str(examples.source))
    start = time.perf_counter()
    probabilities = run.predict(images, batch_size=batch_size, tta=tta)[CLASS_TARGET]["probabilities"]
    seconds = time.perf_counter() - start
    metrics = {
        "data": str(examples.source),
        "head": run.head,
        "tta": bool(tta),
        "examples": int(len(labels)),
        "classes": list(names),
        "predict_seconds": round(seconds, 3),
        "images_per_second": round(len(labels) / seconds, 1) if seconds > 0 else None,
        "classification": classification_metrics(labels, probabilities, names, bins),
    }
    return metrics, {"labels": labels, "probabilities": np.asarray(probabilities)}


def plot_reliability(metrics: dict, path, title: str = "") -> Path:
    """The reliability diagram: accuracy against mean confidence per confidence bin (bars),
    the diagonal a calibrated model follows, and the share of examples per bin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = metrics["classification"]
    bins = result["reliability"]["bins"]
    fig = Figure(figsize=(8.4, 3.8))
    FigureCanvasAgg(fig)
    ax, hist = fig.subplots(1, 2)
    centres = [0.5 * (b["lo"] + b["hi"]) for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"]
    filled = [b for b in bins if b["count"]]
    ax.bar([0.5 * (b["lo"] + b["hi"]) for b in filled], [b["accuracy"] for b in filled], width=width,
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="C3",
            label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence of the predicted class", ylabel="accuracy",
           title=f"reliability (ECE {result['ece']:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centres, [b["count"] for b in bins], width=width, edgecolor="black")
    hist.set(xlim=(0, 1), yscale="log", xlabel="confidence of the predicted class", ylabel="examples",
             title="examples per bin")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(metrics: dict, path, title: str = "") -> Path:
    """The confusion matrix (rows true, columns predicted), counts and row fractions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = metrics["classes"]
    counts = np.asarray(metrics["classification"]["confusion_matrix"], np.float64)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.4 * len(names) + 2.2, 1.2 * len(names) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(counts[i, j])}\n{rows[i, j]:.3f}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted class", ylabel="true class",
           title=title or f"accuracy {metrics['classification']['accuracy']:.4f}")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    return save_figure(fig, path)


def write_classification(metrics: dict, table: dict, out_dir) -> list[Path]:
    """Write predictions.csv, the two figures and metrics.json (last) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heading = f"{metrics['examples']} examples of {metrics['data']}" + (
        " (D4 test-time augmentation)" if metrics.get("tta") else "")
    written = [plot_reliability(metrics, out_dir / "plots" / "reliability.png", heading),
               plot_confusion(metrics, out_dir / "plots" / "confusion.png")]
    metrics["plots"] = {"reliability": "plots/reliability.png", "confusion": "plots/confusion.png"}
    names = metrics["classes"]
    pred_path = out_dir / PREDICTIONS_NAME
    with atomic_path(pred_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", "predicted", *(f"p_{name}" for name in names)])
        for label, row in zip(table["labels"], table["probabilities"]):
            writer.writerow([names[label], names[int(np.argmax(row))], *(f"{p:.6g}" for p in row)])
    written.append(pred_path)
    metrics_path = out_dir / METRICS_NAME
    write_text_atomic(metrics_path, json.dumps(to_jsonable(metrics), indent=2) + "\n")
    written.append(metrics_path)
    return written


def format_classification(metrics: dict) -> str:
    """The terminal summary: overall metrics, per-class table, confusion matrix."""
    result, names = metrics["classification"], metrics["classes"]

    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    lines = [
        f"{result['count']} examples: accuracy {fmt(result['accuracy'])}, macro-F1 "
        f"{fmt(result['macro_f1'])}, one-vs-rest AUROC {fmt(result['auroc_ovr_macro'])}, ECE "
        f"{fmt(result['ece'])}, NLL {fmt(result['nll'])}",
        "",
        f"{'class':<10} {'N':>6} {'precision':>9} {'recall':>8} {'F1':>8} {'AUROC':>8}",
    ]
    for name in names:
        c = result["per_class"][name]
        lines.append(f"{name:<10} {c['support']:>6} {fmt(c['precision']):>9} {fmt(c['recall']):>8} "
                     f"{fmt(c['f1']):>8} {fmt(c['auroc']):>8}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 10 + "".join(f"{n:>10}" for n in names)]
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:<10}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines) + "\n"
