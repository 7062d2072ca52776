"""`deeplense evaluate --run RUN [--data PATH] [--split test] [--tta] [--out DIR]`.

Loads the run, reads the data set (default: the test split of the data the run was
trained on, from RUN/config.yaml), checks that its images and targets fit the run,
and writes `metrics.json` (overall and binned), `predictions.csv` and one figure per
target into RUN/eval/ (or --out). TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deeplense_tf.errors import ConfigError
from deeplense_tf.evaluation.classification import RELIABILITY_BINS
from deeplense_tf.evaluation.metrics import DEFAULT_BINS
from deeplense_tf.runs.layout import RunPaths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN", help="run folder written by `deeplense train`")
    parser.add_argument(
        "--data", metavar="PATH",
        help="data set to evaluate on: simulated data directory, DeepLense .npy folder, .npz or .h5 "
        "(default: the run's training data, from RUN/config.yaml)",
    )
    parser.add_argument("--split", default="test", help="split of a simulated data directory (default: test)")
    parser.add_argument("--limit", type=int, metavar="N", help="use only the first N examples")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average predictions over the 8 D4 symmetries")
    parser.add_argument("--bins", type=int, default=None,
                        help=f"equal-width bins across each target's true range (default: {DEFAULT_BINS}); "
                        f"for a classifier, confidence bins of the reliability diagram and ECE "
                        f"(default: {RELIABILITY_BINS})")
    parser.add_argument("--batch-size", type=int, default=256, help="images per prediction batch")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN/eval)")


def evaluate_command(
    run_path,
    data=None,
    *,
    split: str = "test",
    limit: int | None = None,
    tta: bool = False,
    bins: int | None = None,
    batch_size: int = 256,
    out=None,
    verbose: bool = True,
) -> dict:
    """What `deeplense evaluate` does, callable from Python (the quickstart uses it).

    Returns the metrics dict (as in metrics.json) with `out_dir` and `written` added.
    A classifier run (`model.head: softmax`) gets `evaluation.classification`'s metrics
    (accuracy, macro-F1, one-vs-rest AUROC, confusion matrix, ECE, reliability diagram).
    `bins` None is the task's default (`DEFAULT_BINS`, `RELIABILITY_BINS`).
    """
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.report import evaluate_run, format_table, write_evaluation
    from deeplense_tf.runs import Run

    if bins is not None and bins < 1:
        raise ConfigError(f"--bins must be at least 1, got {bins}")
    run = Run.load(run_path)
    data = run.data_path(data)
    examples = load_examples(data, split=split, limit=limit)
    if run.head == "softmax":
        from deeplense_tf.evaluation import classification as task

        evaluate_task = task.evaluate_classifier
        format_report, write_report = task.format_classification, task.write_classification
        bins = bins or RELIABILITY_BINS
    else:
        evaluate_task, format_report, write_report = evaluate_run, format_table, write_evaluation
        bins = bins or DEFAULT_BINS
    metrics, table = evaluate_task(run, examples, tta=tta, bins=bins, batch_size=batch_size)
    metrics = {"run": str(run_path), "split": split, **metrics}
    out_dir = Path(out) if out is not None else RunPaths(run_path).eval
    written = write_report(metrics, table, out_dir)
    if verbose:
        print(format_report(metrics))
        for path in written:
            print(f"wrote {path}")
    return dict(metrics, out_dir=str(out_dir), written=[str(p) for p in written])


def run(args) -> int:
    evaluate_command(
        args.run, args.data, split=args.split, limit=args.limit, tta=args.tta, bins=args.bins,
        batch_size=args.batch_size, out=args.out,
    )
    return 0
