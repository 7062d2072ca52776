"""`export_run`: a run folder -> a TF Serving model version (+ TFLite files), atomically.

Layout written (docs/architecture.md, "Exported SavedModel"):

    OUT/models.config                      text-format ModelServerConfig for tensorflow/serving
    OUT/batching_parameters.txt            for --enable_batching --batching_parameters_file
    OUT/<name>/<version>/saved_model.pb    signatures serving_default and embed
    OUT/<name>/<version>/variables/
    OUT/<name>/<version>/assets.extra/tf_serving_warmup_requests
    OUT/<name>/<version>/tflite/model_<variant>.tflite      (each requested variant)
    OUT/<name>/<version>/tflite/model_on_device.tflite      (with on_device=True)
    OUT/<name>/<version>/export.json       what was exported, from which run, and how
                                           closely each artefact matches the Keras model

Atomicity: everything is written into a hidden sibling folder `OUT/<name>/.tmp-export-*`
(TF Serving only looks at integer-named folders), checked, and renamed to `<version>`
in one step; any failure removes the hidden folder, so a half-written version is never
visible and nothing is left behind. Only a process killed outright (kill -9, power loss)
leaves its staging folder; its name records the host and process id
(`.tmp-export-<version>-<host>-<pid>-*`), so the next export into the same folder removes
those whose process is gone and reports the ones it cannot judge (another host's, or
named before this scheme). Replacing an existing version (`overwrite=True`)
moves the old folder aside first, so between the two renames the version is briefly
absent, never mixed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from deeplense_tf import __version__
from deeplense_tf.errors import ConfigError, DeepLenseError, ExportError
from deeplense_tf.export import on_device as on_device_lib
from deeplense_tf.export import savedmodel
from deeplense_tf.export import tflite as tflite_lib
from deeplense_tf.export.spec import ExportSpec, keras_reference

REPORT_FILE = "export.json"
TFLITE_DIR = "tflite"
REPORT_FORMAT_VERSION = 1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str) -> str:
    """A model name is one folder name (TF Serving uses it in URLs): letters, digits, _.-"""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '_', '.' and '-' (starting with a letter or digit)"
        )
    return name


def check_version(version) -> int | None:
    if version is None:
        return None
    try:
        value = int(version)
    except (TypeError, ValueError):
        raise ConfigError(f"--version {version!r}: must be a positive integer") from None
    if value < 1 or str(version).strip() not in (str(value), f"+{value}"):
        raise ConfigError(f"--version {version!r}: must be a positive integer")
    return value


def existing_versions(model_dir) -> list[int]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def next_version(model_dir) -> int:
    """One more than the highest integer version folder (1 for none)."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _refuse_existing(final: Path) -> ExportError:
    return ExportError(
        f"{final} already exists; choose another --version, omit it for the next free one, "
        "or pass --overwrite to replace it"
    )


# --- images for calibration and checks ---------------------------------------------------


def _data_source(run, calibration_data):
    if calibration_data is not None:
        path = Path(calibration_data)
        if not path.exists():
            raise ExportError(f"--calibration-data {path}: no such file or folder")
        return path
    path = (run.config.get("data") or {}).get("path")
    if path and Path(path).exists():
        return Path(path)
    return None


def load_images(run, spec: ExportSpec, calibration_data=None, *, calibration_count=100,
                check_count=64, seed=0):
    """Images for int8 calibration and for checking every export against Keras.

    Calibration images come from the training pipeline (`build_dataset` on the train
    split of the run's data, or of `calibration_data`, shuffled with `seed`); check
    images and their targets from the test split (`load_examples`). Without data the
    checks use synthetic positive images and calibration is impossible.

    Returns `(calibration [N, H, W, C] | None, check_images, check_targets | None, source)`.
    """
    from deeplense_tf.data import build_dataset, load_examples

    source = _data_source(run, calibration_data)
    if source is None:
        rng = np.random.default_rng(seed)
        images = rng.gamma(0.5, 1.0, size=(check_count, *spec.input_shape)).astype(np.float32)
        return None, images, None, "synthetic"
    try:
        # A classifier's label is no target of the data: it reads the class labels instead.
        labels = (dict(targets=[], classes=spec.class_names) if spec.head == "softmax"
                  else dict(targets=list(spec.targets)))
        dataset = build_dataset(
            os.fspath(source), "train", batch_size=calibration_count,
            target_stats=dict(spec.target_stats), shuffle=True, seed=seed, cache=False,
            verify=False, **labels,
        )
        calibration = next(iter(dataset.take(1)))[0].numpy()
        try:
            examples = load_examples(os.fspath(source), split="test", limit=check_count)
        except DeepLenseError:  # a source without a test split: check on calibration images
            examples = None
    except DeepLenseError as err:
        raise ExportError(f"calibration data {source}: {err}") from err
    if tuple(calibration.shape[1:]) != tuple(spec.input_shape):
        raise ExportError(
            f"calibration data {source}: images are {list(calibration.shape[1:])}, the model "
            f"takes {list(spec.input_shape)}"
        )
    if examples is None or tuple(examples.images.shape[1:]) != tuple(spec.input_shape):
        return calibration, calibration[:check_count], None, os.fspath(source)
    targets = {t: examples.targets[t] for t in spec.targets if t in examples.targets}
    return calibration, examples.images, targets, os.fspath(source)


