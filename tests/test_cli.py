"""The `deeplense` command: help for every sub-command, one-line errors."""

import subprocess
import sys

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
