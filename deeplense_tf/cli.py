"""The `deeplense` command.

Each sub-command lives next to the code it drives, in a module that defines
`add_arguments(parser)` and `run(args) -> int`. This file only wires them up, and
imports a sub-command's module (and so TensorFlow) only when that sub-command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from deeplense_tf import __version__
from deeplense_tf.errors import DeepLenseError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("deeplense_tf.quickstart", "simulate, train, evaluate, export and cluster a small default run"),
    "simulate": ("deeplense_tf.simulation.simulate_cli", "simulate lensing images into TFRecord shards"),
    "merge-data": ("deeplense_tf.simulation.merge_data_cli", "make the slices of a sliced simulation one data set"),
    "train": ("deeplense_tf.training.train_cli", "train a regressor on a data set"),
    "pretrain": ("deeplense_tf.training.pretrain_cli",
                 "self-supervised pretraining of an encoder on unlabelled images (VICReg)"),
    "evaluate": ("deeplense_tf.evaluation.evaluate_cli", "metrics and plots of a run on a data set"),
    "predict": ("deeplense_tf.evaluation.predict_cli", "predictions with uncertainties as CSV or JSON"),
    "calibrate": ("deeplense_tf.evaluation.calibrate_cli", "rescale a run's predicted stds to nominal coverage"),
    "infer-population": ("deeplense_tf.evaluation.infer_population_cli",
                         "combine many lenses' posteriors into one shared axion mass"),
    "tune": ("deeplense_tf.training.tune_cli", "hyperparameter search with KerasTuner"),
    "ensemble": ("deeplense_tf.training.ensemble_cli", "combine trained runs into one ensemble run"),
    "cluster": ("deeplense_tf.clustering.cluster_cli", "cluster intermediate-layer features of a run"),
    "export": ("deeplense_tf.export.export_cli", "export a run as a SavedModel for TF Serving and TFLite"),
    "serve": ("deeplense_tf.serving.serve_cli", "serve exported models with the TF Serving REST/gRPC API"),
}


class _CommandModule:
    """Loads a sub-command's module on first use."""

    def __init__(self, module_name: str):
        self.module_name = module_name
        self._module = None

    @property
    def module(self):
        if self._module is None:
            self._module = importlib.import_module(self.module_name)
        return self._module


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplense",
        description="Learn dark-matter properties from strong gravitational lensing images.",
    )
    parser.add_argument("--version", action="version", version=f"deeplense-tf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the sub-command being run imports its module (TensorFlow import is slow).
        if only is None or only == name:
            _CommandModule(module_name).module.add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(only=chosen if chosen in COMMANDS else "")
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        module = importlib.import_module(args._module)
        return int(module.run(args) or 0)
    except DeepLenseError as err:
        print(f"deeplense {chosen or ''}: error: {err}".replace("  ", " "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deeplense: interrupted; finished work is kept, re-run the same command to resume",
              file=sys.stderr)
        return 130
