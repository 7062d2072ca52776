"""`train(config, out_dir)`: one training run, from an experiment config to a run folder.

The steps, each in the module that does it:

1. resolve the config (absolute data path, targets, the `init_from` run: `finetune.py`);
2. decide whether the folder starts fresh, resumes or is refused (`resume.py`), and write
   the resolved config, the data manifest and an unfinished run.json;
3. build the model under the strategy (`strategy.py`, `model_setup.py`), copy fine-tuning
   weights, build the pipelines (`datasets.py`) and the optimizer, restore a backup;
4. train (`loop.py`);
5. finish (`finish.py`): best weights, BatchNorm re-estimate, variance calibration, files.

Multi-worker notes: the chief (task 0) writes the run folder; other workers write
their checkpoints to temporary folders (saving may run collective ops, so every worker
saves). The run folder's layout is `deeplense_tf.runs.layout`'s.
"""

from __future__ import annotations

import copy
from pathlib import Path

import keras

from deeplense_tf.errors import ConfigError, DataError, RunError
from deeplense_tf.files import write_json_atomic
from deeplense_tf.runs import layout
from deeplense_tf.runs.run import Run
from deeplense_tf.training import finetune, resume
from deeplense_tf.training.config import load_config, save_config
from deeplense_tf.training.datasets import make_datasets, resolve_targets, train_example_count
from deeplense_tf.training.finish import finish
from deeplense_tf.training.loop import TrainingLoop
from deeplense_tf.training.model_setup import build_model_from_config, make_losses, make_optimizer
from deeplense_tf.training.strategy import Replicas


