"""The `ktdeploy` command: a click group; each subcommand lives in its own module here, imported
only when that command runs (so `ktdeploy status` does not pay for Ansible, rich tables or the lab)."""

from __future__ import annotations

import importlib

import click

from ktdeploy import __version__
from ktdeploy.errors import KtdeployError

# Command name → the module defining it (each module also exports COMMANDS, the list it defines).
_COMMANDS = {
    "bundle": "bundle_cmd",
    "chat": "status_cmd",
    "download": "download_cmd",
    "facts": "plan_cmd",
    "init": "init_cmd",
    "lab": "lab_cmd",
    "logs": "status_cmd",
    "preflight": "plan_cmd",
    "provision": "provision_cmd",
    "remove": "remove_cmd",
    "render": "render_cmd",
    "rollback": "upgrade_cmd",
    "status": "status_cmd",
    "upgrade": "upgrade_cmd",
}


def say(line: str) -> None:
    """A progress or warning line for the user, on stderr (stdout carries results such as --json)."""
    click.echo(line, err=True)


class _ShownError(click.ClickException):
    """A KtdeployError as Click shows errors: `Error: <message>` on stderr, its exit code."""

    def __init__(self, exc: KtdeployError):
        super().__init__(exc.message)
        self.exit_code = exc.exit_code


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KtdeployError as exc:
            raise _ShownError(exc) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in _COMMANDS:
            module = importlib.import_module(f"ktdeploy.cli.{_COMMANDS[name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ktdeploy")
def main() -> None:
    """Provision bare Linux GPU servers into DeepSeek-R1 endpoints, and see where they stand."""
