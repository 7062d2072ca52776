"""`deeplense calibrate --run RUN [--data PATH] [--split val]`.

Rescales a finished run's predicted standard deviations so that its intervals hold
their nominal share of the validation split (`deeplense_tf.training.calibrate`),
rewrites RUN/model.keras atomically and records the fit in RUN/metrics.json. `deeplense
train` already does this at the end of training; the command is for runs trained
without it. TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN", help="run folder written by `deeplense train`")
    parser.add_argument("--data", metavar="PATH",
                        help="data set to calibrate on (default: the run's training data)")
    parser.add_argument("--split", default="val",
                        help="split of a simulated data directory (default: val; never calibrate on test)")
    parser.add_argument("--limit", type=int, metavar="N", help="use only the first N examples")
    parser.add_argument("--batch-size", type=int, default=256, help="images per prediction batch")


def run(args) -> int:
    from deeplense_tf.training.calibrate import calibrate_run

    calibrate_run(args.run, args.data, split=args.split, limit=args.limit, batch_size=args.batch_size)
    return 0
