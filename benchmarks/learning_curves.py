"""Learning curves of finished runs: validation MAE against training minutes, and test MAE
against training-set size.

    python benchmarks/learning_curves.py --run "Model II, t head=runs/m2" --run "Model III=runs/m3" \
        --out benchmarks/results/learning-curves.png

Each `--run LABEL=DIR` is a run folder. Its `history.csv` gives the validation MAE in
physical units after every epoch; the epochs' `seconds` column, summed, gives the training
minutes, so a curve shows what a shorter time budget would have reached (before that
budget's own cosine schedule, which anneals earlier, so a real shorter run ends a little
lower). When a run also has `eval/metrics.json`, its test MAE and training-set size
(`data_manifest.json`) go into the data-size panel and the table.

Prints a Markdown table (validation MAE at 15, 30, 45, 60, 75 and 90 minutes, final test
MAE) for BENCHMARKS.md and writes the figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

MINUTE_MARKS = (15, 30, 45, 60, 75, 90)


def read_curve(run: Path) -> tuple[list[float], list[float], str]:
    """Cumulative training minutes and validation MAE (physical units) after each epoch."""
    path = run / "history.csv"
    if not path.is_file():
        raise SystemExit(f"error: {run} has no history.csv (not a finished training run)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"error: {path} has no epochs")
    columns = [c for c in rows[0] if c.startswith("val_") and c.endswith("_mae_physical")]
    if len(columns) != 1:
        raise SystemExit(f"error: {path} needs exactly one val_<target>_mae_physical column, has {columns}")
    minutes, mae, elapsed = [], [], 0.0
    for row in rows:
        elapsed += float(row["seconds"]) / 60.0
        minutes.append(elapsed)
        mae.append(float(row[columns[0]]))
    return minutes, mae, columns[0][len("val_"):-len("_mae_physical")]


def value_at(minutes: list[float], mae: list[float], mark: float) -> float | None:
    """The best validation MAE reached by `mark` minutes (None if the run was shorter)."""
    if minutes[-1] < mark - 0.5:
        return None
    reached = [m for t, m in zip(minutes, mae) if t <= mark + 0.5]
    return min(reached) if reached else None


def test_result(run: Path, target: str) -> tuple[float | None, int | None]:
    """Test MAE from eval/metrics.json and the training-set size, when present."""
    mae = n_train = None
    metrics = run / "eval" / "metrics.json"
    if metrics.is_file():
        mae = json.loads(metrics.read_text())["targets"][target]["overall"]["mae"]
    manifest = run / "data_manifest.json"
    if manifest.is_file():
        n_train = json.loads(manifest.read_text()).get("splits", {}).get("train", {}).get("count")
    return mae, n_train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--out", default="benchmarks/results/learning-curves.png")
    args = parser.parse_args(argv)

    curves = []
    for spec in args.run:
        label, sep, folder = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"error: --run {spec!r} is not LABEL=DIR")
        run = Path(folder)
        minutes, mae, target = read_curve(run)
        curves.append((label, run, minutes, mae, *test_result(run, target)))

    header = "| run | " + " | ".join(f"val MAE @ {m} min" for m in MINUTE_MARKS) + " | epochs | train images | test MAE |"
    print(header)
    print("|" + "---|" * (len(MINUTE_MARKS) + 4))
    for label, _, minutes, mae, test_mae, n_train in curves:
        cells = [value_at(minutes, mae, m) for m in MINUTE_MARKS]
        text = [f"{c:.4f}" if c is not None else "" for c in cells]
        print(f"| {label} | " + " | ".join(text)
              + f" | {len(mae)} | {n_train if n_train else ''} | {f'{test_mae:.4f}' if test_mae else ''} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = [(n, t, label) for label, _, _, _, t, n in curves if n and t]
    fig, axes = plt.subplots(1, 2 if sized else 1, figsize=(11 if sized else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    for label, _, minutes, mae, _, _ in curves:
        ax.plot(minutes, mae, label=label)
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("validation MAE (dex)")
    ax.set_yscale("log")
    ax.axhline(0.020, color="grey", ls="--", lw=0.8, label="aim 0.020")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if sized:
        ax = axes[0][1]
        for n, t, label in sorted(sized):
            ax.scatter([n], [t], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.set_ylabel("test MAE (dex)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
