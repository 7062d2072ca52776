"""`deeplense simulate`: simulate lensing images into TFRecord shards.

`--task-index I --num-tasks N` writes task I's slice of the data set into
`OUT/task-<I>-of-<N>/` (one machine or pod per task); `deeplense merge-data OUT`
(`merge_data_cli.py`) then makes the slices one data set. See docs/simulation.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from deeplense_tf.errors import ConfigError
from deeplense_tf.simulation.presets import DEFAULT_PRESET, PRESET_NAMES, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"one of {', '.join(PRESET_NAMES)} (default {DEFAULT_PRESET}); "
                             "see docs/simulation.md")
    parser.add_argument("--num", type=int, required=True, help="number of examples to simulate")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or an "
                        "interrupted run of the same command, which is resumed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: CPU cores available, at most 8)")
    parser.add_argument("--shards", type=int, default=None,
                        help="number of train shards (default: one per 1024 examples)")
    parser.add_argument("--val", type=float, default=0.1, help="validation fraction (0.1)")
    parser.add_argument("--test", type=float, default=0.1, help="test fraction (0.1)")
    parser.add_argument("--classes", default=None,
                        help="substructure classes to draw: 'mix' (all three, in turn), "
                             "'no_sub', 'cdm', 'axion' or a comma list (default: the "
                             "preset's, axion for every preset)")
    parser.add_argument("--source-seed", type=int, default=None, metavar="K",
                        help="redraw every source (and the noise) from stream K: example i "
                             "is then the same lens and substructure as without it, lensing "
                             "another source (a source twin, for `deeplense pretrain` with "
                             "pretrain.twin_data; docs/pretraining.md)")
    parser.add_argument("--task-index", type=int, default=None, metavar="I",
                        help="write only task I's slice (every N-th shard) into "
                             "OUT/task-I-of-N/; with --num-tasks")
    parser.add_argument("--num-tasks", type=int, default=None, metavar="N",
                        help="number of tasks the data set is sliced into (merge the slices "
                             "with `deeplense merge-data OUT`)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _default_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def run(args: argparse.Namespace) -> int:
    # Validates before anything is written.
    preset = get_preset(args.preset, classes=args.classes).with_source_seed(args.source_seed)
    workers = args.workers if args.workers is not None else _default_workers()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")

    from deeplense_tf.simulation.writer import (
        PREVIEW_NAME,
        TASK_FILE,
        task_folder_name,
        write_dataset,
    )

    started = time.perf_counter()
    manifest = write_dataset(
        preset, args.num, args.out, seed=args.seed, workers=workers, shards=args.shards,
        val_fraction=args.val, test_fraction=args.test, progress=not args.no_progress,
        task_index=args.task_index, num_tasks=args.num_tasks,
    )
    elapsed = time.perf_counter() - started
    out = args.out.rstrip("/")
    if args.task_index is not None:
        folder = f"{out}/{task_folder_name(args.task_index, args.num_tasks)}"
        for name in manifest["shards"]:
            print(f"{folder}/{name}")
        print(f"{folder}/{TASK_FILE}")
        print(f"{folder}: task {args.task_index} of {args.num_tasks}, {len(manifest['shards'])} "
              f"shards of {manifest['preset']}, seed {manifest['seed']} ({elapsed:.1f} s); "
              f"when every task is done: deeplense merge-data {out}", file=sys.stderr)
        return 0
    for info in manifest["splits"].values():
        for name in info["shards"]:
            print(f"{out}/{name}")
    print(f"{out}/{PREVIEW_NAME}")
    print(f"{out}/manifest.json")
    counts = ", ".join(f"{s} {info['count']}" for s, info in manifest["splits"].items())
    twin = f", source seed {manifest['source_seed']}" if "source_seed" in manifest else ""
    print(f"{out}: {manifest['preset']} ({', '.join(manifest['drawn_classes'])}), seed "
          f"{manifest['seed']}{twin}: {counts} ({elapsed:.1f} s)", file=sys.stderr)
    return 0
