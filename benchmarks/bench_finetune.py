"""Fine-tuning vs training from scratch at equal budget on new data: a model trained on
deeplense-model-2 (Euclid-like) fine-tuned on deeplense-model-3 (HST-like, a change of
instrument) with 1,000 and with 10,000 new training images, printed as a markdown table.

    python benchmarks/bench_finetune.py --source-num 20000 --new-nums 1000 10000 \
        --config quickstart --epochs 30 --freeze-encoder-epochs 3 --workers 2
    python benchmarks/bench_finetune.py --smoke          # seconds: checks that it runs

Steps (each reused when already done, so an interrupted benchmark continues):
1. WORK/source-data: `--source-num` images of `--source-preset`; WORK/source: a run on it
   (or `--source-run RUN`, e.g. a member of bench_ensemble.py).
2. WORK/new-<n>: `--target-preset` data whose train split has n images (10% val, 10% test
   on top), all with seed 1, so the smaller sets' training images are the first ones of
   the larger sets'.
3. For each n, two runs with the same config, epochs, batch and steps ("equal budget"):
   scratch (random initialisation) and fine-tuned (`training.init_from` the source run,
   encoder frozen for `--freeze-encoder-epochs`, then all layers at
   `training.finetune_lr_factor` times the rate).
4. Every run is scored on the same test set: the test split of the largest new data set
   (images no run trained on).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ensemble import (  # noqa: E402  (shared benchmark helpers)
    common_arguments,
    make_config,
    markdown_table,
    print_header,
    simulate,
    test_scores,
    train_once,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, "bench_work/finetune")
    parser.add_argument("--source-preset", default="deeplense-model-2")
    parser.add_argument("--target-preset", default="deeplense-model-3")
    parser.add_argument("--source-num", type=int, default=20000, help="source images to simulate (default 20000)")
    parser.add_argument("--source-run", help="an existing run on the source data (skips step 1)")
    parser.add_argument("--new-nums", type=int, nargs="+", default=[1000, 10000],
                        help="new training images per comparison (default: 1000 10000)")
    parser.add_argument("--freeze-encoder-epochs", type=int, default=3,
                        help="fine-tuning: epochs training only the head first (default: 3)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.source_num = min(args.source_num, 100)
        args.new_nums = [min(n, 16 * (i + 1)) for i, n in enumerate(args.new_nums)]  # 16, 32
        args.freeze_encoder_epochs = min(args.freeze_encoder_epochs, 1)
    if any(n < 8 for n in args.new_nums):
        parser.error("--new-nums must be at least 8 images each")

    from deeplense_tf.data import load_examples
    from deeplense_tf.training import Run

    work = Path(args.work)
    start = time.perf_counter()
    if args.source_run:
        source = Run.load(args.source_run).path
    else:
        source_data = simulate(args.source_preset, args.source_num, work / "source-data", workers=args.workers)
        source = train_once(make_config(args, source_data), work / "source")[0].path

    # n training images + 10% each for val and test on top: num = n / 0.8.
    datasets = {n: simulate(args.target_preset, round(n / 0.8), work / f"new-{n}", seed=1, workers=args.workers)
                for n in sorted(set(args.new_nums))}
    examples = load_examples(str(datasets[max(datasets)]), split="test")

    rows = []
    for n, data in datasets.items():
        scratch, scratch_seconds = train_once(make_config(args, data), work / f"scratch-{n}")
        finetuned, finetuned_seconds = train_once(
            make_config(args, data, **{"training.init_from": str(source),
                                       "training.freeze_encoder_epochs": args.freeze_encoder_epochs}),
            work / f"finetuned-{n}",
        )
        target = scratch.targets[0]
        a, b = test_scores(scratch, examples, target), test_scores(finetuned, examples, target)
        rows.append([n, a["mae"], b["mae"], a["nll"], b["nll"], scratch_seconds, finetuned_seconds])

    config = make_config(args, datasets[max(datasets)])
    t = config["training"]
    print_header(f"Fine-tuned ({args.source_preset} -> {args.target_preset}) vs from scratch", args)
    print(f"model {config['model']['name']} {config['model']['options'] or ''}, {t['epochs']} epochs of batch "
          f"{t['batch_size']}{', budget ' + str(t['time_budget_minutes']) + ' min' if t['time_budget_minutes'] else ''} "
          f"for both; source run {source}; {len(examples.images)} test images of {args.target_preset}; "
          f"total {(time.perf_counter() - start) / 60:.1f} min.\n")
    print(markdown_table(["new train images", "scratch MAE", "fine-tuned MAE", "scratch NLL",
                          "fine-tuned NLL", "scratch train s", "fine-tuned train s"], rows))
    print("\nMAE in dex of log10 m_axion; NLL in nats per example (Gaussian head).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
