"""The model, its losses, its optimizer and learning-rate schedule, from an experiment config."""

from __future__ import annotations

import keras

from deeplense_tf.training.schedules import PhasedSchedule, WarmupCosineDecay


def build_model_from_config(config: dict, input_shape, targets, num_classes: int | None = None):
    """`build_model` with the config's `model` section (name, head, normalisation, crop, options).

    The softmax head's `num_classes` defaults to the classes of the config's data.
    """
    from deeplense_tf.models import build_model

    m = config["model"]
    if m["head"] == "softmax" and num_classes is None:
        from deeplense_tf.data import read_manifest
        from deeplense_tf.data.classes import class_names

        num_classes = len(class_names(read_manifest(config["data"]["path"]), config["data"]["path"]))
    return build_model(
        m["name"],
        tuple(input_shape),
        list(targets),
        head=m["head"],
        normalization=m["normalization"],
        crop=m["crop"],
        num_classes=num_classes,
        **m["options"],
    )


def make_schedule(config: dict, steps_per_epoch: int, epochs: int | None = None):
    """Warm-up + cosine over `epochs` (default `training.epochs`) of `steps_per_epoch`.

    With `training.init_from`: the first `freeze_encoder_epochs` (head only) use the full
    rate, then the whole model trains at `finetune_lr_factor` times it, each phase with
    its own warm-up and cosine.
    """
    t = config["training"]
    epochs = int(epochs or t["epochs"])
    spe = int(steps_per_epoch)

    def phase(peak, n_epochs):
        total = max(int(round(n_epochs * spe)), 1)
        warmup = min(int(round(t["warmup_epochs"] * spe)), total - 1) if n_epochs > 1 else 0
        warmup = max(warmup, 0)
        return WarmupCosineDecay(peak, warmup, total, t["final_lr_fraction"])

    if not t["init_from"]:
        return phase(t["learning_rate"], epochs)
    low = t["learning_rate"] * t["finetune_lr_factor"]
    frozen = min(t["freeze_encoder_epochs"], epochs)
    if frozen == 0:
        return phase(low, epochs)
    if frozen >= epochs:
        return phase(t["learning_rate"], epochs)
    return PhasedSchedule(
        [phase(t["learning_rate"], frozen), phase(low, epochs - frozen)], [frozen * spe]
    )


def make_optimizer(config: dict, steps_per_epoch: int, epochs: int | None = None):
    """AdamW on the warm-up + cosine schedule; decoupled weight decay skips biases and
    normalisation scales/offsets. Wrapped for loss scaling under mixed precision."""
    t = config["training"]
    optimizer = keras.optimizers.AdamW(
        learning_rate=make_schedule(config, steps_per_epoch, epochs),
        weight_decay=t["weight_decay"],
        global_clipnorm=t["clip_norm"],
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if t["mixed_precision"]:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_losses(config: dict, targets) -> dict:
    """`{target: loss}` for the config's head (and point loss / Huber delta)."""
    from deeplense_tf.models import covariance
    from deeplense_tf.models import make_losses as losses_for_head

    if config["model"]["head"] == covariance.HEAD:
        return covariance.make_losses(targets)  # one joint loss, keyed by its output
    t = config["training"]
    return losses_for_head(config["model"]["head"], targets, t["point_loss"], t["huber_delta"])


def compile_model(model, config: dict, steps_per_epoch: int):
    """`model.compile` with the config's optimizer, losses and metrics (for `model.fit` users:
    notebooks). Metrics: MAE of the (mean) prediction per target, standardised units,
    logged as `<target>_mae`. Returns the model."""
    from deeplense_tf.models import make_metrics
    from deeplense_tf.models.covariance import HEAD, JOINT_OUTPUT

    # The full-covariance head's joint output is no target (fit it with y={JOINT_OUTPUT: [B, T]}).
    targets = [name for name in model.output_names if name != JOINT_OUTPUT]
    head = config["model"]["head"]
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=make_losses(config, targets),
        metrics=None if head == HEAD else make_metrics(head, targets),
    )
    return model
