"""Write a simulated data set: TFRecord shards, manifest.json, preview.png.

Layout and record format: docs/architecture.md ("Data set on disk"). Worker processes
(multiprocessing "spawn": TensorFlow is never forked, and never imported by a worker) only
simulate and return numpy arrays; this process serialises them with
`schema.encode_example` and writes each shard as `<name>.tmp`, renamed when complete.
`manifest.json` is written last. A plan file records what the folder is being filled with,
so an interrupted run resumes (complete shards are kept as they are) and a different
preset / seed / size is refused.

Sliced over machines (`task_index`, `num_tasks`): the shard plan is the one a single run
would make, and task I writes every N-th shard (I, I+N, ...) into its own folder
`OUT/task-<I>-of-<N>/`, finished by `task.json`. Since every example is a pure function
of (preset, seed, index), those shard files are byte for byte the single run's.
`merge_tasks(OUT)` checks that every task finished the same data set and writes
`OUT/manifest.json` (and the preview) listing each shard where its task wrote it
(`task-00001-of-00004/train-00001-of-00013.tfrecord`): the shards are not copied, and
the readers and tf.data read them in place. The statistics are computed from the train
shards exactly as a single run does, so the merged manifest equals the single run's but
for the shard paths, `created` and `tasks`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplense_tf.data import schema
from deeplense_tf.errors import ConfigError, DataError
from deeplense_tf.files import save_figure, write_json_atomic
from deeplense_tf.simulation import simulator
from deeplense_tf.simulation.presets import Preset, get_preset

PLAN_NAME = "simulation_plan.json"
TASK_FILE = "task.json"  # written last in a task folder: that task's shards are complete
PREVIEW_NAME = "preview.png"
DEFAULT_SHARD_SIZE = 1024  # examples per train shard when --shards is not given
PREVIEW_PER_CLASS = 6
_MAX_CHUNK = 16  # examples per worker task: small enough to keep both cores busy


@dataclass(frozen=True)
class ShardPlan:
    split: str
    shard: int
    num_shards: int
    start: int  # first example index (inclusive)
    stop: int  # last example index (exclusive)

    @property
    def name(self) -> str:
        return schema.shard_name(self.split, self.shard, self.num_shards)


def split_counts(num: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Examples per split; train gets what val and test (rounded) leave."""
    n_val = int(round(num * val_fraction))
    n_test = int(round(num * test_fraction))
    return {"train": num - n_val - n_test, "val": n_val, "test": n_test}


def plan_shards(counts: dict[str, int], shards: int | None) -> list[ShardPlan]:
    """Contiguous index ranges: train first, then val, then test.

    `shards` is the number of train shards (default: one per DEFAULT_SHARD_SIZE examples);
    val and test get shards of about the same size.
    """
    n_train = counts["train"]
    k_train = shards if shards is not None else math.ceil(n_train / DEFAULT_SHARD_SIZE)
    k_train = max(1, min(k_train, n_train))
    shard_size = math.ceil(n_train / k_train)
    plans, start = [], 0
    for split in schema.SPLITS:
        n = counts[split]
        k = k_train if split == "train" else math.ceil(n / shard_size)
        bounds = np.linspace(0, n, k + 1).round().astype(int) if k else []
        for i in range(k):
            plans.append(ShardPlan(split, i, k, start + int(bounds[i]), start + int(bounds[i + 1])))
        start += n
    return plans


def _validate(num, seed, workers, shards, val_fraction, test_fraction) -> None:
    def is_int(x):
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    if not is_int(num) or num <= 0:
        raise ConfigError(f"--num must be a positive integer, got {num!r}")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers!r}")
    if shards is not None and (not is_int(shards) or shards < 1):
        raise ConfigError(f"--shards must be at least 1, got {shards!r}")
    for flag, value in (("--val", val_fraction), ("--test", test_fraction)):
        if not isinstance(value, int | float) or not 0.0 <= value < 1.0 or math.isnan(value):
            raise ConfigError(f"{flag} must be a fraction in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"--val {val_fraction} + --test {test_fraction} leave no training examples"
        )
    if split_counts(num, val_fraction, test_fraction)["train"] < 1:
        raise ConfigError(f"--num {num} is too small for --val {val_fraction} --test "
                          f"{test_fraction}: no training example is left")


# Identity keys written only when set (folders from before they existed lack them).
_OPTIONAL_IDENTITY_KEYS = ("source_seed",)


