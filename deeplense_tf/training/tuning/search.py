"""The search: KerasTuner's oracles (random, Hyperband, Bayesian) driving `DeepLenseTuner`,
whose `run_trial` trains each trial with `deeplense train`'s loop into the trial's
folder, plus the results table, the score plot, the best config and distributed search.

    from deeplense_tf.training.tuning import tune
    result = tune("data/model2", "tune/cnn", model="cnn", tuner="bayesian", max_trials=20)
    result.table            # pandas DataFrame, one row per trial (also OUT/results.csv)
    result.best_config      # an experiment config (also OUT/best_config.yaml)
    result.paths["best_run"]  # the best trial's run folder: evaluate, export, cluster it

Output folder: `search/` (KerasTuner's project: oracle, and one `trial_<id>/` per trial,
which is a run folder: `model.keras`, `config.yaml`, `metrics.json`, `history.csv`,
`logs/` (TensorBoard), `train.log` ... beside KerasTuner's `trial.json`), `tune.json`
(what was searched; a resumed search must match it), `results.csv`, `scores.png`,
`best_config.yaml`.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from deeplense_tf.errors import ConfigError
from deeplense_tf.files import atomic_path, read_yaml, save_figure, write_text_atomic
from deeplense_tf.training.config import (
    apply_smoke,
    config_to_yaml,
    deep_update,
    expand_dotted,
    load_config,
)
from deeplense_tf.training.tuning.hypermodel import (
    DeepLenseHyperModel,
    best_trial_config,
    build_hypermodel,
)
from deeplense_tf.training.tuning.space import (
    COMMON_KEYS,
    Hyperparameter,
    SearchSpace,
    check_space_values,
    default_search_space,
    parse_search_space,
)

TUNERS = ("random", "hyperband", "bayesian")
PROJECT_NAME = "search"
SETTINGS_FILE = "tune.json"
RESULTS_FILE = "results.csv"
PLOT_FILE = "scores.png"
BEST_CONFIG_FILE = "best_config.yaml"
TRIAL_RECORD_FILE = "deeplense_trial.json"  # per trial folder: which tuner ran it, where


# --- the tuner ---------------------------------------------------------------------------------


class DeepLenseTuner(keras_tuner.Tuner):
    """A KerasTuner tuner whose trials are `deeplense train` runs.

    `run_trial` trains the trial's config (`DeepLenseHyperModel.train_trial`) into the
    trial's folder, which is then a normal run folder; a Hyperband trial that continues
    an earlier one starts from that trial's run (`training.init_from`). It records which
    tuner ran the trial (TRIAL_RECORD_FILE) and prints one line per finished trial. Any
    oracle works: `make_tuner` pairs it with the random, Hyperband or Bayesian one.

    Creating it builds the default trial's model once (KerasTuner's space discovery), so
    a bad builder option in the space fails before any trial.
    """

    progress_bar = None

    def on_search_begin(self):
        super().on_search_begin()
        # Saved before the first trial too: a search killed during a trial then reloads
        # the oracle, which hands that trial out again, so its run resumes from its backup
        # (KerasTuner saves only after a trial ends, and would draw new values instead).
        self.save()

    def run_trial(self, trial, *args, **kwargs):
        record = {"tuner_id": self.tuner_id, "host": socket.gethostname(), "pid": os.getpid()}
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        write_text_atomic(trial_dir / TRIAL_RECORD_FILE, json.dumps(record) + "\n")
        # As KerasTuner does before each build: the previous trials' models and graphs go,
        # so a long search does not grow in memory.
        keras.backend.clear_session()
        gc.collect()
        values = dict(trial.hyperparameters.values)
        previous = values.get("tuner/trial_id")
        init_from = Path(self.get_trial_dir(previous)) if previous else None
        return self.hypermodel.train_trial(values, trial_dir, init_from=init_from)

    def load_model(self, trial):
        """The trained model of a finished trial (its run folder's `model.keras`)."""
        from deeplense_tf.runs import Run

        return Run.load(self.get_trial_dir(trial.trial_id)).model

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        metrics = trial.metrics
        objective = self.oracle.objective.name
        score = metrics.get_best_value(objective) if metrics.exists(objective) else None
        seconds = metrics.get_best_value("seconds") if metrics.exists("seconds") else None
        line = f"trial {trial.trial_id} ({self.tuner_id}): {trial.status}"
        if score is not None:
            line += f", {objective} {score:.5g}"
        if seconds is not None:
            line += f", {seconds:.1f} s"
        if trial.status != "COMPLETED" and trial.message:
            line += "\n  " + trial.message.strip().splitlines()[-1]
        writer = self.progress_bar.write if self.progress_bar is not None else print
        writer(line)
        if self.progress_bar is not None:
            self.progress_bar.update(1)


def make_tuner(kind: str, hypermodel: DeepLenseHyperModel, directory, *, max_trials: int | None,
               max_epochs: int | None = None, seed: int = 0, overwrite: bool = False) -> DeepLenseTuner:
    """A `DeepLenseTuner` minimising `hypermodel.objective`, its project in `directory/search`.

    Args:
        kind: random | hyperband | bayesian (the oracle).
        max_trials: trials in all (a resumed search counts the finished ones); for
            Hyperband a cap on the trials its brackets would run (None = no cap).
        max_epochs: Hyperband's largest epoch budget per trial.
        overwrite: False reloads a project found in `directory` (resume).
    """
    if kind not in TUNERS:
        raise ConfigError(f"unknown tuner {kind!r}; choose from {', '.join(TUNERS)}")
    objective = keras_tuner.Objective(hypermodel.objective, direction="min")
    if kind == "random":
        oracle = keras_tuner.oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed)
    elif kind == "bayesian":
        oracle = keras_tuner.oracles.BayesianOptimizationOracle(objective=objective, max_trials=max_trials,
                                                                seed=seed)
    else:
        oracle = keras_tuner.oracles.HyperbandOracle(objective=objective, max_epochs=int(max_epochs or 1),
                                                     factor=3, seed=seed)
        if max_trials:
            oracle.max_trials = max_trials
    return DeepLenseTuner(oracle, hypermodel, directory=str(directory), project_name=PROJECT_NAME,
                          overwrite=overwrite)


