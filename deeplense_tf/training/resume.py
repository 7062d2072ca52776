"""Resuming an interrupted run: the backup in RUN/backup/, and whether a folder may resume.

After every epoch the model, optimizer, epoch, best value, early-stopping counter,
history and the number of batches consumed go to `RUN/backup/` (`tf.train.Checkpoint`
+ `state.json`, written into `backup.new/` and swapped in by renames, so a kill at any
moment leaves one complete backup). The same `deeplense train` command continues at the
next epoch; the input pipeline is replayed to the same batch (seeded shuffling and
augmentation), so a resumed run sees the batches an uninterrupted one would have.
Resuming a multi-worker run needs `RUN/backup` on a file system every worker can read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from deeplense_tf.errors import RunError
from deeplense_tf.files import read_yaml, write_json_atomic
from deeplense_tf.runs import layout
from deeplense_tf.training.config import diff_configs, get_dotted

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


def read_backup(run_dir: Path):
    """`(checkpoint prefix, state dict)` of the newest complete backup, or None.

    `backup` is current; `backup.new` is complete only if its state.json (written last)
    exists; `backup.old` is the previous one during a swap.
    """
    for candidate in layout.RunPaths(run_dir).backups:
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
    current, new, old = layout.RunPaths(run_dir).backups
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    checkpoint.write(str(new / "ckpt"))
    write_json_atomic(new / "state.json", state)  # last: marks `new` complete
    if current.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(current, old)
    os.rename(new, current)
    shutil.rmtree(old, ignore_errors=True)


def remove_backups(run_dir: Path) -> None:
    for candidate in layout.RunPaths(run_dir).backups:
        shutil.rmtree(candidate, ignore_errors=True)


def folder_status(run_dir: Path) -> str:
    """"empty", "finished", "resumable" or "started" (our files, nothing to resume)."""
    if not run_dir.exists():
        return "empty"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is not a folder")
    if layout.is_finished(run_dir):
        return "finished"
    if read_backup(run_dir) is not None:
        return "resumable"
    if layout.has_outputs(run_dir):
        return "started"
    return "empty"


def _manifest_identity(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in _MANIFEST_IDENTITY}


def check_same_run(run_dir: Path, config: dict, manifest: dict) -> None:
    """RunError if `run_dir` was started with another config or data set."""
    paths = layout.RunPaths(run_dir)
    if paths.config.is_file():
        previous = read_yaml(paths.config)
        changed = [k for k in diff_configs(previous, config) if k not in RESUME_MAY_CHANGE]
        if changed:
            shown = ", ".join(
                f"{k} ({get_dotted(previous, k)!r} there, {get_dotted(config, k)!r} now)" for k in changed[:4]
            )
            raise RunError(
                f"{run_dir}: holds a run with a different config ({shown}); use another --out, "
                "or --overwrite to replace it"
            )
    if paths.manifest.is_file():
        previous = json.loads(paths.manifest.read_text())
        if _manifest_identity(previous) != _manifest_identity(manifest):
            raise RunError(
                f"{run_dir}: was trained on another data set (preset {previous.get('preset')!r}, "
                f"created {previous.get('created')}) than {config['data']['path']} (preset "
                f"{manifest.get('preset')!r}, created {manifest.get('created')}); use another "
                "--out, or --overwrite to replace it"
            )


def restore(loop, backup, best_model_path: Path) -> None:
    """Put the state of `backup` (`read_backup`'s) back into `loop` (a `TrainingLoop`).

    The model and optimizer come from the checkpoint; the best weights so far from
    `best_model_path` (the run's model.keras), which the loop restores at the end.
    """
    prefix, state = backup
    try:
        loop.checkpoint.read(prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise RunError(
            f"{loop.out}: cannot restore the backup in {Path(prefix).parent} ({err}); "
            "pass --overwrite to start again"
        ) from None
    loop.load_state(state)
    if loop.best_epoch is not None and best_model_path.is_file():
        model = loop.model
        current = [v.numpy() for v in model.weights]
        model.load_weights(best_model_path)
        loop.best_weights = [v.numpy() for v in model.weights]
        for variable, value in zip(model.weights, current):
            variable.assign(value)
    best = f" (best {loop.config['training']['monitor']} {loop.best:.5g} at epoch {loop.best_epoch})"
    loop.log(f"resuming {loop.out} after epoch {loop.epoch}" + (best if loop.best_epoch else ""))
