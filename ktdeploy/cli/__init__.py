"""The `ktdeploy` command: a click group; each subcommand lives in its own module here."""

from __future__ import annotations

import importlib

import click

from ktdeploy import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ktdeploy")
def main() -> None:
    """Provision bare Linux GPU servers into DeepSeek-R1 endpoints, and see where they stand."""


# One module per command (or group of commands), each exporting COMMANDS.
_MODULES = (
    "download_cmd",
    "init_cmd",
    "lab_cmd",
    "plan_cmd",
    "provision_cmd",
    "render_cmd",
    "status_cmd",
)


def _register() -> None:
    for name in _MODULES:
        for command in importlib.import_module(f"ktdeploy.cli.{name}").COMMANDS:
            main.add_command(command)


_register()
