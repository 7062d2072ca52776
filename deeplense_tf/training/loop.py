"""The training loop: one `strategy.run` loop for every tf.distribute strategy.

Why a custom loop rather than `model.fit`: Keras 3's `fit` fails under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585). A `tf.function` step that calls
`strategy.run` on batches of `strategy.experimental_distribute_dataset` works for the
default strategy, `MirroredStrategy` and `MultiWorkerMirroredStrategy` alike, so there is
one loop, and what Keras callbacks would do is done here, once per epoch:

- early stopping and the best-model checkpoint on `training.monitor` (`model.keras`,
  written atomically, so a reader never sees half a file);
- TensorBoard scalars (`logs/train`, `logs/validation`), `history.csv`, a per-epoch
  line and a tqdm bar on a terminal;
- a time budget that shortens the cosine schedule to the epochs that fit;
- the backup a resumed run continues from (`resume.py`);
- a NaN loss stops training with the likely causes named (`TrainingDiverged`).

Decisions (early stopping, time budget) use values agreed across workers
(`strategy.Replicas.agree`), so every worker stops at the same epoch.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.data.schema import CLASS_TARGET
from deeplense_tf.errors import ConfigError
from deeplense_tf.files import write_text_atomic
from deeplense_tf.models.classification import class_accuracy
from deeplense_tf.runs import layout
from deeplense_tf.training import finetune, resume
from deeplense_tf.training.model_setup import make_schedule
from deeplense_tf.training.strategy import Replicas, StatisticsSync


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite; the message names the likely causes."""


def early_stopping_update(value: float, best: float | None, wait: int, patience: int | None):
    """One epoch of early stopping on a metric where lower is better.

    Returns `(improved, best, wait, stop)`: any decrease counts as an improvement and
    resets `wait`; `stop` once `patience` epochs in a row brought none (never for None).
    """
    improved = best is None or value < best
    best, wait = (value, 0) if improved else (best, wait + 1)
    return improved, best, wait, bool(patience) and wait >= patience


