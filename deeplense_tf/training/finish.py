"""The end of a training run: from the last epoch to a finished run folder.

In order: the best epoch's weights; BatchNorm statistics re-estimated over training
batches (moving averages lag the weights at high learning rates; the re-estimate is kept
only if it does not worsen the monitored metric); the Gaussian head's stds rescaled to
nominal coverage on the validation split (`training.calibrate_variance`, the maths in
`deeplense_tf.models.calibration`); a float32 model (a mixed-precision one is rebuilt);
then the files: model.keras, history.csv, metrics.json (the summary), plots/history.png,
and run.json last, which marks the folder finished; the backup goes.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.data.schema import CLASS_TARGET
from deeplense_tf.files import save_figure, write_json_atomic
from deeplense_tf.models import covariance
from deeplense_tf.models.calibration import apply_variance_scale, fit_predictive_scale
from deeplense_tf.predictive import Predictive
from deeplense_tf.runs import layout
from deeplense_tf.runs.run import Run
from deeplense_tf.training import resume
from deeplense_tf.training.loop import TrainingLoop
from deeplense_tf.training.model_setup import build_model_from_config


def recalibrate_batchnorm(loop: TrainingLoop) -> dict | None:
    """Re-estimate BatchNorm moving statistics as plain averages over training batches.

    Every BN layer is switched to a cumulative average (momentum k / (k + 1) at batch
    k) and the model runs in training mode; the result is kept only if the monitored
    validation metric does not get worse. Returns the record for metrics.json, or None
    when off (`training.bn_recalibration_batches: 0`) or the model has no trainable BN.
    """
    batches = loop.config["training"]["bn_recalibration_batches"]
    layers = [
        layer for layer in loop.model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not batches or not layers:
        return None
    before = loop.evaluate()
    saved = loop.sync_statistics.snapshot()
    momentum = tf.Variable(0.0, trainable=False, dtype=tf.float32)
    originals = [layer.momentum for layer in layers]
    model = loop.model

    # autograph=False: the body is a plain call, and converting this closure only
    # produced a noisy "could not transform" warning.
    @tf.function(autograph=False)
    def forward(images):
        model(images, training=True)

    try:
        for layer in layers:
            layer.momentum = momentum
        for k, (images, _) in enumerate(loop.train_ds.repeat().take(batches)):
            momentum.assign(k / (k + 1.0))
            forward(loop.model_inputs(images))
    finally:
        for layer, original in zip(layers, originals):
            layer.momentum = original
    loop.sync_statistics()
    after = loop.evaluate()
    key = loop.config["training"]["monitor"]
    kept = after[key] <= before[key]
    if not kept:
        loop.sync_statistics.restore(saved)
    loop.log(
        f"BatchNorm statistics re-estimated over {batches} training batches: {key} "
        f"{before[key]:.5g} -> {after[key]:.5g} ({'kept' if kept else 'discarded'})"
    )
    return {"batches": batches, "monitor": key, "before": before, "after": after, "kept": bool(kept)}


def calibrate_covariance(loop: TrainingLoop) -> dict:
    """The full-covariance head: one scale on the covariance, fitted on the validation
    split's squared Mahalanobis distances (`models.covariance.fit_covariance_scale`),
    agreed across workers and stored in the model. Returns `{JOINT_OUTPUT: fit}`."""
    model = loop.model

    @tf.function(autograph=False, reduce_retracing=True)
    def forward(images):
        return model(images, training=False)[covariance.JOINT_OUTPUT]

    truths, joints = [], []
    for images, targets in loop.validation_batches():
        joints.append(np.asarray(forward(images), np.float64))
        truths.append(np.asarray(covariance.stack_targets(targets, loop.targets), np.float64))
    joint = covariance.JointGaussian.from_joint_output(np.concatenate(joints))
    fit = covariance.fit_covariance_scale(np.concatenate(truths), joint)  # standardised: unit-free
    fit["scale"] = loop.replicas.agree({"scale": fit["scale"]})["scale"]
    covariance.apply_covariance_scale(model, fit["scale"])
    loop.log(
        f"covariance scaled by {fit['scale']:.3f} on the validation split (joint 68% / 95% coverage "
        f"{fit['joint_coverage_68_before']:.3f} / {fit['joint_coverage_95_before']:.3f} -> "
        f"{fit['joint_coverage_68_after']:.3f} / {fit['joint_coverage_95_after']:.3f})"
    )
    return {covariance.JOINT_OUTPUT: fit}


def calibrate_variance(loop: TrainingLoop) -> dict | None:
    """Scale the head's stds so the validation split's coverage is nominal (Gaussian or
    Student-t: fitted on the head's own distribution).

    One scale per target (`deeplense_tf.models.calibration`), agreed across workers and
    stored in the model; returns the fits, or None when off.
    """
    config = loop.config
    if config["model"]["head"] in ("point", "softmax") or not config["training"]["calibrate_variance"]:
        return None
    if config["model"]["head"] == covariance.HEAD:
        return calibrate_covariance(loop)
    model = loop.model

    @tf.function(autograph=False, reduce_retracing=True)
    def forward(images):
        return model(images, training=False)

    truths = {t: [] for t in loop.targets}
    outputs = {t: [] for t in loop.targets}
    for images, targets in loop.validation_batches():
        predicted = forward(images)
        for t in loop.targets:
            truths[t].append(np.asarray(targets[t], np.float64).reshape(-1))
            outputs[t].append(np.asarray(predicted[t], np.float64))
    results = {}
    for t in loop.targets:
        raw = np.concatenate(outputs[t])
        # Standardised units (coverage is unit-free); column 2 is the Student-t head's df.
        predictive = Predictive(raw[:, 0], np.exp(0.5 * raw[:, 1]), raw[:, 2] if raw.shape[1] > 2 else None)
        fit = fit_predictive_scale(np.concatenate(truths[t]), predictive)
        fit["scale"] = loop.replicas.agree({"scale": fit["scale"]})["scale"]
        apply_variance_scale(model, t, fit["scale"])
        results[t] = fit
        loop.log(
            f"{t}: predicted stds scaled by {fit['scale']:.3f} on the validation split (68% coverage "
            f"{fit['coverage_68_before']:.3f} -> {fit['coverage_68_after']:.3f})"
        )
    return results


def calibrate_temperature(loop: TrainingLoop) -> dict | None:
    """The softmax head's temperature fitted on the validation split's logits (the maths
    in `deeplense_tf.models.classification`), agreed across workers and set in the model;
    returns the fit, or None for a regression head."""
    from deeplense_tf.models.classification import LOGITS_LAYER, fit_temperature, set_temperature
    from deeplense_tf.models.cut import cut_model

    if loop.config["model"]["head"] != "softmax":
        return None
    logits_model = cut_model(loop.model, LOGITS_LAYER)

    @tf.function(autograph=False, reduce_retracing=True)
    def forward(images):
        return logits_model(images, training=False)

    logits, labels = [], []
    for images, targets in loop.validation_batches():
        logits.append(np.asarray(forward(images), np.float64))
        labels.append(np.asarray(targets[CLASS_TARGET]).reshape(-1).astype(np.int64))
    fit = fit_temperature(np.concatenate(logits), np.concatenate(labels))
    fit["temperature"] = loop.replicas.agree({"temperature": fit["temperature"]})["temperature"]
    set_temperature(loop.model, fit["temperature"])
    loop.log(
        f"class probabilities: temperature {fit['temperature']:.3f} fitted on the validation split "
        f"(cross-entropy {fit['nll_before']:.4f} -> {fit['nll_after']:.4f})"
    )
    return fit


def float32_model(loop: TrainingLoop, input_shape, previous_policy):
    """The model to save: float32 throughout (a mixed-precision model is rebuilt under
    `previous_policy` with the same weights)."""
    if not loop.config["training"]["mixed_precision"]:
        return loop.model
    keras.mixed_precision.set_global_policy(previous_policy)
    model = build_model_from_config(loop.config, input_shape, loop.targets)
    model.set_weights(loop.model.get_weights())
    return model


def summary(loop: TrainingLoop, final_val: dict, recalibration, model, train_examples: int) -> dict:
    """The run's metrics.json (before the calibration record is added)."""
    seconds = loop.elapsed
    images = loop.epoch * loop.steps_per_epoch * loop.global_batch
    return {
        "monitor": loop.config["training"]["monitor"],
        "best_epoch": loop.best_epoch,
        "best": loop.best,
        "epochs": loop.epoch,
        "planned_epochs": loop.planned_epochs,
        "stopped": loop.stopped or "completed",
        "validation": {
            "loss": final_val["val_loss"],
            "targets": {
                t: {
                    "mae": final_val[f"val_{t}_mae_physical"],
                    "mae_standardised": final_val[f"val_{t}_mae"],
                    # the target's own loss (standardised units): the tuner's per-target NLL
                    "loss": final_val.get(f"val_{t}_loss", final_val["val_loss"]),
                }
                for t in loop.targets if t != CLASS_TARGET
            },
            **({"accuracy": final_val["val_accuracy"]} if "val_accuracy" in final_val else {}),
        },
        "bn_recalibration": recalibration,
        "train_seconds": seconds,
        "train_images_per_second": images / seconds if seconds > 0 else None,
        "train_examples": train_examples,
        "steps_per_epoch": loop.steps_per_epoch,
        "parameters": int(model.count_params()),
        "strategy": loop.config["training"]["strategy"],
        "replicas": loop.replicas.count,
    }


def write_history_plot(history: list[dict], targets, target_stats: dict, best_epoch, path: Path) -> list[Path]:
    """Loss, per-target MAE (physical units) and learning rate per epoch, as one PNG."""
    if not history:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    panels = 2 + len(targets)
    fig = Figure(figsize=(4.2 * panels, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    axes[0].plot(epochs, [r["loss"] for r in history], label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in history], label="validation")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss (standardised targets)")
    axes[0].legend()
    for ax, t in zip(axes[1:], targets):
        if t == CLASS_TARGET:  # a classifier: its accuracy
            ax.plot(epochs, [r["accuracy"] for r in history], label="train")
            ax.plot(epochs, [r["val_accuracy"] for r in history], label="validation")
            ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
            ax.legend()
            continue
        std = target_stats[t]["std"]
        ax.plot(epochs, [r[f"{t}_mae"] * std for r in history], label="train")
        ax.plot(epochs, [r[f"val_{t}_mae_physical"] for r in history], label="validation")
        ax.set(xlabel="epoch", ylabel=f"MAE ({t})", title=f"mean absolute error: {t}")
        ax.legend()
    axes[-1].plot(epochs, [r["learning_rate"] for r in history])
    axes[-1].set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
    if best_epoch:
        for ax in axes[:-1]:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    return [save_figure(fig, path)]


def finish(loop: TrainingLoop, *, input_shape, manifest: dict, run_info: dict, train_examples: int,
           previous_policy) -> Run:
    """Best weights, BatchNorm re-estimate, variance calibration, then the run folder's
    files (on the chief). Returns the finished `Run` (`path=None` on other workers)."""
    loop.restore_best_weights()
    recalibration = recalibrate_batchnorm(loop)
    final_val = recalibration["after"] if recalibration and recalibration["kept"] else None
    variance_calibration = calibrate_variance(loop)
    temperature_calibration = calibrate_temperature(loop)
    if final_val is None or variance_calibration or temperature_calibration:
        final_val = loop.evaluate()
    model = float32_model(loop, input_shape, previous_policy)
    chief = loop.replicas.chief
    result = Run(
        path=loop.out if chief else None,
        model=model,
        config=loop.config,
        targets=list(loop.targets),
        head=loop.config["model"]["head"],
        input_shape=tuple(input_shape),
        target_stats=loop.target_stats,
        info=run_info,
        manifest=manifest,
    )
    if not chief:
        return result
    paths = layout.RunPaths(loop.out)
    layout.save_model_atomic(model, paths.model)
    loop.write_history()
    metrics = summary(loop, final_val, recalibration, model, train_examples)
    metrics.update(loop.summary_extras(final_val))
    if variance_calibration:
        metrics["variance_calibration"] = {"split": "val", "targets": variance_calibration}
    if temperature_calibration:
        metrics["temperature_calibration"] = {"split": "val", **temperature_calibration}
    write_json_atomic(paths.metrics, metrics)
    plots = write_history_plot(loop.history, loop.targets, loop.target_stats, loop.best_epoch,
                               paths.plots / "history.png")
    write_json_atomic(paths.info, run_info)  # last: marks the folder finished
    resume.remove_backups(loop.out)
    loop.log(
        "wrote "
        + ", ".join(str(p) for p in (paths.model, paths.config, paths.target_stats, paths.manifest,
                                     paths.history, paths.metrics, paths.info))
        + (", " + ", ".join(str(p) for p in plots) if plots else "")
        + f", {paths.logs}"
    )
    return result
