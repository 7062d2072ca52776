"""`deeplense calibrate --run RUN [--data PATH] [--split val] [--tta]`.

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
    parser.add_argument("--tta", action="store_true",
                        help="fit for TTA deployment: on the mixture of the 8 D4 views (use the run with --tta then)")


def run(args) -> int:
    from deeplense_tf.training.calibrate import calibrate_run

    calibrate_run(args.run, args.data, split=args.split, limit=args.limit, batch_size=args.batch_size,
                  tta=args.tta)
    return 0