# --- results -----------------------------------------------------------------------------------


def read_trials(project_dir) -> list:
    """KerasTuner `Trial`s of a project folder, in trial order."""
    from keras_tuner.engine.trial import Trial

    trials = [Trial.load(str(p)) for p in Path(project_dir).glob("trial_*/trial.json")]
    return sorted(trials, key=lambda t: int(t.trial_id))


def results_table(project_dir, objective: str):
    """One row per trial: `trial_id`, `status`, `score` (the objective at the best epoch),
    `seconds`, `epochs`, each hyperparameter, the other validation metrics, and `tuner_id`
    (which tuner ran it, from the trial folder's record)."""
    import pandas as pd

    rows = []
    for trial in read_trials(project_dir):
        metrics = trial.metrics
        best = {name: metrics.get_best_value(name) for name in metrics.metrics}
        row = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            "score": best.get(objective, np.nan),
            "seconds": best.get("seconds", np.nan),
            "epochs": best.get("epochs", np.nan),
        }
        row.update(trial.hyperparameters.values)
        for name, value in sorted(best.items()):
            if name.startswith("val_") and name != objective:
                row[name] = value
        record_path = Path(project_dir) / f"trial_{trial.trial_id}" / TRIAL_RECORD_FILE
        record = {}
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
            except (OSError, json.JSONDecodeError):
                record = {}
        row["tuner_id"] = record.get("tuner_id", "")
        rows.append(row)
    columns = ["trial_id", "status", "score", "seconds", "epochs"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))


