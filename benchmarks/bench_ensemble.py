"""A deep ensemble against its best member on deeplense-model-2: test MAE, NLL and 68% / 95%
interval coverage side by side, printed as a markdown table (for BENCHMARKS.md).

    python benchmarks/bench_ensemble.py --num 20000 --members 5 --model resnet \
        --config quickstart --epochs 40 --workers 2
    python benchmarks/bench_ensemble.py --smoke          # seconds: checks that it runs

Simulates `--num` images of `--preset` into WORK/data (reused when already there; `--data`
uses an existing data folder instead), trains `--members` runs that differ only in their
seed (WORK/member<i>; a finished run is reused, an interrupted one resumes), combines them
with `deeplense ensemble` (WORK/ensemble) and evaluates every run on the test split. The
best member is the one with the lowest validation MAE (chosen without looking at the
test split).

The helpers above `main` are shared with bench_finetune.py and bench_tuning.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# --- shared helpers -----------------------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    parser.add_argument("--work", default=work, help=f"folder for data and runs (default: {work})")
    parser.add_argument("--workers", type=int, default=1, help="simulation processes (default: 1)")
    parser.add_argument("--config",
                        help="base experiment config: YAML file or packaged preset (default: quickstart; "
                        "smoke with --smoke)")
    parser.add_argument("--model", help="model family (default: the config's; another family starts "
                        "from its builder's default options)")
    parser.add_argument("--epochs", type=int, help="training epochs of every run (default: the config's)")
    parser.add_argument("--time-budget-minutes", type=float,
                        help="per-run training time budget (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data, the smoke preset's tiny CNN and two short epochs: checks that it "
                        "runs, not a result")


def make_config(args, data_dir, **extra) -> dict:
    """The experiment config of one run: `--config` (a preset), the command-line choices,
    then `extra` (dotted keys, e.g. `seed=1` or `**{"training.init_from": RUN}`)."""
    from deeplense_tf.training import load_config
    from deeplense_tf.training.train_cli import parse_set_options

    base = load_config(args.config or ("smoke" if args.smoke else "quickstart"))
    if args.model and args.model != base["model"]["name"]:
        base["model"].update(name=args.model, options={})  # a preset's options fit its own family
    overrides = {"data.path": str(data_dir)}
    if args.epochs:
        overrides["training.epochs"] = args.epochs
    if args.time_budget_minutes:
        overrides["training.time_budget_minutes"] = args.time_budget_minutes
    overrides.update(parse_set_options(args.set))
    overrides.update(extra)
    return load_config(None, {**base, **overrides})


def simulate(preset: str, num: int, out_dir, *, seed: int = 0, workers: int = 1,
             val_fraction: float = 0.1, test_fraction: float = 0.1) -> Path:
    """Simulated data in `out_dir` (kept when it already holds exactly this data set)."""
    from deeplense_tf.simulation import write_dataset

    write_dataset(preset, num=num, out_dir=out_dir, seed=seed, workers=workers,
                  val_fraction=val_fraction, test_fraction=test_fraction)
    return Path(out_dir)


def train_once(config: dict, run_dir):
    """The finished run in `run_dir`, trained first unless it is already there (resumes an
    interrupted one). Returns `(Run, train seconds)`."""
    from deeplense_tf.errors import RunError
    from deeplense_tf.training import Run, train

    run_dir = Path(run_dir)
    try:
        run = Run.load(run_dir)
        print(f"reusing the finished run {run_dir}", flush=True)
    except RunError:
        run = train(config, run_dir)
    metrics_path = run_dir / "metrics.json"
    seconds = json.loads(metrics_path.read_text()).get("train_seconds") if metrics_path.is_file() else None
    return run, seconds


def validation_mae(run_dir, target: str) -> float:
    """The training's final validation MAE of `target` (physical units), from metrics.json."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return float(metrics["validation"]["targets"][target]["mae"])


def test_scores(run, examples, target: str) -> dict:
    """`{"mae", "nll", "coverage_68", "coverage_95"}` of `run` on `examples` for `target`
    (NaN for the interval scores of a point-head run)."""
    from deeplense_tf.evaluation.report import evaluate_run

    metrics, _ = evaluate_run(run, examples)
    overall = metrics["targets"][target]["overall"]
    return {k: float(overall.get(k, float("nan"))) for k in ("mae", "nll", "coverage_68", "coverage_95")}


def fmt(value, digits: int = 4) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_header(title: str, args) -> None:
    import platform

    print(f"\n### {title}\n")
    print(f"`python {' '.join(sys.argv)}` on {platform.node()} ({os.cpu_count()} CPUs)\n")


# --- this benchmark -----------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, "bench_work/ensemble")
    parser.add_argument("--preset", default="deeplense-model-2", help="simulator preset (default: deeplense-model-2)")
    parser.add_argument("--num", type=int, default=20000, help="images to simulate (80/10/10 split; default 20000)")
    parser.add_argument("--members", type=int, default=5, help="runs in the ensemble (default: 5)")
    parser.add_argument("--data", help="an existing simulated data folder to use instead of simulating")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num = min(args.num, 120)
    if args.members < 2:
        parser.error("--members must be at least 2")

    from deeplense_tf.data import load_examples
    from deeplense_tf.training import Run
    from deeplense_tf.training.ensemble import ensemble_runs

    work = Path(args.work)
    start = time.perf_counter()
    data = Path(args.data) if args.data else simulate(args.preset, args.num, work / "data", workers=args.workers)
    member_dirs = []
    for seed in range(args.members):
        train_once(make_config(args, data, seed=seed), work / f"member{seed}")
        member_dirs.append(work / f"member{seed}")
    ensemble = ensemble_runs(member_dirs, work / "ensemble", overwrite=True)
    target = ensemble.targets[0]
    examples = load_examples(str(data), split="test")

    rows, best = [], None
    for seed, run_dir in enumerate(member_dirs):
        run = Run.load(run_dir)
        val = validation_mae(run_dir, target)
        scores = test_scores(run, examples, target)
        rows.append([f"member {seed} (seed {seed})", val, scores["mae"], scores["nll"],
                     scores["coverage_68"], scores["coverage_95"]])
        if best is None or val < best[1]:
            best = (seed, val, scores)
    ens = test_scores(ensemble, examples, target)
    seconds = time.perf_counter() - start

    print_header(f"Ensemble of {args.members} vs its best member ({args.preset}, {target})", args)
    source = f"data {data}" if args.data else f"{args.num} images simulated"
    print(f"{source} ({len(examples.images)} test), model "
          f"{ensemble.config['model']['member_models'][0]}; total {seconds / 60:.1f} min.\n")
    headers = ["run", "val MAE", "test MAE", "test NLL", "68% coverage", "95% coverage"]
    summary = [[f"best member (seed {best[0]}, by val MAE)", best[1], best[2]["mae"], best[2]["nll"],
                best[2]["coverage_68"], best[2]["coverage_95"]],
               [f"ensemble of {args.members}", float("nan"), ens["mae"], ens["nll"],
                ens["coverage_68"], ens["coverage_95"]]]
    print(markdown_table(headers, summary))
    print("\nAll members:\n")
    print(markdown_table(headers, rows))
    print("\nMAE in the target's units (dex for log10 masses); NLL in nats per example, same units; "
          "coverage: fraction of test targets inside the central 68% / 95% Gaussian interval.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