class TrainingSession:
    """One call of `train`: the resolved config, the folder, and the loop once built."""

    def __init__(self, config, out_dir, overwrite, interrupt_after, progress, on_epoch=None):
        self.config = config
        self.out = Path(out_dir)
        self.paths = layout.RunPaths(self.out)
        self.overwrite = overwrite
        self.interrupt_after = interrupt_after
        self.progress = progress
        self.on_epoch = on_epoch
        t = config["training"]
        self.replicas = Replicas(t["strategy"])
        if t["batch_size"] % self.replicas.count:
            raise ConfigError(
                f"training.batch_size {t['batch_size']} (the global batch) must be a multiple "
                f"of the {self.replicas.count} replicas training together"
            )

    @property
    def chief(self) -> bool:
        return self.replicas.chief

    def log(self, message: str):
        self.replicas.log(message)

    def resolve(self):
        """Absolute paths, the data manifest, targets, and the init_from run."""
        from deeplense_tf.data import read_manifest

        config = copy.deepcopy(self.config)
        data_path = config["data"]["path"]
        if not data_path:
            raise ConfigError("data.path is not set (give --data DIR or data.path in the config)")
        config["data"]["path"] = str(Path(data_path).expanduser().resolve())
        manifest = read_manifest(config["data"]["path"])
        self.source = finetune.resolve_init_from(config, self.out, manifest)
        config["data"]["targets"] = resolve_targets(config, manifest)
        self.config, self.manifest = config, manifest
        self.targets = config["data"]["targets"]
        self.input_shape = tuple(manifest["image_shape"])

    def prepare_folder(self):
        """Decide fresh / resume, refuse finished or foreign runs, write the config files."""
        status = resume.folder_status(self.out)
        if status == "finished" and not self.overwrite:
            raise RunError(
                f"{self.out}: holds a finished run; pass --overwrite to replace it, or choose "
                "another --out"
            )
        if self.overwrite and status != "empty":
            if self.chief:
                layout.remove_outputs(self.out)
            status = "empty"
        if status in ("resumable", "started"):
            resume.check_same_run(self.out, self.config, self.manifest)
        self.backup = resume.read_backup(self.out) if status == "resumable" else None
        if self.chief:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.paths.config)
            write_json_atomic(self.paths.manifest, self.manifest)
            if not self.paths.info.is_file():
                write_json_atomic(self.paths.info, self.run_info(complete=False))
            self.log(f"wrote {self.paths.config} (the resolved config)")

    def run_info(self, complete: bool) -> dict:
        m = self.config["model"]
        extra = {}
        if m["head"] == "softmax":  # the classifier's classes, in output order
            from deeplense_tf.data.classes import class_names

            extra["classes"] = list(class_names(self.manifest, self.config["data"]["path"]))
        return layout.run_info(
            model=m["name"], head=m["head"], targets=self.targets, input_shape=self.input_shape,
            complete=complete, init_from=self.config["training"]["init_from"], **extra,
        )

    def build(self) -> TrainingLoop:
        config, t = self.config, self.config["training"]
        strategy = self.replicas.strategy
        keras.utils.set_random_seed(config["seed"])
        self.previous_policy = keras.mixed_precision.global_policy()
        if t["mixed_precision"]:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with strategy.scope():
            model = build_model_from_config(config, self.input_shape, self.targets)
        if self.source is not None and self.backup is None:
            # Before the data pipeline: an incompatible run fails fast.
            with strategy.scope():
                copied = finetune.load_init_weights(model, self.source, config, self.input_shape)
            self.log(f"initialised {copied} layers from {self.source.path}")

        train_ds, val_ds, target_stats, _ = make_datasets(config)
        if self.chief:
            write_json_atomic(self.paths.target_stats, target_stats)
        global_batch = t["batch_size"]
        usable = train_example_count(config, self.manifest, self.targets)
        if usable < global_batch:
            limits = [f"data.{k}={config['data'][k]}" for k in ("train_limit", "train_per_class")
                      if config["data"][k] is not None]
            raise DataError(
                f"{config['data']['path']}: the train split has {usable} examples with "
                f"{', '.join(self.targets)} defined{' under ' + ', '.join(limits) if limits else ''}, "
                f"fewer than training.batch_size {global_batch}"
            )
        self.train_examples = usable
        steps_per_epoch = t["steps_per_epoch"] or usable // global_batch
        with strategy.scope():
            optimizer = make_optimizer(config, steps_per_epoch, t["epochs"])
            # Built on every trainable variable, so slots exist for both fine-tuning phases.
            optimizer.build(model.trainable_variables)
        self.loop = TrainingLoop(
            config, self.replicas, model, optimizer, make_losses(config, self.targets), train_ds, val_ds,
            target_stats, steps_per_epoch, self.out, progress=self.progress,
            interrupt_after=self.interrupt_after, on_epoch=self.on_epoch,
        )
        if self.backup is not None:
            resume.restore(self.loop, self.backup, self.paths.model)
        return self.loop

    def finish(self) -> Run:
        return finish(self.loop, input_shape=self.input_shape, manifest=self.manifest,
                      run_info=self.run_info(complete=True), train_examples=self.train_examples,
                      previous_policy=self.previous_policy)


def train(config: dict, out_dir, *, overwrite: bool = False, progress: bool = True,
          on_epoch=None, _interrupt_after: int | None = None) -> Run:
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
        on_epoch: called after every epoch (once its backup is written) with that
            epoch's history row (`{"epoch", "loss", "val_loss", "val_<target>_mae", ...}`,
            standardised units but for `val_<target>_mae_physical`), e.g. to report a
            tuning trial's progress.
        _interrupt_after: test hook: raise KeyboardInterrupt once this many epochs are
            done (after their backup is written).

    Returns:
        The finished `Run` (loaded from `out_dir`; on a non-chief worker of a
        multi-worker job, the in-memory model with `path=None`).
    """
    # Merged onto the defaults, so a partial dict works too (smoke is idempotent).
    config = load_config(overrides=config)
    session = TrainingSession(config, out_dir, overwrite, _interrupt_after, progress, on_epoch)
    session.resolve()
    session.prepare_folder()
    try:
        session.build().fit(session.train_examples)
        return session.finish()
    finally:
        if hasattr(session, "previous_policy"):
            keras.mixed_precision.set_global_policy(session.previous_policy)
