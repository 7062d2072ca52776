"""Every `deeplense` command shown in README.md parses with the real command line.

The commands' behaviour is run by the sub-command tests (and `make quickstart` by
test_quickstart's smoke run); this guards the README against drifting from the CLI.
"""

import re
import shlex
from pathlib import Path

import pytest

from deeplense_tf.cli import COMMANDS, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_commands():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("deeplense ")]


def test_readme_shows_every_subcommand():
    shown = {shlex.split(line)[1] for line in _readme_commands()}
    assert shown == set(COMMANDS)


@pytest.mark.parametrize("line", _readme_commands())
def test_readme_command_parses(line):
    argv = shlex.split(line)[1:]
    args = build_parser(only=argv[0]).parse_args(argv)
    assert args.command == argv[0]
