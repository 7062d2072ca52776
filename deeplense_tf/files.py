"""Small file helpers every layer uses: atomic writes, and reading a JSON or YAML mapping.

The lowest layer (standard library, numpy and PyYAML; no TensorFlow). A file written
here appears complete or not at all: the content goes to a temporary file in the same
folder (same file system, so `os.replace` is an atomic rename) and is renamed over the
destination, so a reader, or a command killed half way, never sees half a file.

    with atomic_path(run_dir / "plots" / "history.png") as tmp:
        fig.savefig(tmp)                       # tmp keeps the suffix (.png, .keras ...)
    write_text_atomic(path, text)
    write_json_atomic(path, {"mae": np.float32(0.1)})    # numpy scalars and arrays allowed
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it goes.

    The temporary name keeps `path`'s suffix, since writers such as `model.save` (.keras)
    and `savefig` (.png) choose the format from it. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (a reader never sees a half-written PNG)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to `path` atomically (flushed to disk before the rename); returns `path`."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def to_json_value(value):
    """`json.dumps` default for numpy values: scalars become Python numbers, arrays lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path, value, *, allow_nan: bool = True) -> Path:
    """Write `value` as indented JSON (numpy values allowed) atomically; returns `path`.

    `allow_nan=False` refuses NaN and infinities (ValueError) for files that other tools
    parse strictly, such as a data set's manifest.
    """
    text = json.dumps(value, indent=2, default=to_json_value, allow_nan=allow_nan) + "\n"
    return write_text_atomic(path, text)


def read_yaml(path) -> dict:
    """Read one YAML mapping; ConfigError naming the file when it is not one."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"config {path}: cannot read it ({err.strerror})") from err
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: not valid YAML ({err})") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path}: must be a mapping of keys, got {type(loaded).__name__}")
    return loaded