# --- the export ---------------------------------------------------------------------------


class _Steps:
    """A tqdm bar over the export's steps (stderr), or nothing."""

    def __init__(self, names, enabled):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(names), desc="export", unit="step", file=sys.stderr,
                            leave=False)

    def __call__(self, name):
        if self.bar is not None:
            if self.bar.n or self.bar.postfix:
                self.bar.update(1)
            self.bar.set_postfix_str(name)

    def close(self):
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def export_run(
    run_dir,
    out_dir,
    name: str = "deeplense",
    version: int | None = None,
    tflite: tuple | list | str = (),
    overwrite: bool = False,
    *,
    on_device: bool = False,
    train_batch_size: int = 16,
    calibration_data=None,
    calibration_count: int = 100,
    check_count: int = 64,
    progress: bool = True,
) -> dict[str, Path]:
    """Export a finished run for TF Serving (and TFLite), atomically; see the module docstring.

    Args:
        run_dir: a run folder (`deeplense train` output).
        out_dir: the serving base folder; the version goes to `out_dir/<name>/<version>`.
        name: model name (folder and TF Serving model name).
        version: integer version; None = one more than the highest existing.
        tflite: variants to convert, from `deeplense_tf.export.tflite.VARIANTS` ("fp32,int8", a sequence or "all").
        overwrite: replace an existing version instead of refusing.
        on_device: also write the on-device fine-tuning model (`export/on_device.py`).
        train_batch_size: the on-device `train` signature's static batch.
        calibration_data: data for int8 calibration and the checks; default the run's
            `data.path`.
        calibration_count: training images used to calibrate int8.
        check_count: test images every export is compared on.
        progress: show a progress bar on stderr.

    Returns:
        `{"version_dir", "saved_model", "report", "models_config", "batching_parameters",
        "tflite_<variant>"..., "on_device"}` -> paths.

    Raises:
        RunError (incomplete / foreign run folder), ConfigError (bad name, version or
        variant), ExportError (existing version without `overwrite`, an unconvertible
        model, a check that failed). Nothing is left in `out_dir` when it raises.
    """
    from deeplense_tf.runs import Run

    variants = tflite_lib.parse_variants(tflite)
    name = check_name(name)
    version = check_version(version)
    out_dir = Path(out_dir)
    model_dir = out_dir / name
    if version is not None and (model_dir / str(version)).exists() and not overwrite:
        raise _refuse_existing(model_dir / str(version))

    run = Run.load(run_dir)
    spec = ExportSpec.from_run(run)
    if on_device and spec.head == "softmax":
        raise ExportError("--on-device fine-tunes a regression head; a classifier (softmax head) "
                          "exports for TF Serving and TFLite only")
    if "int8" in variants and _data_source(run, calibration_data) is None:
        data_path = (run.config.get("data") or {}).get("path")
        raise ExportError(
            f"int8 needs calibration images from the training data, but the run's data.path "
            f"{data_path!r} does not exist here; pass --calibration-data PATH"
        )

    created = [p for p in (model_dir, *model_dir.parents) if not p.exists()][::-1]
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    final = model_dir / str(version)
    clean_stale_staging(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-{_HOST}-{os.getpid()}-",
                                    dir=model_dir))
    # mkdtemp makes the folder private (0700); the published version must be readable by
    # the server's user like any folder made here.
    os.chmod(staging, 0o777 & ~_umask())
    steps = _Steps(
        ["data", "SavedModel", "check SavedModel", *[f"tflite {v}" for v in variants]]
        + (["on-device"] if on_device else []),
        progress,
    )
    try:
        steps("data")
        calibration, images, targets, source = load_images(
            run, spec, calibration_data, calibration_count=calibration_count, check_count=check_count
        )
        reference = keras_reference(run.model, spec, images)
        steps("SavedModel")
        savedmodel.write_saved_model(run.model, spec, staging, model_name=name,
                                     warmup_images=images[:1])
        steps("check SavedModel")
        checks = {"images": int(len(images)), "source": source}
        checks["saved_model"] = savedmodel.verify_saved_model(staging, run.model, spec, images, reference)
        if variants or on_device:
            # TFLite gets float32 compute and unrolled LSTMs; compare it with that model.
            lite_model = tflite_lib.conversion_copy(run.model)
            lite_reference = reference
            if lite_model is not run.model:
                lite_reference = keras_reference(lite_model, spec, images)
                checks["tflite_converted_from"] = (
                    "a float32 copy of the model (float32 compute, recurrent layers unrolled); "
                    "differences are measured against that copy"
                )
        if variants:
            checks["tflite"] = tflite_lib.export_tflite(
                lite_model, spec, staging / TFLITE_DIR, variants,
                calibration_images=calibration, verify_images=images, verify_targets=targets,
                progress=steps,
            )
        if on_device:
            steps("on-device")
            training = run.config.get("training") or {}
            checks["on_device"] = on_device_lib.export_on_device(
                lite_model, spec, staging / TFLITE_DIR, images, lite_reference,
                train_batch_size=train_batch_size,
                point_loss=training.get("point_loss", "huber"),
                huber_delta=float(training.get("huber_delta", 1.0)),
            )
        report = _report(run, spec, name, version, staging, checks)
        (staging / REPORT_FILE).write_text(json.dumps(_relative(report, staging), indent=1) + "\n")
        _publish(staging, final, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: never remove what others wrote
        raise
    finally:
        steps.close()

    paths = {
        "version_dir": final,
        "saved_model": final,
        "report": final / REPORT_FILE,
        "models_config": savedmodel.write_models_config(out_dir),
        "batching_parameters": savedmodel.write_batching_parameters(out_dir),
    }
    for variant in variants:
        paths[f"tflite_{variant}"] = final / TFLITE_DIR / tflite_lib.tflite_filename(variant)
    if on_device:
        paths["on_device"] = final / TFLITE_DIR / on_device_lib.FILENAME
    return paths


STAGING_PREFIX = ".tmp-export-"
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
# .tmp-export-<version>-<host>-<pid>-<mkdtemp suffix>; hosts may contain '-', pids may not.
_STAGING_NAME = re.compile(r"^\.tmp-export-\d+-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists under another user (or cannot tell): keep its folder
    return True


def clean_stale_staging(model_dir, *, report: bool = True) -> dict[str, list[Path]]:
    """Remove the staging folders in `model_dir` whose export was killed; report the others.

    A staging folder is stale when its name says this host made it and that process no
    longer runs. Folders of another host (shared storage) or without that information
    are kept, since a live export may own them, and named on stderr with what to do.
    Returns `{"removed": [...], "kept": [...]}`.
    """
    removed, kept = [], []
    for path in sorted(Path(model_dir).glob(STAGING_PREFIX + "*")):
        match = _STAGING_NAME.match(path.name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
                continue
        kept.append(path)
    if report:
        for path in removed:
            print(f"removed {path}: staging folder of an export that was killed", file=sys.stderr)
        for path in kept:
            match = _STAGING_NAME.match(path.name)
            owner = (f"export process {match['pid']} on {match['host']}" if match
                     else "an export of an earlier version of deeplense-tf")
            print(f"kept {path}: staging folder of {owner}; delete it if that export is no "
                  "longer running", file=sys.stderr)
    return {"removed": removed, "kept": kept}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(staging: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to the version folder (one rename when new)."""
    if not final.exists():
        os.rename(staging, final)
        return
    if not overwrite:
        raise _refuse_existing(final)
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except OSError:
        os.rename(old, final)  # put the previous version back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _relative(value, root: Path):
    """Paths inside the version folder, written relative to it (the folder gets renamed)."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and value.startswith(os.fspath(root) + os.sep):
        return os.path.relpath(value, root)
    return value


def _report(run, spec: ExportSpec, name: str, version: int, staging: Path, checks: dict) -> dict:
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "deeplense_tf": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": name,
        "version": version,
        "run": os.fspath(Path(run.path).resolve()) if run.path else None,
        "model": spec.model_name,
        "head": spec.head,
        "targets": list(spec.targets),
        **({"class_names": list(spec.class_names)} if spec.class_names else {}),
        "input_shape": list(spec.input_shape),
        "target_stats": {t: dict(s) for t, s in spec.target_stats.items()},
        "signatures": savedmodel.signature_summary(staging),
        "checks": checks,
    }