def _identity(preset: Preset, seed: int, num: int, val_fraction: float, test_fraction: float,
              plans: list[ShardPlan]) -> dict:
    """What decides the folder's content (everything but the worker count)."""
    # `source_seed` only when set, so folders written before it existed still resume.
    twin = {} if preset.source_seed is None else {"source_seed": preset.source_seed}
    return {
        "preset": preset.name,
        "drawn_classes": list(preset.classes),
        **twin,
        "seed": int(seed),
        "num": int(num),
        "splits": {
            split: {"count": sum(p.stop - p.start for p in plans if p.split == split),
                    "shards": [p.name for p in plans if p.split == split]}
            for split in schema.SPLITS
        },
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
    }


def _write_json_atomic(path: Path, data: dict) -> None:
    write_json_atomic(path, data, allow_nan=False)  # other tools parse the manifest strictly


def _check_folder(out: Path, identity: dict, done_name: str = schema.MANIFEST_NAME) -> str:
    """'new', 'resume' or 'complete'; DataError if the folder holds something else.

    `done_name` is the file written last (the manifest, or a task folder's task.json).
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    if not out.exists():
        return "new"
    manifest_path, plan_path = out / done_name, out / PLAN_NAME
    for path in (manifest_path, plan_path):
        if not path.exists():
            continue
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{path} is unreadable ({err}); delete the folder or choose "
                            "another --out") from None
        # An optional key (written only when set) differs when either side has it.
        keys = [*identity, *(k for k in _OPTIONAL_IDENTITY_KEYS if k in held and k not in identity)]
        differing = [k for k in keys if held.get(k) != identity.get(k)]
        if differing:
            have = ", ".join(f"{k}={held.get(k)!r}" for k in differing if k != "splits")
            want = ", ".join(f"{k}={identity.get(k)!r}" for k in differing if k != "splits")
            detail = f"it holds {have}, asked for {want}" if have else "its splits or shards differ"
            raise DataError(f"--out {out} already holds a different data set ({detail}); "
                            "choose another folder or delete it")
        if path == manifest_path:
            return "complete"
        return "resume"
    if any(out.iterdir()):
        raise DataError(f"--out {out} is not empty and holds no deeplense data set; "
                        "choose an empty or new folder")
    return "new"


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCHDOG_SECONDS = 1.0


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: the worker dies when the process that started it does.

    A parent killed outright (kill -9, the OOM killer) cannot shut its pool down, and
    orphaned workers would go on simulating for minutes. On Linux the kernel sends the
    worker SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG; strictly, when the parent's
    thread that started it ends, which is the thread running `write_dataset`, and that
    shuts the pool down before it returns); everywhere, a daemon thread also exits the
    worker once its parent process id changes (re-parented).
    """
    import signal
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_WATCHDOG_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _iter_chunks(plans: list[ShardPlan], chunk: int):
    for plan in plans:
        for start in range(plan.start, plan.stop, chunk):
            yield plan, start, min(start + chunk, plan.stop)


def _run_chunks(preset: Preset, seed: int, plans: list[ShardPlan], workers: int):
    """Yield (plan, examples) for consecutive chunks, in index order."""
    if workers == 1:
        for plan, start, stop in _iter_chunks(plans, _MAX_CHUNK):
            examples = simulator.simulate_range(preset, seed, start, stop)
            yield plan, examples
        return
    biggest = max(p.stop - p.start for p in plans)
    chunk = max(1, min(_MAX_CHUNK, math.ceil(biggest / (2 * workers))))
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_exit_with_parent,
        initargs=(os.getpid(),))
    pending = collections.deque()
    chunks = _iter_chunks(plans, chunk)
    try:
        def submit_next():
            item = next(chunks, None)
            if item is not None:
                plan, start, stop = item
                pending.append((plan, executor.submit(
                    simulator.simulate_range, preset, seed, start, stop)))

        for _ in range(4 * workers):  # a bounded window: results are consumed in order
            submit_next()
        while pending:
            plan, future = pending.popleft()
            examples = future.result()
            submit_next()
            yield plan, examples
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _write_shards(preset: Preset, seed: int, missing: list[ShardPlan], out: Path,
                  workers: int, bar) -> None:
    import tensorflow as tf

    writer = None
    try:
        for plan, examples in _run_chunks(preset, seed, missing, workers):
            if writer is None:
                writer = tf.io.TFRecordWriter(str(out / (plan.name + ".tmp")))
            for ex in examples:
                writer.write(schema.encode_example(ex["image"], ex["index"], ex["class_id"],
                                                   ex["targets"], ex["nuisance"]))
            bar.update(len(examples))
            if examples[-1]["index"] == plan.stop - 1:  # chunks arrive in index order
                writer.close()
                writer = None
                os.replace(out / (plan.name + ".tmp"), out / plan.name)
    finally:
        if writer is not None:
            writer.close()  # leaves <name>.tmp; the next run rewrites it


