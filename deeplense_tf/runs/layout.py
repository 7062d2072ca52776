"""The run folder's layout: the one place that knows its file names (docs/architecture.md).

    RUN/model.keras          best model                        MODEL_FILE
    RUN/config.yaml          resolved experiment config        CONFIG_FILE
    RUN/target_stats.json    {target: {"mean", "std"}}         TARGET_STATS_FILE
    RUN/data_manifest.json   the training data's manifest      MANIFEST_FILE
    RUN/run.json             format, model, head, targets ...  RUN_FILE (written last)
    RUN/history.csv, RUN/metrics.json, RUN/plots/, RUN/logs/
    RUN/backup/              resume state while training runs  BACKUP_DIR
    RUN/eval/                written by `deeplense evaluate`

`RunPaths(run_dir)` names each of them; `save_model_atomic` writes a model the way
every writer of a run folder must (a reader never sees half a file).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from deeplense_tf.errors import RunError
from deeplense_tf.files import atomic_path

FORMAT_VERSION = 1

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
TARGET_STATS_FILE = "target_stats.json"
MANIFEST_FILE = "data_manifest.json"
RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
BACKUP_DIR = "backup"
# During a backup swap (training/resume.py): the one being written, the one replaced.
BACKUP_NEW_DIR = "backup.new"
BACKUP_OLD_DIR = "backup.old"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TARGET_STATS_FILE, RUN_FILE)
# run.json's `head` for a self-supervised encoder (`deeplense pretrain`): its model ends in a
# projector rather than heads, its `targets` and target_stats.json are empty, and what
# readers use is its `embedding` layer (cluster, `training.init_from`).
ENCODER_HEAD = "projector"

# What training (or an ensemble) writes into a run folder: what --overwrite removes,
# and nothing else (a user's own files in the folder stay).
RUN_OUTPUTS = (
    MODEL_FILE,
    CONFIG_FILE,
    TARGET_STATS_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    LOGS_DIR,
    BACKUP_DIR,
    BACKUP_NEW_DIR,
    BACKUP_OLD_DIR,
)


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run folder's parts."""

    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def target_stats(self) -> Path:
        return self.root / TARGET_STATS_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def info(self) -> Path:
        return self.root / RUN_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def eval(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def backups(self) -> tuple[Path, Path, Path]:
        """`(current, new, old)` backup folders (see training/resume.py)."""
        return self.root / BACKUP_DIR, self.root / BACKUP_NEW_DIR, self.root / BACKUP_OLD_DIR


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a run folder's file; RunError naming the file and `what` it is."""
    try:
        value = json.loads(Path(path).read_text())
    except OSError as err:
        raise RunError(f"{path}: cannot read the {what} ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: the {what} is corrupt ({err})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: the {what} is corrupt (expected a JSON object)")
    return value


def check_run_info(info: dict, path: Path) -> None:
    """RunError unless run.json is from this format version and marks a finished run."""
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        made_by = info.get("deeplense_tf", "an unknown version")
        raise RunError(
            f"{path}: run format_version {version!r} (written by deeplense_tf {made_by}); this "
            f"deeplense_tf reads format_version {FORMAT_VERSION}: retrain, or use the version "
            "that wrote it"
        )
    if not info.get("complete"):
        raise RunError(
            f"{path.parent}: incomplete run (training did not finish); re-run the same "
            "`deeplense train` command to resume it"
        )


def run_info(*, model: str, head: str, targets, input_shape, complete: bool, **extra) -> dict:
    """The contents of run.json (`extra`: `init_from`, an ensemble's `members` ...)."""
    from deeplense_tf import __version__

    return {
        "format_version": FORMAT_VERSION,
        "deeplense_tf": __version__,
        "model": model,
        "head": head,
        "targets": list(targets),
        "input_shape": [int(d) for d in input_shape],
        "complete": complete,
        **extra,
    }


def is_finished(run_dir) -> bool:
    """Whether `run_dir` holds a run.json that marks a finished run (unreadable: no)."""
    path = RunPaths(run_dir).info
    if not path.is_file():
        return False
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        return bool(json.loads(path.read_text()).get("complete"))
    return False


def has_outputs(run_dir) -> bool:
    """Whether anything training writes (`RUN_OUTPUTS`) is in `run_dir`."""
    return any((Path(run_dir) / name).exists() for name in RUN_OUTPUTS)


def remove_outputs(run_dir) -> None:
    """Delete what training wrote into `run_dir` (`RUN_OUTPUTS`); other files stay."""
    for name in RUN_OUTPUTS:
        target = Path(run_dir) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def save_model_atomic(model, path) -> Path:
    """`model.save` to a temporary `.keras` file in the same folder, then rename; returns `path`."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)
