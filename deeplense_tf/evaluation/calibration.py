"""`calibrate_run`: calibrate a finished run's standard deviations and rewrite its model.

The maths (fit a variance scale, apply it to the output layer) is in
`deeplense_tf.models.calibration`, next to the Gaussian head it adjusts, so training
and evaluation both import it downward; `fit_variance_scale` and
`apply_variance_scale` are re-exported here for code written against the old path.
`deeplense calibrate --run RUN` calls `calibrate_run`.
"""

from __future__ import annotations

from deeplense_tf.errors import RunError
from deeplense_tf.models.calibration import apply_variance_scale, fit_variance_scale

__all__ = ["apply_variance_scale", "calibrate_run", "fit_variance_scale"]


def calibrate_run(run_path, data=None, *, split: str = "val", limit: int | None = None,
                  batch_size: int = 256, verbose: bool = True) -> dict:
    """Calibrate a finished run's stds on `split` and rewrite its `model.keras`.

    Returns `{target: fit_variance_scale(...) result}`; the same goes into the run's
    `metrics.json` under `variance_calibration`. Raises `RunError` for a point head.
    """
    import json
    from pathlib import Path

    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.commands import default_data_path
    from deeplense_tf.evaluation.report import check_fits
    from deeplense_tf.training import run as run_files
    from deeplense_tf.training.config import write_text_atomic
    from deeplense_tf.training.run import Run
    from deeplense_tf.training.trainer import save_model_atomic

    run = Run.load(run_path)
    if run.head != "gaussian":
        raise RunError(f"{run_path}: the run has a {run.head} head; only a Gaussian head has stds to calibrate")
    data = str(data) if data is not None else default_data_path(run, run_path)
    examples = load_examples(data, split=split, limit=limit)
    check_fits(run, examples)
    predictions = run.predict(examples.images, batch_size=batch_size)
    results = {}
    for target in run.targets:
        fit = fit_variance_scale(examples.targets[target], predictions[target]["mean"],
                                 predictions[target]["std"])
        apply_variance_scale(run.model, target, fit["scale"])
        results[target] = fit
        if verbose:
            print(
                f"{target}: std x {fit['scale']:.3f} on {fit['examples']} {split} examples; 68% coverage "
                f"{fit['coverage_68_before']:.3f} -> {fit['coverage_68_after']:.3f}, mean coverage gap "
                f"{fit['calibration_error_before']:.3f} -> {fit['calibration_error_after']:.3f}"
            )
    run_dir = Path(run_path)
    save_model_atomic(run.model, run_dir / run_files.MODEL_FILE)
    metrics_path = run_dir / run_files.METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["variance_calibration"] = {"data": data, "split": split, "targets": results}
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    if verbose:
        print(f"wrote {run_dir / run_files.MODEL_FILE}, {metrics_path}")
    return results
