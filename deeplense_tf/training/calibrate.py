"""`calibrate_run`: the end-of-training variance calibration, for a run that is finished.

`deeplense train` calibrates the Gaussian head's stds at the end of training
(`training/finish.py`); this does the same to a finished run folder (`deeplense calibrate
--run RUN`, and `ensemble_runs`, whose mixture needs a scale of its own): predict the
validation split, fit one scale per target (`deeplense_tf.models.calibration`), store it
in the model and rewrite `model.keras` atomically. Calibrating twice composes (the second
scale comes out near 1).
"""

from __future__ import annotations

from deeplense_tf.errors import RunError
from deeplense_tf.files import write_json_atomic
from deeplense_tf.models import covariance
from deeplense_tf.models.calibration import apply_variance_scale, fit_predictive_scale
from deeplense_tf.predictive import Predictive
from deeplense_tf.runs.layout import save_model_atomic
from deeplense_tf.runs.run import Run


def calibrate_run(run_path, data=None, *, split: str = "val", limit: int | None = None,
                  batch_size: int = 256, tta: bool = False, verbose: bool = True) -> dict:
    """Calibrate a finished run's stds on `split` and rewrite its `model.keras`.

    Args:
        run_path: the run folder.
        data: any readable data set (`deeplense_tf.data.load_examples`); default: the
            run's training data.
        split: split of a simulated data directory (never calibrate on test).
        limit: use only the first `limit` examples.
        tta: fit the scale for TTA deployment: on the eight-view mixture that
            `evaluate --tta` / `predict --tta` use (one scale lives in the model, so
            calibrate for the way the model will be used).

    Returns `{target: fit_predictive_scale(...) result}` (fitted on the head's own
    distribution, Gaussian or Student-t); the same goes into the run's `metrics.json`
    under `variance_calibration` (with `data`, `split` and `tta`). Raises `RunError` for
    a point head. A classifier (softmax head) gets its temperature refitted instead
    (`calibrate_temperature`).
    """
    from deeplense_tf.data import load_examples

    run = Run.load(run_path)
    if run.head == "softmax":
        return calibrate_temperature(run, data, split=split, limit=limit, batch_size=batch_size,
                                     tta=tta, verbose=verbose)
    if run.head == "point":
        raise RunError(f"{run_path}: the run has a point head; it has no stds to calibrate")
    data = run.data_path(data)
    examples = load_examples(data, split=split, limit=limit)
    run.check_examples(examples)
    if run.head == covariance.HEAD:
        return calibrate_covariance_run(run, examples, data, split=split, batch_size=batch_size,
                                        tta=tta, verbose=verbose)
    predictions = run.predict(examples.images, batch_size=batch_size, tta=tta)
    results = {}
    for target in run.targets:
        fit = fit_predictive_scale(examples.targets[target], Predictive.from_prediction(predictions[target]))
        apply_variance_scale(run.model, target, fit["scale"])
        results[target] = fit
        if verbose:
            print(
                f"{target}: std x {fit['scale']:.3f} on {fit['examples']} {split} examples; 68% coverage "
                f"{fit['coverage_68_before']:.3f} -> {fit['coverage_68_after']:.3f}, mean coverage gap "
                f"{fit['calibration_error_before']:.3f} -> {fit['calibration_error_after']:.3f}"
            )
    paths = run.paths
    save_model_atomic(run.model, paths.model)
    metrics = run.metrics
    metrics["variance_calibration"] = {"data": data, "split": split, "tta": bool(tta), "targets": results}
    write_json_atomic(paths.metrics, metrics)
    if verbose:
        print(f"wrote {paths.model}, {paths.metrics}")
    return results


def calibrate_temperature(run, data=None, *, split: str = "val", limit: int | None = None,
                          batch_size: int = 256, tta: bool = False, verbose: bool = True) -> dict:
    """Refit a classifier run's temperature on `split` of `data` (default: the run's own
    data) and rewrite its `model.keras`; the fit replaces the previous temperature.

    Returns `fit_temperature`'s record, which also goes into metrics.json under
    `temperature_calibration` (with `data` and `split`).
    """
    import numpy as np

    from deeplense_tf.data import load_examples
    from deeplense_tf.data.classes import labels_for_run
    from deeplense_tf.models.classification import LOGITS_LAYER, fit_temperature, set_temperature
    from deeplense_tf.models.cut import cut_model

    if tta:
        raise RunError(f"{run.path}: a classifier's temperature is fitted on single views; calibrate "
                       "without --tta (evaluate --tta averages the calibrated probabilities)")
    data = run.data_path(data)
    examples = load_examples(data, split=split, limit=limit)
    labels = labels_for_run(examples.class_id, list(examples.class_names), run.class_names,
                            str(examples.source))
    images = run._check_images(examples.images)
    logits_model = cut_model(run.model, LOGITS_LAYER)
    logits = np.concatenate([
        np.asarray(logits_model(images[start : start + batch_size], training=False), np.float64)
        for start in range(0, len(images), batch_size)
    ])
    fit = fit_temperature(logits, labels)
    set_temperature(run.model, fit["temperature"])
    if verbose:
        print(f"temperature {fit['temperature']:.3f} on {fit['examples']} {split} examples; "
              f"cross-entropy {fit['nll_before']:.4f} -> {fit['nll_after']:.4f}")
    paths = run.paths
    save_model_atomic(run.model, paths.model)
    metrics = run.metrics
    metrics["temperature_calibration"] = {"data": data, "split": split, **fit}
    write_json_atomic(paths.metrics, metrics)
    if verbose:
        print(f"wrote {paths.model}, {paths.metrics}")
    return fit


def calibrate_covariance_run(run, examples, data, *, split: str, batch_size: int = 256,
                             tta: bool = False, verbose: bool = True) -> dict:
    """`calibrate_run` for the full-covariance head: one scale on the covariance, fitted on
    the squared Mahalanobis distances of `examples` (`models.covariance.fit_covariance_scale`).
    Returns `{JOINT_OUTPUT: fit}`, also recorded under `variance_calibration`."""
    import numpy as np

    if tta:
        raise RunError(f"{run.path}: calibrate --tta is not supported for the full_covariance head "
                       "(the 8-view mixture is not Gaussian); calibrate without --tta")
    truth = np.stack([np.asarray(examples.targets[t], np.float64) for t in run.targets], axis=1)
    keep = np.isfinite(truth).all(axis=1)
    joint = run.predict_joint(examples.images[keep], batch_size=batch_size)
    fit = covariance.fit_covariance_scale(truth[keep], joint)
    covariance.apply_covariance_scale(run.model, fit["scale"])
    if verbose:
        print(f"covariance x {fit['scale']:.3f} on {fit['examples']} {split} examples; joint 68% / 95% "
              f"coverage {fit['joint_coverage_68_before']:.3f} / {fit['joint_coverage_95_before']:.3f} -> "
              f"{fit['joint_coverage_68_after']:.3f} / {fit['joint_coverage_95_after']:.3f}")
    paths = run.paths
    save_model_atomic(run.model, paths.model)
    metrics = run.metrics
    results = {covariance.JOINT_OUTPUT: fit}
    metrics["variance_calibration"] = {"data": data, "split": split, "tta": False, "targets": results}
    write_json_atomic(paths.metrics, metrics)
    if verbose:
        print(f"wrote {paths.model}, {paths.metrics}")
    return results
