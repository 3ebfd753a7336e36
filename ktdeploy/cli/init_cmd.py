"""`ktdeploy init DIR`: write a starter inventory (a copy of the shipped inventory/sample, `ktdeploy.starter`)."""

from __future__ import annotations

from pathlib import Path

import click

from ktdeploy.starter import copy_sample


@click.command("init", short_help="Write a starter inventory into DIRECTORY.")
@click.argument("directory", type=click.Path(path_type=Path))
def init(directory: Path) -> None:
    """Write a starter inventory into DIRECTORY (existing files are never overwritten)."""
    written = copy_sample(directory)
    for path in written:
        click.echo(f"wrote {path}")
    hosts = next((p for p in written if p.parent == directory and p.stem == "hosts"), directory)
    click.echo(
        "\nNext steps:\n"
        f"  1. List your servers in {hosts} (address, SSH user with passwordless sudo).\n"
        f"  2. Review the settings in {directory / 'group_vars'} (each one is documented there).\n"
        f"  3. Rehearse without changing anything:  ktdeploy provision -i {directory} --check\n"
        f"  4. Provision:                           ktdeploy provision -i {directory}"
    )


COMMANDS = [init]
