"""`deeplense infer-population --run RUN --data DIR [--split test] [--tta] [--out DIR]`.

Treats every lens of the data set as sharing one value of the target (the axion mass
in nature), combines the run's per-lens posteriors into that value's posterior with the
training prior divided out (`deeplense_tf.evaluation.population`, docs/population.md),
and writes `population.json` (mean, std, MAP, 68% / 95% intervals, and how they narrow
as lenses are added) and `population.png` into RUN/population/ (or --out).
TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ConfigError
from deeplense_tf.evaluation.population import CALIBRATION_PER_MASS, DEFAULT_GRID
from deeplense_tf.files import write_text_atomic

RESULT_NAME = "population.json"
PLOT_NAME = "population.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN", help="run folder written by `deeplense train`")
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="the lenses: simulated data directory, DeepLense .npy folder, .npz or .h5")
    parser.add_argument("--split", default="test", help="split of a simulated data directory (default: test)")
    parser.add_argument("--limit", type=int, metavar="N", help="use only the first N lenses")
    parser.add_argument("--target", help="target to combine (default: the run's first)")
    parser.add_argument("--tta", action="store_true",
                        help="per-lens posterior = the mixture over the 8 D4 views")
    parser.add_argument("--prior-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="support of the (uniform) training prior (default: the run's preset)")
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID,
                        help=f"grid points over the prior range (default: {DEFAULT_GRID})")
    parser.add_argument("--no-edge-correction", action="store_true",
                        help="multiply the per-lens posteriors as they are, without undoing their "
                        "truncation at the prior's edges (docs/population.md)")
    parser.add_argument("--likelihood", choices=("posterior", "calibrated", "simulated"), default="posterior",
                        help="posterior: the product of the per-lens posteriors with the training prior "
                        "divided out (default); calibrated: the likelihood of each prediction given the "
                        "shared value, calibrated on the run's validation split; simulated: that likelihood "
                        "fitted on lenses simulated at a grid of fixed masses bracketing the prior's edges "
                        "(--calibration; docs/population.md)")
    parser.add_argument("--calibration", metavar="PATH",
                        help="with --likelihood simulated: a labelled data set of lenses at fixed masses "
                        "(e.g. .npz); simulated there with the run's preset when it does not exist")
    parser.add_argument("--calibration-per-mass", type=int, default=CALIBRATION_PER_MASS, metavar="N",
                        help=f"lenses per mass when simulating --calibration (default {CALIBRATION_PER_MASS})")
    parser.add_argument("--systematic", metavar="DEX|auto",
                        help="std of the model's bias shared by all lenses, integrated out (the floor "
                        "of the combined width); 'auto' measures it on the run's validation split "
                        "(default: none for the product, the calibration's own error with "
                        "--likelihood calibrated)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per prediction batch")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN/population)")


def infer_population_command(run_path, data, *, split="test", limit=None, target=None, tta=False,
                             prior_range=None, grid=DEFAULT_GRID, batch_size=256, out=None,
                             edge_correction=True, systematic=None, likelihood="posterior",
                             calibration=None, calibration_per_mass=CALIBRATION_PER_MASS,
                             verbose=True) -> dict:
    """What `deeplense infer-population` does, callable from Python; returns population.json's dict
    with `written` added."""
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.metrics import to_jsonable
    from deeplense_tf.evaluation.population import infer_population, plot_population
    from deeplense_tf.runs import Run

    if grid < 3:
        raise ConfigError(f"--grid must be at least 3, got {grid}")
    run = Run.load(run_path)
    systematic_std = _systematic(run, systematic, target, tta, batch_size)
    summary_likelihood = None
    if likelihood == "calibrated":
        summary_likelihood = _calibrated_likelihood(run, target, tta, batch_size, prior_range)
    elif likelihood == "simulated":
        summary_likelihood = _simulated_likelihood(run, target, tta, batch_size, calibration,
                                                   calibration_per_mass, verbose)
    elif calibration is not None:
        raise ConfigError("--calibration is used with --likelihood simulated only")
    examples = load_examples(str(data), split=split, limit=limit)
    result, posterior = infer_population(run, examples, target=target, tta=tta, prior_range=prior_range,
                                         grid_size=grid, batch_size=batch_size,
                                         edge_correction=edge_correction, systematic_std=systematic_std,
                                         likelihood=summary_likelihood)
    result = {"run": str(run_path), "split": split, **result}
    out_dir = Path(out) if out is not None else Path(run_path) / "population"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_population(result, posterior, out_dir / PLOT_NAME)
    path = out_dir / RESULT_NAME
    write_text_atomic(path, json.dumps(to_jsonable(result), indent=2) + "\n")
    if verbose:
        s = result["posterior"]
        lo68, hi68 = s["interval_68"]
        lo95, hi95 = s["interval_95"]
        print(f"{result['target']} shared by {result['lenses']} lenses ({result['family']} per-lens "
              f"posteriors{', TTA mixture' if tta else ''}; prior {result['prior']['source']} "
              f"{result['prior']['range']}):")
        print(f"  mean {s['mean']:.4f}  std {s['std']:.4f}  MAP {s['map']:.4f}  "
              f"68% [{lo68:.4f}, {hi68:.4f}]  95% [{lo95:.4f}, {hi95:.4f}]")
        if "truth" in result:
            t = result["truth"]
            print(f"  truth: {t['mean']:.4f}" if t["shared"] else
                  f"  the lenses' true values differ ({t['min']:.3f} .. {t['max']:.3f}): "
                  "the combination assumes one shared value")
        for written in (path, plot):
            print(f"wrote {written}")
    return dict(result, written=[str(path), str(plot)])


def _systematic(run, value, target, tta, batch_size) -> float:
    """`--systematic`: a number (dex), or 'auto' = `systematic_floor` on the run's val split;
    None stays None (the method's default)."""
    if value is None:
        return None
    if str(value).strip().lower() != "auto":
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--systematic must be a number (dex) or 'auto', got {value!r}") from None
        if not number >= 0:
            raise ConfigError(f"--systematic must be >= 0, got {value}")
        return number
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.population import systematic_floor

    target = target or run.targets[0]
    val = load_examples(run.data_path(None), split="val")
    keep = np.isfinite(val.targets[target])
    mean = run.predict(val.images[keep], batch_size=batch_size, tta=tta)[target]["mean"]
    floor = systematic_floor(val.targets[target][keep], mean)
    print(f"systematic floor measured on {int(keep.sum())} validation lenses: {floor:.4f}")
    return floor


def _calibrated_likelihood(run, target, tta, batch_size, prior_range):
    """`SummaryLikelihood` of `run` fitted on its validation split."""
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.population import SummaryLikelihood, training_prior_range

    target = target or run.targets[0]
    if prior_range is None:
        prior_range, _ = training_prior_range(run, target)
    val = load_examples(run.data_path(None), split="val")
    keep = np.isfinite(val.targets[target])
    pred = run.predict(val.images[keep], batch_size=batch_size, tta=tta)[target]
    fitted = SummaryLikelihood.fit(val.targets[target][keep], pred["mean"], pred["std"], prior_range)
    print(f"likelihood of the predictions calibrated on {fitted.examples} validation lenses")
    return fitted


def _simulated_likelihood(run, target, tta, batch_size, calibration, per_mass, verbose):
    """`SimulatedLikelihood` of `run` fitted on the lenses at fixed masses in `calibration`,
    simulated there first (the run's preset, `calibration_masses` of its prior) when the
    path does not exist."""
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.population import SimulatedLikelihood, simulate_calibration_set

    if calibration is None:
        raise ConfigError("--likelihood simulated needs --calibration PATH (lenses at fixed masses; "
                          "simulated there when missing)")
    target = target or run.targets[0]
    path = Path(calibration)
    if not path.exists():
        preset = (run.manifest or {}).get("preset")
        if not preset:
            raise ConfigError(f"--calibration {path}: does not exist, and the run names no preset to simulate it")
        if per_mass < 50:
            raise ConfigError(f"--calibration-per-mass must be at least 50, got {per_mass}")
        if verbose:
            print(f"simulating {per_mass} lenses per mass of preset {preset} into {path} ...")
        simulate_calibration_set(preset, path, per_mass=per_mass, target=target)
    examples = load_examples(str(path), split="test")
    truth = examples.targets.get(target)
    if truth is None:
        raise ConfigError(f"--calibration {path}: has no values of {target}")
    keep = np.isfinite(truth)
    pred = run.predict(examples.images[keep], batch_size=batch_size, tta=tta)[target]
    fitted = SimulatedLikelihood.fit(truth[keep], pred["mean"], pred["std"])
    if verbose:
        print(f"likelihood of the predictions fitted on {int(fitted.counts.sum())} lenses at "
              f"{fitted.masses.size} fixed masses ({fitted.masses[0]:g} .. {fitted.masses[-1]:g})")
    return fitted


def run(args) -> int:
    infer_population_command(
        args.run, args.data, split=args.split, limit=args.limit, target=args.target, tta=args.tta,
        prior_range=args.prior_range, grid=args.grid, batch_size=args.batch_size, out=args.out,
        edge_correction=not args.no_edge_correction, systematic=args.systematic,
        likelihood=args.likelihood, calibration=args.calibration,
        calibration_per_mass=args.calibration_per_mass,
    )
    return 0
