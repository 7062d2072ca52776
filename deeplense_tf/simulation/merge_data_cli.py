"""`deeplense merge-data [--data] DIR`: make the task slices in DIR one data set (docs/simulation.md).

DIR is the `--out` that every `deeplense simulate ... --task-index I --num-tasks N` was
given. Writes `DIR/manifest.json` and `DIR/preview.png`; the shards stay in the task
folders, where the readers and tf.data read them.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", nargs="?", metavar="DIR",
                        help="the --out folder of the simulate tasks (holds task-I-of-N/ folders)")
    parser.add_argument("--data", metavar="DIR", help="the same folder, given as in the other commands")
    parser.add_argument("--no-progress", action="store_true", help="print nothing but the paths")


def run(args: argparse.Namespace) -> int:
    from deeplense_tf.data import schema
    from deeplense_tf.errors import ConfigError
    from deeplense_tf.simulation.writer import PREVIEW_NAME, merge_tasks

    if (args.folder is None) == (args.data is None):
        raise ConfigError("give the folder to merge once: deeplense merge-data DIR (or --data DIR)")
    folder = args.folder if args.folder is not None else args.data
    started = time.perf_counter()
    manifest = merge_tasks(folder, progress=not args.no_progress)
    out = folder.rstrip("/")
    print(f"{out}/{PREVIEW_NAME}")
    print(f"{out}/{schema.MANIFEST_NAME}")
    counts = ", ".join(f"{s} {info['count']}" for s, info in manifest["splits"].items())
    tasks = (manifest.get("tasks") or {}).get("num_tasks")
    print(f"{out}: {manifest['preset']}, seed {manifest['seed']}: {counts} from {tasks} tasks "
          f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0
