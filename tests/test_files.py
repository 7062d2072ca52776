"""`deeplense_tf.files`: the one copy of atomic writes (every layer writes through it)."""

import json

import numpy as np
import pytest

from deeplense_tf.errors import ConfigError
from deeplense_tf.files import atomic_path, read_yaml, write_json_atomic, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(path, {"mae": np.float32(0.5), "bins": np.arange(2)})
    assert json.loads(path.read_text()) == {"mae": 0.5, "bins": [0, 1]}
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".json"  # writers pick formats by suffix
        tmp.write_text("half a fi")
        raise RuntimeError("killed")
    assert json.loads(path.read_text())["mae"] == 0.5
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_strict_json_and_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "manifest.json", {"x": float("nan")}, allow_nan=False)
    assert not any(tmp_path.iterdir())
    bad = write_text_atomic(tmp_path / "config.yaml", "- a list\n")
    with pytest.raises(ConfigError, match=r"config.yaml: must be a mapping"):
        read_yaml(bad)
