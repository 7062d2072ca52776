"""Training: one custom loop for every tf.distribute strategy.

`train(config, out_dir)` builds the data sets and the model from an experiment config
(see `config.py`), trains, and leaves a run folder (docs/architecture.md, "Run folder").

Why a custom loop rather than `model.fit`: Keras 3's `fit` fails under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585). A `tf.function` step that calls
`strategy.run` on batches of `strategy.experimental_distribute_dataset` works for the
default strategy, `MirroredStrategy` and `MultiWorkerMirroredStrategy` alike, so there is
one loop, and what Keras callbacks would do is done here:

- early stopping and the best-model checkpoint on `training.monitor` (`model.keras`,
  written to a temporary file and renamed, so a reader never sees half a file);
- TensorBoard scalars (`logs/train`, `logs/validation`), `history.csv`, a per-epoch
  line and a tqdm bar on a terminal;
- a time budget that shortens the cosine schedule to the epochs that fit;
- resume: after every epoch the model, optimizer, epoch, best value, early-stopping
  counter, history and the number of batches consumed go to `RUN/backup/`
  (`tf.train.Checkpoint` + `state.json`, written into `backup.new/` and swapped in by
  renames, so a kill at any moment leaves one complete backup). The same command
  continues at the next epoch; the input pipeline is replayed to the same batch
  (seeded shuffling and augmentation), so a resumed run sees the batches an
  uninterrupted one would have;
- after training: the best weights, then BatchNorm statistics re-estimated over
  training batches (moving averages lag the weights at high learning rates; the
  re-estimate is kept only if it does not worsen the monitored metric), then the
  Gaussian head's stds rescaled to nominal coverage on the validation split
  (`training.calibrate_variance`), then the save;
- a NaN loss stops training with the likely causes named.

Multi-worker notes: the chief (task 0) writes the run folder; other workers write
their checkpoints to temporary folders (saving may run collective ops, so every worker
saves). Decisions (early stopping, time budget) use values all-reduced across workers,
and non-trainable statistics (BatchNorm moving averages, updated from each worker's own
batches) are averaged after every epoch, so all workers hold identical models. Resuming
a multi-worker run needs `RUN/backup` on a file system every worker can read.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf import __version__
from deeplense_tf.errors import ConfigError, DataError, RunError
from deeplense_tf.runs import layout as run_files
from deeplense_tf.runs.run import Run
from deeplense_tf.training.config import (
    diff_configs,
    load_config,
    save_config,
    write_text_atomic,
)
from deeplense_tf.training.schedules import PhasedSchedule, WarmupCosineDecay

# Config keys that may change between an interrupted session and its resumption.
RESUME_MAY_CHANGE = (
    "data.path",  # the data set itself is compared through its manifest
    "data.cache",
    "training.epochs",
    "training.time_budget_minutes",
    "training.early_stopping_patience",
    "training.validation_steps",
    "training.bn_recalibration_batches",
    "training.strategy",
)

# Manifest fields that identify a data set (compared when resuming).
_MANIFEST_IDENTITY = ("preset", "seed", "image_shape", "targets", "splits", "created")

# What --overwrite removes (only what training writes; nothing else in the folder).
_RUN_OUTPUTS = (
    run_files.MODEL_FILE,
    run_files.CONFIG_FILE,
    run_files.TARGET_STATS_FILE,
    run_files.MANIFEST_FILE,
    run_files.RUN_FILE,
    run_files.HISTORY_FILE,
    run_files.METRICS_FILE,
    "plots",
    "logs",
    run_files.BACKUP_DIR,
    "backup.new",
    "backup.old",
)

_STRATEGY_CACHE: dict[str, tf.distribute.Strategy] = {}


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite; the message names the likely causes."""