def plot_scores(table, objective: str, path) -> Path:
    """Objective of every finished trial against trial number, with the best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    scores = table["score"].to_numpy(dtype=float)
    finished = np.isfinite(scores)  # failed trials have no score
    if finished.any():
        x = np.arange(1, len(scores) + 1)[finished]
        ax.plot(x, scores[finished], "o", label="trial")
        ax.step(x, np.minimum.accumulate(scores[finished]), where="post", label="best so far")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="trial", ylabel=objective, title=f"search: {objective} (lower is better)")
    fig.tight_layout()
    return save_figure(fig, path)



# --- the search --------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What `tune` leaves: the table, the best config and the files written.

    `new_trials` counts trials finished by this call (0 on a distributed worker, whose
    trials the chief counts); `best_config` is None when no trial finished;
    `paths["best_run"]` is the best trial's folder, a run folder.
    """

    table: object
    objective: str
    best_config: dict | None
    best_trial_id: str | None
    new_trials: int
    paths: dict


def _role() -> str:
    """"local", "chief" or "worker" from KerasTuner's environment variables."""
    ip, port, tuner_id = (os.environ.get(k) for k in
                          ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"))
    if not ip:
        return "local"
    if not port or not tuner_id:
        missing = [k for k, v in (("KERASTUNER_ORACLE_PORT", port), ("KERASTUNER_TUNER_ID", tuner_id)) if not v]
        raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} is not")
    return "chief" if "chief" in tuner_id else "worker"


