"""`deeplense simulate`: simulate lensing images into TFRecord shards."""

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
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _default_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def run(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset, classes=args.classes)  # validates before anything is written
    workers = args.workers if args.workers is not None else _default_workers()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")

    from deeplense_tf.simulation.writer import PREVIEW_NAME, write_dataset

    started = time.perf_counter()
    manifest = write_dataset(
        preset, args.num, args.out, seed=args.seed, workers=workers, shards=args.shards,
        val_fraction=args.val, test_fraction=args.test, progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - started
    out = args.out.rstrip("/")
    for info in manifest["splits"].values():
        for name in info["shards"]:
            print(f"{out}/{name}")
    print(f"{out}/{PREVIEW_NAME}")
    print(f"{out}/manifest.json")
    counts = ", ".join(f"{s} {info['count']}" for s, info in manifest["splits"].items())
    print(f"{out}: {manifest['preset']} ({', '.join(manifest['drawn_classes'])}), seed "
          f"{manifest['seed']}: {counts} ({elapsed:.1f} s)", file=sys.stderr)
    return 0
