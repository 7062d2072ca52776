"""`deeplense predict --run RUN [--data PATH]... [INPUT...] [--out FILE.csv|.json] [--format csv|json]`.

Inputs are given with `--data PATH` (repeatable, as in `evaluate`, `cluster` and
`calibrate`) or positionally; rows follow the positional inputs first, then each `--data`
in turn. Each input is a readable data set (simulated data directory, DeepLense `.npy` folder,
`.npz`, `.h5`; see `deeplense_tf.data.load_examples`) or a single image stored as a plain
numeric `.npy` array `[H, W]` or `[H, W, 1]` (never unpickled). Writes one row per image:
`source`, `index` (position within that input), and per target `<target>` (predicted
mean) and, for a Gaussian or Student-t run, `<target>_std`, both in the target's physical
units; a Student-t run adds `<target>_df` (its degrees of freedom; not with --tta, whose
prediction is the mixture of eight views). A classifier (`model.head: softmax`) writes
`class` (the most probable class) and `p_<class>` per class instead.
Without --out the CSV goes to stdout, so the command pipes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplense_tf.data.schema import CLASS_TARGET
from deeplense_tf.errors import ConfigError, DataError
from deeplense_tf.files import write_text_atomic

FORMATS = ("csv", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN", help="run folder written by `deeplense train`")
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT",
        help="data sets (simulated directory, DeepLense .npy folder, .npz, .h5) or single-image "
        ".npy files holding a plain [H, W] or [H, W, 1] array",
    )
    parser.add_argument(
        "--data", action="append", default=[], metavar="PATH",
        help="an input as in the other commands (repeatable; read after the positional inputs)",
    )
    parser.add_argument("--out", metavar="FILE", help="output file, .csv or .json (default: CSV on stdout)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from --out's suffix, else csv)")
    parser.add_argument("--split", default="test", help="split read from simulated data directories (default: test)")
    parser.add_argument("--tta", action="store_true", help="average predictions over the 8 D4 symmetries")
    parser.add_argument("--batch-size", type=int, default=256, help="images per prediction batch")


@dataclass
class _Batch:
    source: str
    images: np.ndarray  # [N, H, W, C] float32


def load_single_image(path) -> np.ndarray:
    """A plain numeric `.npy` image as float32 `[1, H, W, 1]`; DataError naming the file otherwise."""
    path = Path(path)
    from deeplense_tf.data.safe_npy import load_npy

    # Not np.load: it allocates whatever shape the header declares (docs/security.md).
    array = load_npy(path, allow_object=False)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: pixels have dtype {array.dtype}; expected a real number type")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(
            f"{path}: array has shape {array.shape}; a single image must be [H, W] or [H, W, 1]"
        )
    image = array.astype(np.float32)[None, :, :, None]
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: image contains NaN or infinite pixels")
    return image


def read_inputs(inputs, *, split: str = "test") -> list[_Batch]:
    """Read every INPUT (see the module docstring) into image batches, in order."""
    from deeplense_tf.data import load_examples

    batches = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{item}: no such file or directory")
        if path.is_file() and path.suffix.lower() == ".npy":
            batches.append(_Batch(str(item), load_single_image(path)))
            continue
        examples = load_examples(str(item), split=split)
        images = np.asarray(examples.images, dtype=np.float32)
        if images.ndim != 4 or images.shape[0] == 0:
            raise DataError(f"{item}: no images to predict (images have shape {images.shape})")
        if not np.all(np.isfinite(images)):
            bad = np.flatnonzero(~np.isfinite(images).all(axis=(1, 2, 3)))
            raise DataError(f"{item}: {bad.size} images contain NaN or infinite pixels (first: index {bad[0]})")
        batches.append(_Batch(str(item), images))
    return batches


def predict_inputs(run, inputs, *, split: str = "test", tta: bool = False, batch_size: int = 256) -> list[dict]:
    """Predict every image of `inputs` with `run`; one dict per image (see the module docstring)."""
    batches = read_inputs(inputs, split=split)
    expected = tuple(int(d) for d in run.input_shape)
    for batch in batches:
        if tuple(batch.images.shape[1:]) != expected:
            raise DataError(
                f"{batch.source}: images have shape {tuple(batch.images.shape[1:])} but the run expects "
                f"{expected} (H, W, channels)"
            )
    images = np.concatenate([b.images for b in batches], axis=0)
    predictions = run.predict(images, batch_size=batch_size, tta=tta)
    columns, predicted_class = {}, None
    for target in run.targets:
        if "probabilities" in predictions[target]:  # a classifier: its class and probabilities
            names = predictions[target]["class_names"]
            predicted_class = [names[i] for i in predictions[target]["class_id"]]
            for k, name in enumerate(names):
                columns[f"p_{name}"] = predictions[target]["probabilities"][:, k]
            continue
        columns[target] = np.asarray(predictions[target]["mean"], dtype=np.float64).reshape(-1)
        std = predictions[target].get("std")
        if std is not None:
            columns[f"{target}_std"] = np.asarray(std, dtype=np.float64).reshape(-1)
        df = predictions[target].get("df")  # Student-t head, without TTA (one t per image)
        if df is not None:
            columns[f"{target}_df"] = np.asarray(df, dtype=np.float64).reshape(-1)
    if run.head == "full_covariance":  # the correlations the per-target stds leave out
        joint = run.predict_joint(images, batch_size=batch_size, tta=tta)
        correlation = (joint[0] if tta else joint).correlation()  # TTA: of the moment-matched mixture
        for i, first in enumerate(run.targets):
            for j, second in enumerate(run.targets[i + 1 :], start=i + 1):
                columns[f"corr_{first}__{second}"] = correlation[:, i, j]
    rows = []
    for batch in batches:
        for index in range(batch.images.shape[0]):
            position = len(rows)
            row = {"source": batch.source, "index": index}
            if predicted_class is not None:
                row[CLASS_TARGET] = predicted_class[position]
            row.update({name: float(values[position]) for name, values in columns.items()})
            rows.append(row)
    return rows


def _number(value):
    return value if not isinstance(value, float) else float(f"{value:.7g}") if math.isfinite(value) else None


def format_rows(rows: list[dict], fmt: str) -> str:
    """Render prediction rows as CSV (header + one line per image) or a JSON list of objects."""
    if fmt == "json":
        return json.dumps([{k: _number(v) for k, v in row.items()} for row in rows], indent=1) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["source", "index"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.7g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def output_format(out, fmt) -> str:
    if fmt:
        return fmt
    if out is None:
        return "csv"
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ConfigError(f"--out {out}: cannot tell the format from the suffix; use .csv or .json or pass --format")
    return suffix


def input_paths(args) -> list[str]:
    """The inputs of a parsed command line, positional first, then each `--data`."""
    inputs = [*args.inputs, *args.data]
    if not inputs:
        raise ConfigError("no input to predict: give --data PATH (or PATH as a positional argument)")
    return inputs


def run(args) -> int:
    from deeplense_tf.runs import Run

    fmt = output_format(args.out, args.format)
    inputs = input_paths(args)
    model_run = Run.load(args.run)
    rows = predict_inputs(model_run, inputs, split=args.split, tta=args.tta, batch_size=args.batch_size)
    text = format_rows(rows, fmt)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    write_text_atomic(out, text)
    print(f"wrote {out} ({len(rows)} predictions)")
    return 0