def _read_split(paths: list[Path], preset: Preset):
    """Yield (index, image, class_id, targets) of the shard files `paths` (for statistics)."""
    import tensorflow as tf

    for path in paths:
        try:
            for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                ex = tf.train.Example.FromString(raw)
                f = ex.features.feature
                image = np.frombuffer(f["image"].bytes_list.value[0], dtype="<f4")
                targets = {name: f[schema.TARGET_PREFIX + name].float_list.value[0]
                           for name in preset.targets}
                yield (f["index"].int64_list.value[0], image.reshape(preset.image_shape),
                       f["class_id"].int64_list.value[0], targets)
        except (tf.errors.DataLossError, KeyError, IndexError, ValueError) as err:
            raise DataError(f"{path} is corrupt ({type(err).__name__}: {err}); delete it and "
                            "re-run the same command to rewrite it") from None


def _train_statistics(train_shards: list[Path], preset: Preset):
    """target_stats, image_stats of the train split (its shard files, in plan order), and
    preview examples per class."""
    values = {name: [] for name in preset.targets}
    total, total_sq, count, maxima = 0.0, 0.0, 0, []
    preview = {c: [] for c in range(len(schema.CLASS_NAMES))}
    for index, image, class_id, targets in _read_split(train_shards, preset):
        pixels = image.astype(np.float64)
        total += pixels.sum()
        total_sq += np.square(pixels).sum()
        count += pixels.size
        maxima.append(float(image.max()))
        for name, value in targets.items():
            values[name].append(value)
        if len(preview[class_id]) < PREVIEW_PER_CLASS:
            preview[class_id].append((index, image, targets))
    target_stats = {}
    for name, vals in values.items():
        finite = np.asarray(vals, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        # null where the drawn classes never define the target (JSON has no NaN).
        target_stats[name] = (
            {"mean": float(finite.mean()), "std": float(finite.std()),
             "min": float(finite.min()), "max": float(finite.max())}
            if finite.size else {"mean": None, "std": None, "min": None, "max": None}
        )
    mean = total / count
    image_stats = {"mean": mean, "std": math.sqrt(max(total_sq / count - mean**2, 0.0)),
                   "max_median": float(np.median(maxima))}
    return target_stats, image_stats, preview


def _write_preview(path: Path, preset: Preset, preview: dict) -> None:
    """One row per drawn class, PREVIEW_PER_CLASS columns; sky orientation (origin lower)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [c for c in sorted(preview) if preview[c]]
    cols = max(len(preview[c]) for c in rows)
    fig = Figure(figsize=(2.0 * cols, 2.2 * len(rows)))
    FigureCanvasAgg(fig)
    half = preset.instrument.num_pix * preset.instrument.pixel_scale_arcsec / 2
    first_target = preset.targets[0]
    for r, class_id in enumerate(rows):
        for c, (index, image, targets) in enumerate(preview[class_id]):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(image[:, :, 0], origin="lower", cmap="magma",
                      extent=(-half, half, -half, half))
            value = targets.get(first_target, math.nan)
            label = f"#{index}" + (f" {first_target}={value:.2f}" if np.isfinite(value) else "")
            ax.set_title(label, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(schema.CLASS_NAMES[class_id], fontsize=9)
    fig.suptitle(f"{preset.name} ({preset.instrument.units}; x right, y up, "
                 f"{2 * half:.2f}\" across)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _versions() -> dict:
    import lenstronomy
    import tensorflow as tf

    from deeplense_tf import __version__

    return {"deeplense_tf": __version__, "lenstronomy": lenstronomy.__version__,
            "tensorflow": tf.__version__, "numpy": np.__version__}


def _validate_task(task_index, num_tasks, plans: list[ShardPlan]) -> None:
    def is_int(x):
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    if (task_index is None) != (num_tasks is None):
        raise ConfigError("--task-index and --num-tasks go together (task I of N)")
    if task_index is None:
        return
    if not is_int(num_tasks) or num_tasks < 1:
        raise ConfigError(f"--num-tasks must be at least 1, got {num_tasks!r}")
    if not is_int(task_index) or not 0 <= task_index < num_tasks:
        raise ConfigError(f"--task-index must be in 0..{num_tasks - 1} for --num-tasks "
                          f"{num_tasks}, got {task_index!r}")
    if num_tasks > len(plans):
        raise ConfigError(f"--num-tasks {num_tasks} is more than the data set's {len(plans)} "
                          f"shards (each task writes whole shards); pass --shards {num_tasks} "
                          "or more, or use fewer tasks")


def task_folder_name(task_index: int, num_tasks: int) -> str:
    """`task-00002-of-00008`: where task `task_index` of `num_tasks` writes its shards."""
    return f"task-{task_index:05d}-of-{num_tasks:05d}"


def _fill_folder(out: Path, identity: dict, plans: list[ShardPlan], done_name: str,
                 preset: Preset, seed: int, workers: int, progress: bool) -> bool:
    """Write the shards of `plans` missing in `out`; True if `out` was complete already."""
    state = _check_folder(out, identity, done_name)
    out.mkdir(parents=True, exist_ok=True)
    if state == "new":
        _write_json_atomic(out / PLAN_NAME, identity)
    for stale in out.glob("*.tmp"):
        stale.unlink()  # a shard or manifest an interrupted run did not finish

    missing = [p for p in plans if not (out / p.name).exists()]
    if state == "complete" and not missing:
        if progress:
            print(f"{out} already holds this data set; nothing to do", file=sys.stderr)
        return True

    from tqdm.auto import tqdm

    total = sum(p.stop - p.start for p in plans)
    done = total - sum(p.stop - p.start for p in missing)
    with tqdm(total=total, initial=done, unit="img", desc=f"simulate {preset.name}",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        _write_shards(preset, seed, missing, out, workers, bar)
    return False


def _manifest(preset: Preset, identity: dict, splits: dict, train_shards: list[Path],
              preview_path: Path) -> dict:
    """The data set's manifest (statistics read from the train shards) and its preview."""
    target_stats, image_stats, preview = _train_statistics(train_shards, preset)
    _write_preview(preview_path, preset, preview)
    return {
        "format_version": schema.FORMAT_VERSION,
        "preset": preset.name,
        "description": preset.description,
        "seed": identity["seed"],
        "num": identity["num"],
        "classes": list(schema.CLASS_NAMES),
        "drawn_classes": list(preset.classes),
        **({} if preset.source_seed is None else {"source_seed": preset.source_seed}),
        "image_shape": list(preset.image_shape),
        "image_units": preset.instrument.units,
        "pixel_scale_arcsec": preset.instrument.pixel_scale_arcsec,
        "targets": list(preset.targets),
        "nuisances": list(preset.nuisances),
        "target_kinds": {name: dict(preset.target_kinds[name]) for name in preset.targets},
        "exact_symmetries": list(preset.exact_symmetries),
        "splits": splits,
        "val_fraction": identity["val_fraction"],
        "test_fraction": identity["test_fraction"],
        "target_stats": target_stats,
        "image_stats": image_stats,
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_dataset(preset, num: int, out_dir, seed: int = 0, workers: int = 1,
                  shards: int | None = None, val_fraction: float = 0.1,
                  test_fraction: float = 0.1, classes=None, progress: bool = True,
                  task_index: int | None = None, num_tasks: int | None = None) -> dict:
    """Simulate `num` examples of `preset` (a name or a Preset) into `out_dir`.

    `classes`: None (the preset's), "mix", a class name or a list of names. `shards`: the
    number of train shards. Example i is bit-identical whatever `workers` and `shards`.
    Re-running after an interruption writes only the missing shards. Returns the manifest.

    With `task_index` I and `num_tasks` N, writes only task I's slice (every N-th shard of
    the same plan) into `out_dir/task-<I>-of-<N>/` and returns that task's `task.json`;
    `merge_tasks(out_dir)` makes the data set once all N are done (module docstring).
    Raises ConfigError for bad arguments, DataError if `out_dir` holds another data set.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    preset = preset.with_classes(classes)
    _validate(num, seed, workers, shards, val_fraction, test_fraction)
    out = Path(out_dir)
    counts = split_counts(num, val_fraction, test_fraction)
    plans = plan_shards(counts, shards)
    _validate_task(task_index, num_tasks, plans)
    identity = _identity(preset, seed, num, val_fraction, test_fraction, plans)

    if task_index is not None:
        task_out = out / task_folder_name(task_index, num_tasks)
        task_identity = {**identity, "task_index": int(task_index), "num_tasks": int(num_tasks)}
        mine = plans[task_index::num_tasks]
        if _fill_folder(task_out, task_identity, mine, TASK_FILE, preset, seed, workers, progress):
            return json.loads((task_out / TASK_FILE).read_text())
        task = {**task_identity, "format_version": schema.FORMAT_VERSION,
                "shards": [p.name for p in mine], "versions": _versions(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}
        _write_json_atomic(task_out / TASK_FILE, task)
        (task_out / PLAN_NAME).unlink(missing_ok=True)
        return task

    if _fill_folder(out, identity, plans, schema.MANIFEST_NAME, preset, seed, workers, progress):
        return json.loads((out / schema.MANIFEST_NAME).read_text())
    train = [out / p.name for p in plans if p.split == "train"]
    manifest = _manifest(preset, identity, identity["splits"], train, out / PREVIEW_NAME)
    _write_json_atomic(out / schema.MANIFEST_NAME, manifest)
    (out / PLAN_NAME).unlink(missing_ok=True)
    return manifest


_TASK_KEYS = ("task_index", "num_tasks", "format_version", "shards", "versions", "created")


def merge_tasks(out_dir, progress: bool = True) -> dict:
    """Make one data set of the task folders in `out_dir`: writes `out_dir/manifest.json`
    listing every shard in its task folder (nothing is copied) and `preview.png`.

    Raises DataError naming what is wrong when a task is missing or unfinished, when the
    tasks sliced different data sets, or when `out_dir` already holds another data set.
    Merging again after a merge returns the manifest as it is.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise DataError(f"{out}: no such folder")
    folders = sorted(p for p in out.glob("task-*-of-*") if p.is_dir())
    if not folders:
        raise DataError(f"{out}: no task folders (task-I-of-N) to merge; run `deeplense "
                        "simulate ... --out DIR --task-index I --num-tasks N` first")
    tasks, unfinished = {}, []
    for folder in folders:
        try:
            tasks[folder.name] = json.loads((folder / TASK_FILE).read_text())
        except FileNotFoundError:
            unfinished.append(folder.name)
        except (OSError, ValueError) as err:
            raise DataError(f"{folder / TASK_FILE} is unreadable ({err}); re-run that task") from None
    if unfinished:
        raise DataError(f"{out}: task(s) {', '.join(unfinished)} have not finished (no "
                        f"{TASK_FILE}); re-run them with the same command")
    first = next(iter(tasks.values()))
    identity = {k: v for k, v in first.items() if k not in _TASK_KEYS}
    num_tasks = first.get("num_tasks")
    for name, task in tasks.items():
        if {k: v for k, v in task.items() if k not in _TASK_KEYS} != identity or \
                task.get("num_tasks") != num_tasks:
            raise DataError(f"{out}: {name} sliced another data set than {folders[0].name} "
                            "(preset, seed, size, splits or number of tasks differ)")
        if name != task_folder_name(task["task_index"], num_tasks):
            raise DataError(f"{out / name}: its {TASK_FILE} says task {task['task_index']} "
                            f"of {num_tasks}; the folder was renamed or copied")
    missing = [task_folder_name(i, num_tasks) for i in range(num_tasks)
               if task_folder_name(i, num_tasks) not in tasks]
    if missing:
        raise DataError(f"{out}: task(s) {', '.join(missing)} of {num_tasks} are missing; "
                        "run them (same command, those --task-index values) and merge again")

    where = {shard: name for name, task in tasks.items() for shard in task["shards"]}
    splits = {}
    for split, info in identity["splits"].items():
        absent = [s for s in info["shards"] if s not in where or not (out / where[s] / s).is_file()]
        if absent:
            raise DataError(f"{out}: shard(s) {', '.join(absent[:3])} of split {split!r} are "
                            "not in the task folders; re-run the task that writes them")
        splits[split] = {"count": info["count"],
                         "shards": [f"{where[s]}/{s}" for s in info["shards"]]}

    manifest_path = out / schema.MANIFEST_NAME
    if manifest_path.is_file():
        held = json.loads(manifest_path.read_text())
        if held.get("splits") == splits and held.get("seed") == identity["seed"]:
            if progress:
                print(f"{out} is merged already; nothing to do", file=sys.stderr)
            return held
        raise DataError(f"{manifest_path} describes another data set; merge into a new folder")

    preset = (get_preset(identity["preset"]).with_classes(identity["drawn_classes"])
              .with_source_seed(identity.get("source_seed")))
    train = [out / path for path in splits["train"]["shards"]]
    manifest = _manifest(preset, identity, splits, train, out / PREVIEW_NAME)
    manifest["tasks"] = {"num_tasks": num_tasks, "folders": sorted(tasks)}
    _write_json_atomic(manifest_path, manifest)
    return manifest