def _serve_oracle(tuner, poll_seconds: float = 0.5) -> None:
    """Run the chief's oracle over gRPC until every worker has been told to stop.

    KerasTuner's own chief loop (`search()` on the chief) re-checks only every 20 s once
    the first worker is done; this is the same server with a short poll.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(tuner.oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise ConfigError(f"KERASTUNER_ORACLE_IP/PORT: cannot listen on {address} (port in use?)")
    server.start()
    print(f"chief: oracle listening on {address}", flush=True)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)


def _settings(space: SearchSpace, tuner: str, objective: str, base_config: dict) -> dict:
    return {
        "format_version": 1,
        "model": space.model,
        "tuner": tuner,
        "objective": objective,
        "space": space.to_dict(),
        "base_config": base_config,
    }


def _check_resume(out: Path, settings: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{path}: unreadable; pass --overwrite to start a new search") from None
    changed = [k for k in ("model", "tuner", "objective", "space", "base_config")
               if previous.get(k) != json.loads(json.dumps(settings[k]))]
    if changed:
        raise ConfigError(
            f"{out}: holds a search with a different {', '.join(changed)}; resume it with the "
            "same options, use another --out, or pass --overwrite to start again"
        )


def resolve_search(data, *, model=None, space=None, config=None, overrides=None, epochs=None,
                   smoke=False, seed=None):
    """(base config, search space) of a search, every file and value checked.

    `space`: a file path, a `SearchSpace`, or None (the family's default space).
    `config`: a base experiment config file or packaged preset; `overrides` dotted keys.
    Precedence: defaults < `config` < the space's `config:` section < `overrides` and
    the arguments (`data`, `model`, `seed`, `smoke`, `epochs`).
    """
    raw_space, source = None, None
    if isinstance(space, SearchSpace):
        raw_space, source = space.to_dict(), space.source
    elif space is not None:
        source = str(space)
        if not Path(space).is_file():
            raise ConfigError(f"--space {space}: no such file")
        raw_space = read_yaml(space)
    arguments = {"data.path": str(Path(data).expanduser().resolve())}
    if seed is not None:
        arguments["seed"] = seed
    if smoke:
        arguments["smoke"] = True
    if epochs is not None:
        arguments["training.epochs"] = int(epochs)
    space_model = raw_space.get("model") if raw_space else None
    if model and space_model and model != space_model:
        raise ConfigError(f"{source}: is a space for model {space_model!r}, but --model is {model!r}")
    space_config = (raw_space or {}).get("config") or {}
    if not isinstance(space_config, Mapping):
        raise ConfigError(f"{source}: config must be a mapping of experiment-config keys")
    try:
        load_config(None, space_config)  # its own errors name the space file
    except ConfigError as err:
        raise ConfigError(f"{source} (config section): {err}") from None
    family = model or space_model
    if family:
        arguments["model.name"] = family
    # model.options given as overrides replace the space's whole (a builder's options
    # belong together); every other section merges key by key.
    merged = deep_update(expand_dotted(space_config), expand_dotted({**(overrides or {}), **arguments}),
                         replace=("options",))
    base = load_config(config, merged)
    family = base["model"]["name"]
    if raw_space is None:
        parsed = default_search_space(family)
        if base["model"]["head"] == "softmax":
            # The default space's head choice is between regression heads: a classifier's
            # trials keep the softmax head.
            parsed.hyperparameters.pop("head", None)
    else:
        parsed = parse_search_space(raw_space, family, source=source)
    if epochs is not None:  # --epochs fixes the epochs of every trial
        parsed.hyperparameters["epochs"] = Hyperparameter(
            "epochs", COMMON_KEYS["epochs"], "fixed", values=(int(epochs),), default=int(epochs))
    check_space_values(parsed, base)
    return base, parsed


def tune(data, out_dir, *, model: str | None = None, tuner: str = "random", max_trials: int | None = 10,
         space=None, epochs: int | None = None, smoke: bool = False, config=None,
         overrides: Mapping | None = None, objective: str | None = None, seed: int | None = None,
         overwrite: bool = False, progress: bool = True) -> TuneResult:
    """Search hyperparameters of one model family on a simulated data set.

    Args:
        data: the data directory (manifest + shards).
        out_dir: the search folder (see the module docstring). Re-running into the same
            folder resumes (finished trials are not repeated; `max_trials` counts them).
        model: the family; default the space file's, else the config's.
        tuner: random | hyperband | bayesian.
        max_trials: trials in all. Hyperband: a cap on its brackets' trials.
        space: a search-space file or `SearchSpace`; default the family's built-in one.
        epochs: fixes every trial's epochs (Hyperband: its largest budget).
        smoke: shrink each trial to seconds (a check, not a result).
        config, overrides: the base experiment config (file / preset, dotted keys).
        objective: a validation metric; default `default_objective`.
        seed: the experiment seed (weights, shuffling) and the tuner's.
        overwrite: delete a previous search in `out_dir` first.
        progress: tqdm bar over trials on a terminal.

    Every trial trains with `deeplense train`'s loop into `OUT/search/trial_<id>/`, a
    run folder; a search stopped half way resumes the interrupted trial from its backup.

    Hyperband sets each trial's epochs itself (up to the largest value of the `epochs`
    hyperparameter, or `training.epochs`) and continues a promising trial from the earlier
    trial's run folder (`training.init_from`, a fresh schedule at the trial's learning
    rate for the epochs left); its best config trains from scratch for all the epochs.

    Distributed: with `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT` and
    `KERASTUNER_TUNER_ID` set, the process whose id contains "chief" serves the oracle
    and writes the results once every worker is done; the others (`tuner0`, `tuner1`
    ...) run trials. Run every process with the same arguments.
    """
    if max_trials is not None and max_trials < 1:
        raise ConfigError(f"--max-trials must be at least 1, got {max_trials}")
    if max_trials is None and tuner != "hyperband":
        raise ConfigError(f"the {tuner} tuner needs --max-trials (only hyperband ends by itself)")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if tuner not in TUNERS:
        raise ConfigError(f"unknown tuner {tuner!r}; choose from {', '.join(TUNERS)}")
    role = _role()
    base, parsed = resolve_search(data, model=model, space=space, config=config, overrides=overrides,
                                  epochs=epochs, smoke=smoke, seed=seed)
    max_epochs = None
    if tuner == "hyperband":
        epochs_hp = parsed.hyperparameters.pop("epochs", None)
        max_epochs = int(epochs_hp.maximum()) if epochs_hp else base["training"]["epochs"]
        if base["smoke"]:
            max_epochs = min(max_epochs, apply_smoke(base)["training"]["epochs"])
    hypermodel = build_hypermodel(base, parsed, objective)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    settings = _settings(parsed, tuner, hypermodel.objective, hypermodel.base_config)
    if overwrite and role != "worker":
        for name in (SETTINGS_FILE, RESULTS_FILE, PLOT_FILE, BEST_CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "logs", ignore_errors=True)  # written by searches before trials were runs
    elif not overwrite:
        _check_resume(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    if role != "worker":
        write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=1, default=str) + "\n")
    search = make_tuner(tuner, hypermodel, out, max_trials=max_trials, max_epochs=max_epochs,
                        seed=hypermodel.experiment.seed, overwrite=overwrite and role != "worker")
    finished_before = _finished(search) if role != "worker" else 0

    if role == "chief":
        _serve_oracle(search)
    else:
        from tqdm.auto import tqdm

        total = max_trials if role == "local" else None
        remaining = None if total is None else max(total - finished_before, 0)
        if role == "worker":
            print(f"{search.tuner_id}: waiting for the chief oracle at "
                  f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}",
                  flush=True)
        elif finished_before:
            print(f"resuming {out / PROJECT_NAME}: {finished_before} trials finished, "
                  f"{remaining} to run", flush=True)
        bar = tqdm(total=remaining, desc="trials", unit="trial", file=sys.stderr,
                   disable=not (progress and sys.stderr.isatty()))
        search.progress_bar = bar
        try:
            search.search(verbose=0)
        except RuntimeError as err:
            if "consecutive failures" not in str(err):
                raise
            # KerasTuner stops after three failed trials in a row; its message ends with
            # the last trial's traceback, whose final line says what went wrong.
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise ConfigError(
                f"{out}: three trials in a row failed, the last with: {lines[-1].strip()}"
            ) from None
        finally:
            bar.close()
            search.progress_bar = None
    if role == "worker":
        print(f"{search.tuner_id}: no trials left; the chief writes the results", flush=True)
        return TuneResult(None, hypermodel.objective, None, None, 0, {})
    return _write_results(search, hypermodel, out, finished_before)


def _finished(search) -> int:
    return sum(t.status == "COMPLETED" for t in search.oracle.trials.values())


def _write_results(search, hypermodel, out: Path, finished_before: int) -> TuneResult:
    objective = hypermodel.objective
    project = out / PROJECT_NAME
    table = results_table(project, objective)
    paths = {"results": out / RESULTS_FILE, "plot": out / PLOT_FILE, "project": project,
             "settings": out / SETTINGS_FILE}
    with atomic_path(paths["results"]) as tmp:
        table.to_csv(tmp, index=False)
    plot_scores(table, objective, paths["plot"])
    best = search.oracle.get_best_trials(1)
    best_config, best_id = None, None
    if best and best[0].status == "COMPLETED":
        best_id = best[0].trial_id
        best_config = best_trial_config(hypermodel, best[0])
        score = best[0].metrics.get_best_value(objective)
        header = (f"# best trial {best_id} of the search in {out} ({objective} {score:.5g});\n"
                  f"# train it with: deeplense train --config {out / BEST_CONFIG_FILE} --out RUN\n")
        write_text_atomic(out / BEST_CONFIG_FILE, header + config_to_yaml(best_config))
        paths["best_config"] = out / BEST_CONFIG_FILE
        paths["best_run"] = Path(search.get_trial_dir(best_id))
    new = _finished(search) - finished_before
    return TuneResult(table, objective, best_config, best_id, new, paths)