def epochs_that_fit(remaining_seconds: float, seconds_per_epoch: float) -> int:
    """Whole epochs of `seconds_per_epoch` that fit in what is left of the time budget."""
    if remaining_seconds <= 0:
        return 0
    return int(remaining_seconds // max(seconds_per_epoch, 1e-9))


# A plan grows back only when this many more epochs fit, so that the cosine schedule is
# not re-shaped after every epoch by timing noise.
REPLAN_UP_MARGIN = 2
# ...and only in the first part of the plan: growing the cosine late lifts a learning
# rate that has already annealed (a 4-step-epoch run once went from 1e-6 back to 2e-5).
REPLAN_UP_UNTIL = 2 / 3


def budget_plan(epoch: int, planned: int, configured: int, fit: int) -> int | None:
    """The new total of epochs once `fit` more fit in the budget, or None to keep `planned`.

    The plan shrinks as soon as fewer epochs fit, and grows back (never past the
    configured epochs, and only in the first two thirds of the plan) when epochs got
    faster: a slow first epoch (cache fill, a busy machine) must not cut a whole run short.
    """
    target = min(epoch + fit, configured)
    if target < planned:
        return target
    if target >= planned + REPLAN_UP_MARGIN and epoch < REPLAN_UP_UNTIL * planned:
        return target
    return None


class TrainingLoop:
    """Trains `model` epoch by epoch and keeps what a backup carries.

    Args:
        config: the resolved experiment config.
        replicas: the strategy (`strategy.Replicas`); model and optimizer were built in
            its scope.
        model, optimizer, losses: `losses` is `{target: keras loss}`.
        train_ds, val_ds, target_stats: `datasets.make_datasets`'s.
        steps_per_epoch: optimizer steps per epoch (global batches).
        out: the run folder (the chief writes model.keras, history.csv, logs/, backup/).
        progress: show a tqdm bar on a terminal.
        interrupt_after: test hook: KeyboardInterrupt once this many epochs are done.
        on_epoch: called with each epoch's history row after its backup is written.
    """

    def __init__(self, config, replicas: Replicas, model, optimizer, losses, train_ds, val_ds,
                 target_stats, steps_per_epoch, out: Path, *, progress=True, interrupt_after=None,
                 on_epoch=None):
        self.config = config
        self.replicas = replicas
        self.model = model
        self.optimizer = optimizer
        self.losses = losses
        self.train_ds = train_ds
        self.val_ds = val_ds
        self.target_stats = target_stats
        self.targets = list(config["data"]["targets"] or [])  # none for pretraining
        self.steps_per_epoch = int(steps_per_epoch)
        self.global_batch = config["training"]["batch_size"]
        self.out = Path(out)
        self.progress = progress
        self.interrupt_after = interrupt_after
        self.on_epoch = on_epoch
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.sync_statistics = StatisticsSync(replicas, model)
        self.planned_epochs = config["training"]["epochs"]
        self.frozen = None
        self.train_step = None
        self.eval_step = None
        # State that the backup carries.
        self.epoch = 0
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.stopped = None
        self.best_weights = None
        self.recent_estimates: list[float] = []  # seconds per epoch, for the time budget

    def log(self, message: str):
        self.replicas.log(message)

    # -- backup state -----------------------------------------------------------------------

    def state(self) -> dict:
        """What the backup's state.json holds."""
        return {
            "epoch": self.epoch,
            "planned_epochs": self.planned_epochs,
            "configured_epochs": self.config["training"]["epochs"],
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "history": self.history,
            "elapsed_seconds": self.elapsed,
            "batches_consumed": self.epoch * self.steps_per_epoch,
            "stopped": self.stopped,
            "seed": self.config["seed"],
        }

    def load_state(self, state: dict) -> None:
        """The counters of a backup's `state()`; the plan is kept when the configured
        epochs did not change (a time budget may have shortened it)."""
        self.epoch = int(state["epoch"])
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        self.history = list(state["history"])
        self.elapsed = float(state["elapsed_seconds"])
        self.stopped = state.get("stopped")
        if self.config["training"]["epochs"] == state.get("configured_epochs"):
            self.planned_epochs = int(state["planned_epochs"])
        if self.planned_epochs != self.config["training"]["epochs"]:
            self.set_plan(self.planned_epochs, retrace=False)

    def set_plan(self, epochs: int, retrace: bool = True):
        """Train for `epochs` in all: the schedule's cosine now ends there."""
        self.planned_epochs = int(epochs)
        schedule = make_schedule(self.config, self.steps_per_epoch, self.planned_epochs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        inner.learning_rate = schedule
        if retrace:
            self.train_step = self.make_train_step()

    # -- steps ------------------------------------------------------------------------------

    def _per_example(self, outputs, targets):
        if set(self.losses) - set(self.targets):
            # One loss over all targets, keyed by its own output (the full-covariance head's
            # `posterior`): it reads every target's truth; there is no per-target loss.
            joint = [loss.call(targets, tf.cast(outputs[name], tf.float32)) for name, loss in self.losses.items()]
            return {}, tf.add_n(joint)
        per_target = {
            t: self.losses[t].call(targets[t], tf.cast(outputs[t], tf.float32)) for t in self.targets
        }
        return per_target, tf.add_n(list(per_target.values()))

    def _sums(self, outputs, targets, per_target, per_example):
        sums = {"loss": tf.reduce_sum(per_example), "count": tf.cast(tf.shape(per_example)[0], tf.float32)}
        for t in self.targets:
            if t == CLASS_TARGET:  # the softmax head: accuracy rather than an MAE
                sums["accuracy"] = tf.reduce_sum(class_accuracy(targets[t], outputs[t]))
                continue
            mean = tf.cast(outputs[t][:, 0], tf.float32)
            sums[f"{t}_mae"] = tf.reduce_sum(tf.abs(mean - tf.reshape(targets[t], [-1])))
            if len(self.targets) > 1 and t in per_target:
                sums[f"{t}_loss"] = tf.reduce_sum(per_target[t])
        return sums

    def model_inputs(self, images):
        """A training batch's images as the model takes them (for passes outside the loss,
        such as the BatchNorm re-estimate); the pretraining loop unpairs source twins."""
        return images

    def replica_loss(self, images, targets, training: bool):
        """`(loss, sums)` of one replica's batch: the loss it minimises (its share of the
        global batch's mean, so the replicas' gradients add up to the mean's) and the
        per-batch sums (`loss`, `count`, ...) the epoch's metrics are averaged from.

        The one place the objective lives: the pretraining loop (`training/pretrain.py`)
        overrides it with a two-view loss; the step around it is the same for both.
        """
        outputs = self.model(images, training=training)
        per_target, per_example = self._per_example(outputs, targets)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
        return loss, self._sums(outputs, targets, per_target, per_example)

    def make_train_step(self):
        model, optimizer, strategy = self.model, self.optimizer, self.replicas.strategy
        trainable = model.trainable_variables

        def gradients(images, targets):
            with tf.GradientTape() as tape:
                loss, sums = self.replica_loss(images, targets, training=True)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss)
            return tape.gradient(scaled, trainable), sums

        if self.config["training"]["jit_compile"]:
            # XLA compiles the forward and backward pass only: the update stays outside,
            # where every strategy's gradient all-reduce (a merge_call) can run.
            gradients = tf.function(gradients, jit_compile=True)

        def replica_step(images, targets):
            grads, sums = gradients(images, targets)
            optimizer.apply_gradients(zip(grads, trainable))
            return sums

        @tf.function
        def step(iterator):
            images, targets = next(iterator)
            sums = strategy.run(replica_step, args=(images, targets))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in sums.items()}

        return step

    def make_eval_step(self):
        @tf.function(reduce_retracing=True)
        def step(images, targets):
            return self.replica_loss(images, targets, training=False)[1]

        return step

    @staticmethod
    def _means(sums: dict) -> dict:
        count = max(sums.pop("count"), 1.0)
        return {k: v / count for k, v in sums.items()}

    def validation_batches(self):
        """The val split, cut to `training.validation_steps` batches when that is set."""
        steps = self.config["training"]["validation_steps"]
        return self.val_ds.take(steps) if steps else self.val_ds

    def evaluate(self) -> dict:
        """Validation metrics (standardised units) with `val_` keys, agreed across workers."""
        if self.eval_step is None:
            self.eval_step = self.make_eval_step()
        totals: dict[str, float] = {}
        for images, targets in self.validation_batches():
            for k, v in self.eval_step(images, targets).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        metrics = self._means(totals)
        metrics = {f"val_{k}": v for k, v in metrics.items()}
        regression = [t for t in self.targets if t != CLASS_TARGET]
        if regression:
            metrics["val_mae"] = float(np.mean([metrics[f"val_{t}_mae"] for t in regression]))
        for t in regression:
            metrics[f"val_{t}_mae_physical"] = metrics[f"val_{t}_mae"] * self.target_stats[t]["std"]
        return self.replicas.agree(metrics)

    # -- the loop ---------------------------------------------------------------------------

    def distributed_iterator(self):
        dataset = self.train_ds.repeat()
        consumed = self.epoch * self.steps_per_epoch
        if consumed:
            # Replays the seeded shuffle and augmentation up to where the last session stopped.
            self.log(f"replaying the input pipeline to batch {consumed}")
            dataset = dataset.skip(consumed)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return iter(self.replicas.strategy.experimental_distribute_dataset(dataset.with_options(options)))

    def monitor_value(self, metrics: dict) -> float:
        key = self.config["training"]["monitor"]
        if key not in metrics:
            choices = ["val_loss", "val_mae"] + [f"val_{t}_mae" for t in self.targets]
            raise ConfigError(f"training.monitor {key!r} is not a metric of this run; choose from {', '.join(choices)}")
        return metrics[key]

    def set_phase(self):
        """Encoder frozen during the first freeze_encoder_epochs of a fine-tuning run."""
        from deeplense_tf.models import set_encoder_trainable

        frozen = finetune.encoder_frozen(self.config, self.epoch)
        if frozen != self.frozen:
            set_encoder_trainable(self.model, not frozen)
            self.frozen = frozen
            self.train_step = self.make_train_step()
            if finetune.announces_phases(self.config):
                self.log("encoder frozen: training the head only" if frozen else "encoder unfrozen: training all layers")

    def check_finite(self, value: float, where: str):
        """TrainingDiverged naming the likely causes unless `value` (a loss) is finite."""
        if math.isfinite(value):
            return
        lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        cause = self._diagnose_nan()
        raise TrainingDiverged(
            f"training diverged: the {where} loss became {value} in epoch {self.epoch + 1} "
            f"(learning rate {lr:.3g}). {cause} The run folder keeps the last finished epoch; "
            "fix the config and re-run with --overwrite"
        )

    def _diagnose_nan(self) -> str:
        for images, targets in self.train_ds.take(50):
            if not np.isfinite(images.numpy()).all():
                return f"The training data ({self.config['data']['path']}) contains NaN or infinite pixels."
            for name, values in targets.items():
                if not np.isfinite(values.numpy()).all():
                    return f"The training data contains NaN or infinite values of {name}."
        if not all(np.isfinite(v.numpy()).all() for v in self.model.trainable_weights):
            cause = "The weights blew up: "
        else:
            cause = "Likely causes: "
        cause += (
            "the learning rate is too high (lower training.learning_rate or lengthen "
            "training.warmup_epochs), or"
        )
        if self.config["model"]["head"] == "gaussian":
            cause += (
                " the Gaussian head's log-variance blew up (set training.clip_norm, e.g. 1.0,"
                " or use model.head: point), or"
            )
        return cause + " NaN / infinite values in the data."

    def train_epoch(self, iterator) -> dict:
        spe = self.steps_per_epoch
        totals: dict[str, float] = {}
        from tqdm.auto import tqdm

        show = self.replicas.chief and self.progress and sys.stderr.isatty()
        bar = tqdm(total=spe, desc=f"epoch {self.epoch + 1}/{self.planned_epochs}", leave=False,
                   disable=not show, file=sys.stderr, unit="step")
        start = time.perf_counter()
        steady_start = None
        try:
            for step in range(spe):
                sums = self.train_step(iterator)
                values = {k: float(v) for k, v in sums.items()}
                self.check_finite(values["loss"], f"training (step {step + 1})")
                for k, v in values.items():
                    totals[k] = totals.get(k, 0.0) + v
                if step == 1:
                    steady_start = time.perf_counter()  # excludes tracing
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{totals['loss'] / max(totals['count'], 1):.4f}")
        finally:
            bar.close()
        end = time.perf_counter()
        if steady_start is not None and spe > 4:
            self.steady_epoch_seconds = (end - steady_start) * spe / (spe - 2)
        else:
            self.steady_epoch_seconds = end - start
        return self._means(totals)

    def fit(self, train_examples: int):
        """Train until the planned epochs, early stopping or the time budget end it."""
        t = self.config["training"]
        budget = t["time_budget_minutes"] * 60 if t["time_budget_minutes"] else None
        patience = t["early_stopping_patience"]
        chief = self.replicas.chief
        self.eval_step = self.make_eval_step()
        self.frozen = None
        self.set_phase()
        if self.stopped or self.epoch >= self.planned_epochs:
            return
        iterator = self.distributed_iterator()
        writers = None
        if chief:
            logs = layout.RunPaths(self.out).logs
            writers = {
                "train": tf.summary.create_file_writer(str(logs / "train")),
                "validation": tf.summary.create_file_writer(str(logs / "validation")),
            }
        self.log(
            f"training {self.config['model']['name']} on {train_examples} examples "
            f"({self.steps_per_epoch} steps of {self.global_batch} per epoch, "
            f"{self.replicas.count} replica(s)) into {self.out}"
        )
        while self.epoch < self.planned_epochs:
            self.set_phase()
            epoch_start = time.perf_counter()
            train_metrics = self.train_epoch(iterator)
            self.sync_statistics()
            val_start = time.perf_counter()
            val_metrics = self.evaluate()
            val_seconds = time.perf_counter() - val_start
            self.check_finite(val_metrics["val_loss"], "validation")
            timing = self.replicas.agree(
                {
                    "epoch_seconds": time.perf_counter() - epoch_start,
                    "estimate": self.steady_epoch_seconds + val_seconds,
                }
            )
            self.epoch += 1
            self.elapsed += timing["epoch_seconds"]
            lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            row = {"epoch": self.epoch, **train_metrics, **val_metrics, "learning_rate": lr,
                   "seconds": timing["epoch_seconds"]}
            self.history.append(row)

            improved, self.best, self.wait, stop = early_stopping_update(
                self.monitor_value(val_metrics), self.best, self.wait, patience
            )
            if improved:
                self.best_epoch = self.epoch
                self.best_weights = [v.numpy() for v in self.model.weights]
                if chief:
                    layout.save_model_atomic(self.model, layout.RunPaths(self.out).model)
            if stop:
                self.stopped = "early_stopping"
            if budget is not None and not self.stopped:
                # The median of the last three epochs: one slow epoch does not re-plan.
                self.recent_estimates = (self.recent_estimates + [timing["estimate"]])[-3:]
                estimate = float(np.median(self.recent_estimates))
                fit = epochs_that_fit(budget - self.elapsed, estimate)
                if self.epoch == 1 and fit < 3 and not t["steps_per_epoch"]:
                    self.log(
                        f"time budget: only {1 + fit} epoch(s) of {self.steps_per_epoch} steps fit, so the "
                        "cosine schedule can barely anneal; shorter epochs (training.steps_per_epoch) "
                        "usually train better under a short budget"
                    )
                plan = budget_plan(self.epoch, self.planned_epochs, t["epochs"], fit)
                if fit <= 0:
                    self.stopped = "time_budget"
                elif plan is not None:
                    self.log(f"time budget: planning {plan} epochs instead of {self.planned_epochs}")
                    self.set_plan(plan)
            self.report(row, improved, writers)
            resume.write_backup(self.out, self.checkpoint, self.state(), chief)
            if self.on_epoch is not None:
                self.on_epoch(dict(row))
            if self.interrupt_after is not None and self.epoch >= self.interrupt_after:
                raise KeyboardInterrupt(f"interrupted after epoch {self.epoch} (test hook)")
            if self.stopped:
                self.log(
                    f"stopping after epoch {self.epoch}: "
                    + ("no improvement of " + t["monitor"] + f" for {patience} epochs"
                       if self.stopped == "early_stopping" else "time budget spent")
                )
                break
        if writers:
            for writer in writers.values():
                writer.close()

    def summary_extras(self, final_val: dict) -> dict:
        """Entries `finish` adds to metrics.json beside the summary (none for a regressor)."""
        return {}

    def restore_best_weights(self) -> None:
        """Back to the weights of the best epoch (a no-op before any epoch improved)."""
        if self.best_weights is not None:
            for variable, value in zip(self.model.weights, self.best_weights):
                variable.assign(value)

    # -- what each epoch leaves -------------------------------------------------------------

    def report(self, row: dict, improved: bool, writers):
        if not self.replicas.chief:
            return
        parts = [f"epoch {self.epoch}/{self.planned_epochs}", f"loss {row['loss']:.4f}",
                 f"val_loss {row['val_loss']:.4f}"]
        for t in self.targets:
            if t == CLASS_TARGET:
                parts.append(f"val accuracy {row['val_accuracy']:.4f}")
                continue
            parts.append(f"val MAE {t} {row[f'val_{t}_mae_physical']:.4g}")
        parts += [f"lr {row['learning_rate']:.2e}", f"{row['seconds']:.0f}s"]
        print(" - ".join(parts) + (" (best)" if improved else ""), flush=True)
        self.write_history()
        for split, writer in writers.items():
            with writer.as_default(step=self.epoch):
                for key, value in row.items():
                    if key in ("epoch", "seconds"):
                        continue
                    is_val = key.startswith("val_")
                    if (split == "validation") != is_val:
                        continue
                    tf.summary.scalar("epoch_" + (key[4:] if is_val else key), value)
            writer.flush()

    def write_history(self):
        if not self.history:
            return
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        write_text_atomic(layout.RunPaths(self.out).history, buffer.getvalue())