# --- strategy --------------------------------------------------------------------------------


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default`, `mirrored` (all local GPUs, or the CPU) or `multi_worker` (from TF_CONFIG).

    A MultiWorkerMirroredStrategy can only be created once per process, before
    TensorFlow runs anything; it is cached.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name in _STRATEGY_CACHE:
        return _STRATEGY_CACHE[name]
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "training.strategy multi_worker needs the TF_CONFIG environment variable "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}})'
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({err})") from None
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise ConfigError(
                "training.strategy multi_worker must be set up before TensorFlow runs "
                f"anything in this process; start training in a fresh process ({err})"
            ) from None
    else:
        raise ConfigError(f"unknown training.strategy {name!r}; choose default, mirrored or multi_worker")
    _STRATEGY_CACHE[name] = strategy
    return strategy


def _is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _is_chief(strategy) -> bool:
    if not _is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type in (None, "worker") and not has_chief and (task_id or 0) == 0


# --- data ------------------------------------------------------------------------------------


def _resolve_targets(config: dict, manifest: dict) -> list[str]:
    from deeplense_tf.data import check_target_names

    data_path = config["data"]["path"]
    return list(check_target_names(config["data"]["targets"], manifest["targets"], data_path))


def make_datasets(config: dict):
    """The training and validation pipelines of a config.

    Returns:
        `(train_ds, val_ds, target_stats, manifest)`: `train_ds` is one shuffled,
        augmented pass over the train split in batches of `training.batch_size` (the
        global batch) with the remainder dropped; `val_ds` one pass over the val split.
        Both yield `(raw images [B, H, W, C], {target: [B, 1] standardised})`.
        `target_stats` is `{target: {"mean", "std"}}` (train split, physical units).
    """
    from deeplense_tf.data import build_dataset, read_manifest, resolve_target_stats

    path = config["data"]["path"]
    if not path:
        raise ConfigError("data.path is not set (give --data DIR or data.path in the config)")
    manifest = read_manifest(path)
    targets = _resolve_targets(config, manifest)
    if not manifest["splits"].get("val", {}).get("count"):
        raise DataError(f"{path}: has no val split (needed for early stopping and the best model)")
    target_stats = resolve_target_stats(path, targets)
    batch_size = config["training"]["batch_size"]
    common = dict(targets=targets, target_stats=target_stats, normalization="none")
    train_ds = build_dataset(
        path,
        "train",
        batch_size=batch_size,
        augment=config["data"]["augment"],
        shuffle=True,
        seed=config["seed"],
        cache=config["data"]["cache"],
        drop_remainder=True,
        **common,
    )
    val_ds = build_dataset(
        path, "val", batch_size=batch_size, cache=config["data"]["cache"], **common
    )
    stats = {t: {"mean": float(s["mean"]), "std": float(s["std"])} for t, s in target_stats.items()}
    return train_ds, val_ds, stats, manifest


def count_usable_examples(path, manifest: dict, split: str, targets) -> int:
    """Examples of `split` with every one of `targets` defined; DataError when the split's
    shards hold another number of records than the manifest says (lives in data/)."""
    from deeplense_tf.data import count_usable_examples as count

    return count(path, manifest, split, targets)


# --- optimizer -------------------------------------------------------------------------------


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


def _make_losses(config: dict, targets) -> dict:
    from deeplense_tf.models import make_losses

    t = config["training"]
    return make_losses(config["model"]["head"], targets, t["point_loss"], t["huber_delta"])


def compile_model(model, config: dict, steps_per_epoch: int):
    """`model.compile` with the config's optimizer, losses and metrics (for `model.fit` users:
    tuning, notebooks). Metrics: MAE of the (mean) prediction per target, standardised
    units, logged as `<target>_mae`. Returns the model."""
    from deeplense_tf.models import make_metrics

    targets = list(model.output_names)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=_make_losses(config, targets),
        metrics=make_metrics(config["model"]["head"], targets),
    )
    return model


def build_model_from_config(config: dict, input_shape, targets):
    from deeplense_tf.models import build_model

    m = config["model"]
    return build_model(
        m["name"],
        tuple(input_shape),
        list(targets),
        head=m["head"],
        normalization=m["normalization"],
        crop=m["crop"],
        **m["options"],
    )


# --- files -----------------------------------------------------------------------------------


def _write_json(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_model_atomic(model, path: Path) -> None:
    """`model.save` to a temporary `.keras` file in the same folder, then rename."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _backup_candidates(run_dir: Path) -> list[Path]:
    # `backup` is current; `backup.new` is complete only if its state.json (written last)
    # exists; `backup.old` is the previous one during a swap.
    return [run_dir / run_files.BACKUP_DIR, run_dir / "backup.new", run_dir / "backup.old"]


def read_backup(run_dir: Path):
    """`(checkpoint prefix, state dict)` of the newest complete backup, or None."""
    for candidate in _backup_candidates(run_dir):
        state_path = candidate / "state.json"
        if state_path.is_file() and (candidate / "ckpt.index").is_file():
            try:
                state = json.loads(state_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            return str(candidate / "ckpt"), state
    return None


def write_backup(run_dir: Path, checkpoint: tf.train.Checkpoint, state: dict, chief: bool) -> None:
    """Write a complete backup beside the current one, then swap it in by renames.

    A kill at any point leaves at least one complete backup (see `read_backup`).
    Non-chief workers write to a temporary folder they delete (saving may involve
    collective ops, so every worker takes part).
    """
    if not chief:
        scratch = Path(tempfile.mkdtemp(prefix="deeplense-worker-backup-"))
        try:
            checkpoint.write(str(scratch / "ckpt"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    current, new, old = _backup_candidates(run_dir)
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    checkpoint.write(str(new / "ckpt"))
    _write_json(new / "state.json", state)  # last: marks `new` complete
    if current.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(current, old)
    os.rename(new, current)
    shutil.rmtree(old, ignore_errors=True)


def _remove_backups(run_dir: Path) -> None:
    for candidate in _backup_candidates(run_dir):
        shutil.rmtree(candidate, ignore_errors=True)


def _manifest_identity(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in _MANIFEST_IDENTITY}


def _inspect_run_dir(run_dir: Path) -> str:
    """"empty", "finished", "resumable" or "started" (our files, nothing to resume)."""
    if not run_dir.exists():
        return "empty"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is not a folder")
    info_path = run_dir / run_files.RUN_FILE
    if info_path.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            if json.loads(info_path.read_text()).get("complete"):
                return "finished"
    if read_backup(run_dir) is not None:
        return "resumable"
    if any((run_dir / name).exists() for name in _RUN_OUTPUTS):
        return "started"
    return "empty"


def _check_same_run(run_dir: Path, config: dict, manifest: dict) -> None:
    """RunError if `run_dir` was started with another config or data set."""
    config_path = run_dir / run_files.CONFIG_FILE
    if config_path.is_file():
        from deeplense_tf.training.config import read_yaml

        previous = read_yaml(config_path)
        changed = [k for k in diff_configs(previous, config) if k not in RESUME_MAY_CHANGE]
        if changed:
            shown = ", ".join(
                f"{k} ({_dotted(previous, k)!r} there, {_dotted(config, k)!r} now)" for k in changed[:4]
            )
            raise RunError(
                f"{run_dir}: holds a run with a different config ({shown}); use another --out, "
                "or --overwrite to replace it"
            )
    manifest_path = run_dir / run_files.MANIFEST_FILE
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if _manifest_identity(previous) != _manifest_identity(manifest):
            raise RunError(
                f"{run_dir}: was trained on another data set (preset {previous.get('preset')!r}, "
                f"created {previous.get('created')}) than {config['data']['path']} (preset "
                f"{manifest.get('preset')!r}, created {manifest.get('created')}); use another "
                "--out, or --overwrite to replace it"
            )


def _dotted(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --- fine-tuning -----------------------------------------------------------------------------


def load_init_weights(model, source: Run, config: dict, input_shape) -> int:
    """Copy `source.model`'s weights into `model`, layer by layer (matched by name).

    Raises RunError naming what differs (model, head, targets, input shape, and the
    first layers whose weights do not fit). Returns the number of layers copied.
    """
    problems = []
    src_model_name = source.info.get("model")
    if src_model_name and src_model_name != config["model"]["name"]:
        problems.append(f"model {src_model_name!r} there, {config['model']['name']!r} here")
    if source.head != config["model"]["head"]:
        problems.append(f"head {source.head!r} there, {config['model']['head']!r} here")
    targets = list(model.output_names)
    if sorted(source.targets) != sorted(targets):
        problems.append(f"targets {source.targets} there, {targets} here")
    src_layers = {layer.name: layer for layer in source.model.layers}
    weight_problems, copied = [], 0
    for layer in model.layers:
        if not layer.weights:
            continue
        src = src_layers.get(layer.name)
        if src is None:
            weight_problems.append(f"layer {layer.name!r} does not exist there")
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        src_shapes = [tuple(w.shape) for w in src.weights]
        if shapes != src_shapes:
            weight_problems.append(f"layer {layer.name!r} weights {src_shapes} there, {shapes} here")
    if weight_problems and tuple(source.input_shape) != tuple(input_shape):
        problems.append(f"input shape {list(source.input_shape)} there, {list(input_shape)} here")
    problems.extend(weight_problems[:3])
    if len(weight_problems) > 3:
        problems.append(f"and {len(weight_problems) - 3} more layers")
    if problems:
        raise RunError(f"cannot initialise from {source.path}: " + "; ".join(problems))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(src_layers[layer.name].get_weights())
            copied += 1
    return copied


# --- decisions -------------------------------------------------------------------------------


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


# --- the trainer -----------------------------------------------------------------------------


def _float_variables(variables):
    return [v for v in variables if v.dtype in ("float16", "float32", "float64", "bfloat16")]


class _Trainer:
    def __init__(self, config, out_dir, overwrite, interrupt_after, progress):
        self.config = config
        self.out = Path(out_dir)
        self.overwrite = overwrite
        self.interrupt_after = interrupt_after
        self.progress = progress
        t = config["training"]
        # Created first: a MultiWorkerMirroredStrategy must exist before any TF op.
        self.strategy = make_strategy(t["strategy"])
        self.multi_worker = _is_multi_worker(self.strategy)
        self.chief = _is_chief(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        if t["batch_size"] % self.replicas:
            raise ConfigError(
                f"training.batch_size {t['batch_size']} (the global batch) must be a multiple "
                f"of the {self.replicas} replicas training together"
            )

    # -- helpers ---------------------------------------------------------------------------

    def log(self, message: str):
        if self.chief:
            print(message, flush=True)

    def agree(self, values: dict) -> dict:
        """The mean over workers of each value (identical on every worker afterwards)."""
        if not self.multi_worker or not values:
            return values
        keys = sorted(values)
        if getattr(self, "_agree_fn", None) is None:
            strategy = self.strategy

            @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
            def agree_fn(vector):
                per_replica = strategy.run(tf.identity, args=(vector,))
                return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

            self._agree_fn = agree_fn
        mean = self._agree_fn(tf.constant([float(values[k]) for k in keys], tf.float64)).numpy()
        return dict(zip(keys, mean.tolist()))

    def sync_statistics(self):
        """Average non-trainable float variables (BatchNorm moving stats) over all replicas.

        Each replica updates them from its own batches, so they drift apart; after this
        every replica (and worker) holds the same values.
        """
        if self.replicas == 1 or not self._stat_vars:
            return
        flat = self._sync_fn().numpy()
        offset = 0
        for variable in self._stat_vars:
            size = int(np.prod(variable.shape))
            variable.assign(flat[offset : offset + size].reshape(variable.shape).astype(variable.dtype))
            offset += size

    # -- set-up ----------------------------------------------------------------------------

    def resolve(self):
        """Absolute paths, the data manifest, targets, and the init_from run."""
        from deeplense_tf.data import read_manifest

        config = copy.deepcopy(self.config)
        data_path = config["data"]["path"]
        if not data_path:
            raise ConfigError("data.path is not set (give --data DIR or data.path in the config)")
        config["data"]["path"] = str(Path(data_path).expanduser().resolve())
        manifest = read_manifest(config["data"]["path"])
        self.source = None
        t = config["training"]
        if t["init_from"]:
            init = Path(t["init_from"]).expanduser().resolve()
            if init == self.out.resolve():
                raise ConfigError("training.init_from must be another run folder than --out")
            t["init_from"] = str(init)
            self.source = Run.load(init)
            if config["data"]["targets"] is None:
                missing = [x for x in self.source.targets if x not in manifest["targets"]]
                if missing:
                    raise RunError(
                        f"cannot initialise from {init}: its targets {', '.join(missing)} are "
                        f"not in {data_path} (targets there: {', '.join(manifest['targets'])})"
                    )
                config["data"]["targets"] = list(self.source.targets)
        config["data"]["targets"] = _resolve_targets(config, manifest)
        self.config, self.manifest = config, manifest
        self.targets = config["data"]["targets"]
        self.input_shape = tuple(manifest["image_shape"])

    def prepare_folder(self):
        """Decide fresh / resume, refuse finished or foreign runs, write the config files."""
        status = _inspect_run_dir(self.out)
        if status == "finished" and not self.overwrite:
            raise RunError(
                f"{self.out}: holds a finished run; pass --overwrite to replace it, or choose "
                "another --out"
            )
        if self.overwrite and status != "empty":
            if self.chief:
                for name in _RUN_OUTPUTS:
                    target = self.out / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
            status = "empty"
        if status in ("resumable", "started"):
            _check_same_run(self.out, self.config, self.manifest)
        self.backup = read_backup(self.out) if status == "resumable" else None
        if self.chief:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out / run_files.CONFIG_FILE)
            _write_json(self.out / run_files.MANIFEST_FILE, self.manifest)
            if not (self.out / run_files.RUN_FILE).is_file():
                _write_json(self.out / run_files.RUN_FILE, self.run_info(complete=False))
            self.log(f"wrote {self.out / run_files.CONFIG_FILE} (the resolved config)")

    def run_info(self, complete: bool) -> dict:
        m = self.config["model"]
        return {
            "format_version": run_files.FORMAT_VERSION,
            "deeplense_tf": __version__,
            "model": m["name"],
            "head": m["head"],
            "targets": list(self.targets),
            "input_shape": list(self.input_shape),
            "complete": complete,
            "init_from": self.config["training"]["init_from"],
        }

    def build(self):
        config, t = self.config, self.config["training"]
        keras.utils.set_random_seed(config["seed"])
        self.previous_policy = keras.mixed_precision.global_policy()
        if t["mixed_precision"]:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with self.strategy.scope():
            self.model = build_model_from_config(config, self.input_shape, self.targets)
        if self.source is not None and self.backup is None:
            # Before the data pipeline: an incompatible run fails fast.
            with self.strategy.scope():
                copied = load_init_weights(self.model, self.source, config, self.input_shape)
            self.log(f"initialised {copied} layers from {self.source.path}")

        self.train_ds, self.val_ds, self.target_stats, _ = make_datasets(config)
        if self.chief:
            _write_json(self.out / run_files.TARGET_STATS_FILE, self.target_stats)
        self.global_batch = t["batch_size"]
        usable = count_usable_examples(config["data"]["path"], self.manifest, "train", self.targets)
        if usable < self.global_batch:
            raise DataError(
                f"{config['data']['path']}: the train split has {usable} examples with "
                f"{', '.join(self.targets)} defined, fewer than training.batch_size {self.global_batch}"
            )
        self.train_examples = usable
        self.steps_per_epoch = t["steps_per_epoch"] or usable // self.global_batch
        self.planned_epochs = t["epochs"]

        with self.strategy.scope():
            self.optimizer = make_optimizer(config, self.steps_per_epoch, self.planned_epochs)
            # Built on every trainable variable, so slots exist for both fine-tuning phases.
            self.optimizer.build(self.model.trainable_variables)
        self.losses = _make_losses(config, self.targets)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self._stat_vars = _float_variables(self.model.non_trainable_variables)
        if self.replicas > 1 and self._stat_vars:
            stat_vars, strategy = self._stat_vars, self.strategy

            @tf.function
            def sync_fn():
                def replica_fn():  # reads each replica's own copy
                    return tf.concat(
                        [tf.reshape(tf.cast(tf.identity(v.value), tf.float32), [-1]) for v in stat_vars], 0
                    )

                return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_fn), axis=None)

            self._sync_fn = sync_fn

        # State that the backup carries.
        self.epoch = 0
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.stopped = None
        self.best_weights = None
        if self.backup is not None:
            self.restore()

    def restore(self):
        prefix, state = self.backup
        try:
            self.checkpoint.read(prefix).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise RunError(
                f"{self.out}: cannot restore the backup in {Path(prefix).parent} ({err}); "
                "pass --overwrite to start again"
            ) from None
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
        best_path = self.out / run_files.MODEL_FILE
        if self.best_epoch is not None and best_path.is_file():
            current = [v.numpy() for v in self.model.weights]
            self.model.load_weights(best_path)
            self.best_weights = [v.numpy() for v in self.model.weights]
            for variable, value in zip(self.model.weights, current):
                variable.assign(value)
        best = f" (best {self.config['training']['monitor']} {self.best:.5g} at epoch {self.best_epoch})"
        self.log(f"resuming {self.out} after epoch {self.epoch}" + (best if self.best_epoch else ""))

    def set_plan(self, epochs: int, retrace: bool = True):
        """Train for `epochs` in all: the schedule's cosine now ends there."""
        self.planned_epochs = int(epochs)
        schedule = make_schedule(self.config, self.steps_per_epoch, self.planned_epochs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        inner.learning_rate = schedule
        if retrace:
            self.train_step = self.make_train_step()

    # -- steps -----------------------------------------------------------------------------

    def _per_example(self, outputs, targets):
        per_target = {
            t: self.losses[t].call(targets[t], tf.cast(outputs[t], tf.float32)) for t in self.targets
        }
        return per_target, tf.add_n(list(per_target.values()))

    def _sums(self, outputs, targets, per_target, per_example):
        sums = {"loss": tf.reduce_sum(per_example), "count": tf.cast(tf.shape(per_example)[0], tf.float32)}
        for t in self.targets:
            mean = tf.cast(outputs[t][:, 0], tf.float32)
            sums[f"{t}_mae"] = tf.reduce_sum(tf.abs(mean - tf.reshape(targets[t], [-1])))
            if len(self.targets) > 1:
                sums[f"{t}_loss"] = tf.reduce_sum(per_target[t])
        return sums

    def make_train_step(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        trainable = model.trainable_variables
        global_batch = self.global_batch

        def replica_step(images, targets):
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                per_target, per_example = self._per_example(outputs, targets)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, trainable)
            optimizer.apply_gradients(zip(grads, trainable))
            return self._sums(outputs, targets, per_target, per_example)

        @tf.function
        def step(iterator):
            images, targets = next(iterator)
            sums = strategy.run(replica_step, args=(images, targets))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in sums.items()}

        return step

    def make_eval_step(self):
        model = self.model

        @tf.function(reduce_retracing=True)
        def step(images, targets):
            outputs = model(images, training=False)
            per_target, per_example = self._per_example(outputs, targets)
            return self._sums(outputs, targets, per_target, per_example)

        return step

    @staticmethod
    def _means(sums: dict) -> dict:
        count = max(sums.pop("count"), 1.0)
        return {k: v / count for k, v in sums.items()}

    def evaluate(self) -> dict:
        """Validation metrics (standardised units) with `val_` keys, agreed across workers."""
        steps = self.config["training"]["validation_steps"]
        dataset = self.val_ds.take(steps) if steps else self.val_ds
        totals: dict[str, float] = {}
        for images, targets in dataset:
            for k, v in self.eval_step(images, targets).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        metrics = self._means(totals)
        metrics = {f"val_{k}": v for k, v in metrics.items()}
        metrics["val_mae"] = float(np.mean([metrics[f"val_{t}_mae"] for t in self.targets]))
        for t in self.targets:
            metrics[f"val_{t}_mae_physical"] = metrics[f"val_{t}_mae"] * self.target_stats[t]["std"]
        return self.agree(metrics)

    # -- the loop --------------------------------------------------------------------------

    def distributed_iterator(self):
        dataset = self.train_ds.repeat()
        consumed = self.epoch * self.steps_per_epoch
        if consumed:
            # Replays the seeded shuffle and augmentation up to where the last session stopped.
            self.log(f"replaying the input pipeline to batch {consumed}")
            dataset = dataset.skip(consumed)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return iter(self.strategy.experimental_distribute_dataset(dataset.with_options(options)))

    def monitor_value(self, metrics: dict) -> float:
        key = self.config["training"]["monitor"]
        if key not in metrics:
            choices = ["val_loss", "val_mae"] + [f"val_{t}_mae" for t in self.targets]
            raise ConfigError(f"training.monitor {key!r} is not a metric of this run; choose from {', '.join(choices)}")
        return metrics[key]

    def set_phase(self):
        """Encoder frozen during the first freeze_encoder_epochs of a fine-tuning run."""
        from deeplense_tf.models import set_encoder_trainable

        t = self.config["training"]
        frozen = bool(t["init_from"]) and self.epoch < t["freeze_encoder_epochs"]
        if frozen != getattr(self, "frozen", None):
            set_encoder_trainable(self.model, not frozen)
            self.frozen = frozen
            self.train_step = self.make_train_step()
            if t["init_from"] and t["freeze_encoder_epochs"]:
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

        show = self.chief and self.progress and sys.stderr.isatty()
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
        self.train_seconds_epoch = end - start
        if steady_start is not None and spe > 4:
            self.steady_epoch_seconds = (end - steady_start) * spe / (spe - 2)
        else:
            self.steady_epoch_seconds = end - start
        return self._means(totals)

    def fit(self):
        t = self.config["training"]
        budget = t["time_budget_minutes"] * 60 if t["time_budget_minutes"] else None
        patience = t["early_stopping_patience"]
        self.eval_step = self.make_eval_step()
        self.frozen = None
        self.set_phase()
        if self.stopped or self.epoch >= self.planned_epochs:
            return
        iterator = self.distributed_iterator()
        writers = None
        if self.chief:
            writers = {
                "train": tf.summary.create_file_writer(str(self.out / "logs" / "train")),
                "validation": tf.summary.create_file_writer(str(self.out / "logs" / "validation")),
            }
        self.log(
            f"training {self.config['model']['name']} on {self.train_examples} examples "
            f"({self.steps_per_epoch} steps of {self.global_batch} per epoch, "
            f"{self.replicas} replica(s)) into {self.out}"
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
            timing = self.agree(
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
                if self.chief:
                    save_model_atomic(self.model, self.out / run_files.MODEL_FILE)
            if stop:
                self.stopped = "early_stopping"
            if budget is not None and not self.stopped:
                fit = epochs_that_fit(budget - self.elapsed, timing["estimate"])
                if self.epoch == 1 and fit < 3 and not t["steps_per_epoch"]:
                    self.log(
                        f"time budget: only {1 + fit} epoch(s) of {self.steps_per_epoch} steps fit, so the "
                        "cosine schedule can barely anneal; shorter epochs (training.steps_per_epoch) "
                        "usually train better under a short budget"
                    )
                if fit <= 0:
                    self.stopped = "time_budget"
                elif self.epoch + fit < self.planned_epochs:
                    self.log(f"time budget: planning {self.epoch + fit} epochs instead of {self.planned_epochs}")
                    self.set_plan(self.epoch + fit)
            self.report(row, improved, writers)
            write_backup(self.out, self.checkpoint, self.state(), self.chief)
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

    def state(self) -> dict:
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

    def report(self, row: dict, improved: bool, writers):
        if not self.chief:
            return
        parts = [f"epoch {self.epoch}/{self.planned_epochs}", f"loss {row['loss']:.4f}",
                 f"val_loss {row['val_loss']:.4f}"]
        for t in self.targets:
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
        write_text_atomic(self.out / run_files.HISTORY_FILE, buffer.getvalue())

    # -- after training --------------------------------------------------------------------

    def recalibrate_batchnorm(self) -> dict | None:
        """Re-estimate BatchNorm moving statistics as plain averages over training batches.

        Every BN layer is switched to a cumulative average (momentum k / (k + 1) at batch
        k) and the model runs in training mode; the result is kept only if the monitored
        validation metric does not get worse.
        """
        batches = self.config["training"]["bn_recalibration_batches"]
        layers = [
            layer for layer in self.model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        ]
        if not batches or not layers:
            return None
        before = self.evaluate()
        saved = [v.numpy() for v in self._stat_vars]
        momentum = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        originals = [layer.momentum for layer in layers]
        model = self.model

        # autograph=False: the body is a plain call, and converting this closure only
        # produced a noisy "could not transform" warning.
        @tf.function(autograph=False)
        def forward(images):
            model(images, training=True)

        try:
            for layer in layers:
                layer.momentum = momentum
            for k, (images, _) in enumerate(self.train_ds.repeat().take(batches)):
                momentum.assign(k / (k + 1.0))
                forward(images)
        finally:
            for layer, original in zip(layers, originals):
                layer.momentum = original
        self.sync_statistics()
        after = self.evaluate()
        key = self.config["training"]["monitor"]
        kept = after[key] <= before[key]
        if not kept:
            for variable, value in zip(self._stat_vars, saved):
                variable.assign(value)
        self.log(
            f"BatchNorm statistics re-estimated over {batches} training batches: {key} "
            f"{before[key]:.5g} -> {after[key]:.5g} ({'kept' if kept else 'discarded'})"
        )
        return {"batches": batches, "monitor": key, "before": before, "after": after, "kept": bool(kept)}

    def calibrate_variance(self) -> dict | None:
        """Scale the Gaussian head's stds so the validation split's coverage is nominal.

        One scale per target (`deeplense_tf.models.calibration`), agreed across
        workers and stored in the model; returns the fits, or None when off.
        """
        if self.config["model"]["head"] != "gaussian" or not self.config["training"]["calibrate_variance"]:
            return None
        from deeplense_tf.models.calibration import apply_variance_scale, fit_variance_scale

        steps = self.config["training"]["validation_steps"]
        dataset = self.val_ds.take(steps) if steps else self.val_ds
        model = self.model

        @tf.function(autograph=False, reduce_retracing=True)
        def forward(images):
            return model(images, training=False)

        truths = {t: [] for t in self.targets}
        outputs = {t: [] for t in self.targets}
        for images, targets in dataset:
            predicted = forward(images)
            for t in self.targets:
                truths[t].append(np.asarray(targets[t], np.float64).reshape(-1))
                outputs[t].append(np.asarray(predicted[t], np.float64))
        results = {}
        for t in self.targets:
            raw = np.concatenate(outputs[t])
            fit = fit_variance_scale(np.concatenate(truths[t]), raw[:, 0], np.exp(0.5 * raw[:, 1]))
            fit["scale"] = self.agree({"scale": fit["scale"]})["scale"]
            apply_variance_scale(model, t, fit["scale"])
            results[t] = fit
            self.log(
                f"{t}: predicted stds scaled by {fit['scale']:.3f} on the validation split (68% coverage "
                f"{fit['coverage_68_before']:.3f} -> {fit['coverage_68_after']:.3f})"
            )
        return results

    def final_model(self):
        """The model to save: float32 throughout (a mixed-precision model is rebuilt)."""
        if not self.config["training"]["mixed_precision"]:
            return self.model
        keras.mixed_precision.set_global_policy(self.previous_policy)
        model = build_model_from_config(self.config, self.input_shape, self.targets)
        model.set_weights(self.model.get_weights())
        return model

    def finish(self) -> Run:
        if self.best_weights is not None:
            for variable, value in zip(self.model.weights, self.best_weights):
                variable.assign(value)
        recalibration = self.recalibrate_batchnorm()
        final_val = recalibration["after"] if recalibration and recalibration["kept"] else None
        variance_calibration = self.calibrate_variance()
        if final_val is None or variance_calibration:
            final_val = self.evaluate()
        model = self.final_model()
        result = Run(
            path=self.out if self.chief else None,
            model=model,
            config=self.config,
            targets=list(self.targets),
            head=self.config["model"]["head"],
            input_shape=tuple(self.input_shape),
            target_stats=self.target_stats,
            info=self.run_info(complete=True),
            manifest=self.manifest,
        )
        if not self.chief:
            return result
        save_model_atomic(model, self.out / run_files.MODEL_FILE)
        self.write_history()
        metrics = self.summary(final_val, recalibration, model)
        if variance_calibration:
            metrics["variance_calibration"] = {"split": "val", "targets": variance_calibration}
        _write_json(self.out / run_files.METRICS_FILE, metrics)
        plots = self.write_plots()
        _write_json(self.out / run_files.RUN_FILE, self.run_info(complete=True))
        _remove_backups(self.out)
        self.log(
            "wrote "
            + ", ".join(
                str(self.out / name)
                for name in (run_files.MODEL_FILE, run_files.CONFIG_FILE, run_files.TARGET_STATS_FILE,
                             run_files.MANIFEST_FILE, run_files.HISTORY_FILE, run_files.METRICS_FILE,
                             run_files.RUN_FILE)
            )
            + (", " + ", ".join(str(p) for p in plots) if plots else "")
            + f", {self.out / 'logs'}"
        )
        return result

    def summary(self, final_val: dict, recalibration, model) -> dict:
        seconds = self.elapsed
        images = self.epoch * self.steps_per_epoch * self.global_batch
        return {
            "monitor": self.config["training"]["monitor"],
            "best_epoch": self.best_epoch,
            "best": self.best,
            "epochs": self.epoch,
            "planned_epochs": self.planned_epochs,
            "stopped": self.stopped or "completed",
            "validation": {
                "loss": final_val["val_loss"],
                "targets": {
                    t: {
                        "mae": final_val[f"val_{t}_mae_physical"],
                        "mae_standardised": final_val[f"val_{t}_mae"],
                    }
                    for t in self.targets
                },
            },
            "bn_recalibration": recalibration,
            "train_seconds": seconds,
            "train_images_per_second": images / seconds if seconds > 0 else None,
            "train_examples": self.train_examples,
            "steps_per_epoch": self.steps_per_epoch,
            "parameters": int(model.count_params()),
            "strategy": self.config["training"]["strategy"],
            "replicas": self.replicas,
        }

    def write_plots(self) -> list[Path]:
        if not self.history:
            return []
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        epochs = [row["epoch"] for row in self.history]
        panels = 2 + len(self.targets)
        fig = Figure(figsize=(4.2 * panels, 3.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, panels)
        axes[0].plot(epochs, [r["loss"] for r in self.history], label="train")
        axes[0].plot(epochs, [r["val_loss"] for r in self.history], label="validation")
        axes[0].set(xlabel="epoch", ylabel="loss", title="loss (standardised targets)")
        axes[0].legend()
        for ax, t in zip(axes[1:], self.targets):
            std = self.target_stats[t]["std"]
            ax.plot(epochs, [r[f"{t}_mae"] * std for r in self.history], label="train")
            ax.plot(epochs, [r[f"val_{t}_mae_physical"] for r in self.history], label="validation")
            ax.set(xlabel="epoch", ylabel=f"MAE ({t})", title=f"mean absolute error: {t}")
            ax.legend()
        axes[-1].plot(epochs, [r["learning_rate"] for r in self.history])
        axes[-1].set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
        if self.best_epoch:
            for ax in axes[:-1]:
                ax.axvline(self.best_epoch, color="grey", linestyle=":", linewidth=1)
        fig.tight_layout()
        path = self.out / "plots" / "history.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".history.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
        return [path]


def train(config: dict, out_dir, *, overwrite: bool = False, progress: bool = True,
          _interrupt_after: int | None = None) -> Run:
    """Train the model a config describes into the run folder `out_dir`.

    Args:
        config: an experiment config (`load_config(...)`, or a partial dict merged onto
            the defaults); checked again here.
        out_dir: the run folder. Empty or missing: a new run. Holding an interrupted
            run of the same config and data: it resumes after the last finished epoch.
            Holding a finished run: RunError unless `overwrite`. Holding a run of
            another config or data set: RunError.
        overwrite: replace what training wrote in `out_dir` before (other files stay).
        progress: show a tqdm bar on a terminal.
        _interrupt_after: test hook: raise KeyboardInterrupt once this many epochs are
            done (after their backup is written).

    Returns:
        The finished `Run` (loaded from `out_dir`; on a non-chief worker of a
        multi-worker job, the in-memory model with `path=None`).
    """
    # Merged onto the defaults, so a partial dict works too (smoke is idempotent).
    config = load_config(overrides=config)
    trainer = _Trainer(config, out_dir, overwrite, _interrupt_after, progress)
    trainer.resolve()
    trainer.prepare_folder()
    try:
        trainer.build()
        trainer.fit()
        return trainer.finish()
    finally:
        if hasattr(trainer, "previous_policy"):
            keras.mixed_precision.set_global_policy(trainer.previous_policy)
