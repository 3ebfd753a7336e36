"""The command table of the lazy `ktdeploy` group."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

from click.testing import CliRunner

import ktdeploy.cli as cli


def command_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(cli.__path__) if m.name.endswith("_cmd")]


def test_every_command_is_in_the_table_under_its_module():
    found = {}
    for name in command_modules():
        for command in importlib.import_module(f"ktdeploy.cli.{name}").COMMANDS:
            found[command.name] = name
    assert found == cli._COMMANDS


def test_help_lists_every_command():
    out = CliRunner().invoke(cli.main, ["--help"]).output
    for name in cli._COMMANDS:
        assert f"\n  {name} " in out


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli.main, ["provison"])
    assert result.exit_code == 2 and "No such command 'provison'" in result.output


def test_status_loads_only_its_own_module():
    code = ("import sys; from ktdeploy.cli import main\n"
            "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('ktdeploy.cli.') or m == 'ansible_runner'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['ktdeploy.cli.status_cmd']"
