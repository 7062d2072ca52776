"""The `deeplense` command: help for every sub-command, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from deeplense_tf.cli import COMMANDS, main


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "deeplense_tf", *args], capture_output=True, text=True, timeout=120
    )


def test_top_level_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    # In-process: one TensorFlow import for all sub-commands instead of one per process.
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"deeplense {name}" in out and "--help" in out


def test_user_error_is_one_line_without_traceback():
    result = _run("simulate", "--preset", "no-such-preset", "--num", "4", "--out", "/tmp/never")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-preset" in lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder `Run.load` accepts (untrained 4-filter CNN on 16x16) and an .npz data set."""
    import json

    import keras
    import numpy as np

    from deeplense_tf.models import build_model

    root = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    target, shape = "log10_m_axion_ev", (16, 16, 1)
    run = root / "run"
    run.mkdir()
    build_model("cnn", shape, [target], width=4, blocks=2, convs_per_block=1).save(run / "model.keras")
    (run / "config.yaml").write_text("seed: 0\nmodel: {name: cnn, head: gaussian}\n")
    (run / "target_stats.json").write_text(json.dumps({target: {"mean": -23.0, "std": 0.58}}))
    (run / "run.json").write_text(json.dumps({
        "format_version": 1, "deeplense_tf": "0.1.0", "model": "cnn", "head": "gaussian",
        "targets": [target], "input_shape": list(shape), "complete": True,
    }))
    rng = np.random.default_rng(0)
    for name, n in (("a", 5), ("b", 3)):
        np.savez(root / f"{name}.npz", images=rng.gamma(2.0, 0.1, (n, *shape)).astype("float32"),
                 **{target: rng.uniform(-24, -22, n).astype("float32")})
    return root


def test_predict_takes_data_like_the_other_commands(tiny_run, tmp_path, capsys):
    run, a, b = str(tiny_run / "run"), str(tiny_run / "a.npz"), str(tiny_run / "b.npz")
    assert main(["predict", "--run", run, a, b, "--format", "json"]) == 0
    positional = capsys.readouterr().out
    assert main(["predict", "--run", run, "--data", a, "--data", b, "--format", "json"]) == 0
    assert capsys.readouterr().out == positional  # same rows, same order
    assert main(["predict", "--run", run, a, "--data", b, "--format", "json"]) == 0
    assert capsys.readouterr().out == positional  # positional first, then --data
    assert main(["predict", "--run", run]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0]


def test_without_tensorflow_the_import_says_how_to_install_it(tmp_path):
    # Only the repository and the standard library on the path: TensorFlow is "not installed".
    import deeplense_tf

    repo = str(Path(deeplense_tf.__file__).parent.parent)
    code = ("import sys\n"
            f"sys.path = [{repo!r}] + [p for p in sys.path if 'site-packages' not in p]\n"
            "import deeplense_tf\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: deeplense-tf needs TensorFlow")
    assert "deeplense-tf[cpu]" in last and "deeplense-tf[gpu]" in last
