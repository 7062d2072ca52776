"""Simulation throughput per preset: ours with 1 and 2 workers next to bare lenstronomy.

    .venv/bin/python benchmarks/bench_simulation.py --num 48

For each preset (its default classes, axion: the slowest, 102 lens components):
- bare: `ImageModel.image(kwargs_lens, kwargs_source)` alone, same parameters, objects built
  beforehand -- the floor any lenstronomy simulator pays;
- ours, 1 worker: `simulate_example` (parameter draws, lens set-up, image, noise, float32) in
  this process, as `write_dataset(workers=1)` runs it; overhead = its time / bare time;
- ours, 2 workers: the same examples through a warm "spawn" process pool in chunks, as
  `write_dataset(workers=2)` runs them (pickling included); scaling = its rate / 1 worker.
Process start-up (imports, about 3 s of CPU per worker) is excluded from both; `--end-to-end N`
adds a `write_dataset` run of N images (start-up, TFRecord writing, statistics, preview) per
worker count.
Prints a markdown table. The machine's load average is printed too: other processes on the
same cores lower the 2-worker figure; the CPU time per image in the workers (last column)
shows whether the work itself splits without extra cost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from deeplense_tf.simulation import get_preset, presets, simulator  # noqa: E402


def _warm_worker(names: list[str], classes: str | None) -> None:
    # Build every lenstronomy object the timed tasks need before the clock starts.
    for name in names:
        preset = get_preset(name, classes=classes)
        for index in range(len(preset.classes)):
            simulator.simulate_example(preset, 0, index)


def _pid_after_pause() -> int:
    time.sleep(0.2)  # long enough that one worker cannot take every warm-up task
    return os.getpid()


def _start_all(pool, workers: int) -> None:
    """Return once every worker process is up and has run its initializer."""
    seen: set[int] = set()
    while len(seen) < workers:
        seen.update(f.result() for f in [pool.submit(_pid_after_pause) for _ in range(workers)])


def _time_bare_and_ours(preset, seed: int, num: int) -> tuple[float, float, float, float]:
    """(bare wall, bare CPU, ours wall, ours CPU) seconds over `num` examples.

    Each example's bare `ImageModel.image` call and its `simulate_example` run back to back,
    so both see the same load from other processes on the machine.
    """
    simulator.simulate_example(preset, seed + 1, 0)  # warm every cache
    totals = np.zeros(4)
    for index in range(num):
        params_rng, _ = simulator.example_rngs(seed, index)
        params = simulator.draw_params(preset, params_rng, simulator.class_of_index(preset, index))
        model, kwargs_lens, kwargs_source = simulator.lenstronomy_inputs(preset, params)
        wall, cpu = time.perf_counter(), time.process_time()
        model.image(kwargs_lens, kwargs_source)
        totals[0] += time.perf_counter() - wall
        totals[1] += time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        simulator.simulate_example(preset, seed, index)
        totals[2] += time.perf_counter() - wall
        totals[3] += time.process_time() - cpu
    return tuple(totals)


def _cpu_timed_range(preset, seed: int, start: int, stop: int):
    cpu = time.process_time()
    examples = simulator.simulate_range(preset, seed, start, stop)
    return examples, time.process_time() - cpu


def _time_pool(pool, preset, seed: int, num: int, chunk: int) -> tuple[float, float]:
    """(wall, CPU summed over workers) seconds of `num` examples through the pool."""
    start = time.perf_counter()
    futures = [pool.submit(_cpu_timed_range, preset, seed, lo, min(lo + chunk, num))
               for lo in range(0, num, chunk)]
    cpu = sum(future.result()[1] for future in futures)
    return time.perf_counter() - start, cpu


def _time_end_to_end(name: str, classes, num: int, workers: int) -> float:
    from deeplense_tf.simulation import write_dataset

    out = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    try:
        start = time.perf_counter()
        write_dataset(name, num, out / "data", seed=0, workers=workers, classes=classes,
                      progress=False)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=48, help="images per measurement")
    parser.add_argument("--presets", nargs="*", default=list(presets.PRESET_NAMES))
    parser.add_argument("--classes", default=None, help="'mix' etc.; default: each preset's")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="also time write_dataset of N images (incl. worker start-up) of "
                             "the first preset, with 1 and 2 workers")
    args = parser.parse_args(argv)
    seed, workers = 0, 2
    chunk = max(1, args.num // (4 * workers))

    context = multiprocessing.get_context("spawn")
    rows = []
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_warm_worker,
            initargs=(args.presets, args.classes)) as pool:
        _warm_worker(args.presets, args.classes)
        _start_all(pool, workers)
        for name in args.presets:
            preset = get_preset(name, classes=args.classes)
            bare, bare_cpu, ours, ours_cpu = min(
                (_time_bare_and_ours(preset, seed, args.num) for _ in range(args.repeats)),
                key=lambda t: t[2])
            pooled, pooled_cpu = min(_time_pool(pool, preset, seed, args.num, chunk)
                                     for _ in range(args.repeats))
            rows.append((name, preset, bare, ours, pooled, bare_cpu, ours_cpu, pooled_cpu))

    n = args.num
    print(f"\nSimulation throughput, {n} images per timing (best of {args.repeats}); "
          f"classes: {args.classes or 'each preset default'}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| preset | image | bare lenstronomy (img/s) | ours, 1 worker (img/s) | ours, 2 workers "
          "(img/s) | overhead, wall / CPU | scaling 1->2, wall | CPU ms/img: bare / ours 1 / "
          "ours 2 workers |")
    print("|---|---|---|---|---|---|---|---|")
    for name, preset, bare, ours, pooled, bare_cpu, ours_cpu, pooled_cpu in rows:
        h, w, _ = preset.image_shape
        print(f"| {name} | {h}x{w} ({'/'.join(preset.classes)}) | {n / bare:.0f} | "
              f"{n / ours:.0f} | {n / pooled:.0f} | {ours / bare:.2f}x / "
              f"{ours_cpu / bare_cpu:.2f}x | {ours / pooled:.2f}x | {1e3 * bare_cpu / n:.1f} / "
              f"{1e3 * ours_cpu / n:.1f} / {1e3 * pooled_cpu / n:.1f} |")
    print("\noverhead = ours / bare time per image (CPU: this process's CPU time, which other "
          "processes on the machine disturb less than wall time). With 2 free cores the "
          "2-worker rate is bounded by 2 x (ours-1 CPU / ours-2 CPU) x the 1-worker rate.")
    if args.end_to_end:
        name, n = args.presets[0], args.end_to_end
        print(f"\nEnd to end, `write_dataset({name!r}, {n})` incl. worker start-up, "
              "TFRecords, statistics, preview:\n")
        print("| workers | wall (s) | img/s |")
        print("|---|---|---|")
        for w in (1, 2):
            wall = _time_end_to_end(name, args.classes, n, w)
            print(f"| {w} | {wall:.1f} | {n / wall:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
