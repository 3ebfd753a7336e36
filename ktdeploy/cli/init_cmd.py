"""`ktdeploy init DIR`: write a starter inventory (a copy of the shipped inventory/sample)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from ktdeploy.errors import BadInput, KtdeployError
from ktdeploy.resources import sample_inventory


def copy_sample(dest: Path, sample: Path | None = None) -> list[Path]:
    """Copy the sample inventory into dest; refuses (BadInput) before writing if any file exists."""
    sample = sample or sample_inventory()
    files = sorted(p for p in sample.rglob("*") if p.is_file())
    if not files:
        raise KtdeployError(f"the sample inventory {sample} is missing or empty",
                            hint="reinstall ktdeploy (scripts/setup.sh)")
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"{dest} exists and is not a directory", hint="name a new or existing directory")
    clashes = [dest / f.relative_to(sample) for f in files if (dest / f.relative_to(sample)).exists()]
    if clashes:
        raise BadInput(
            f"{len(clashes)} file(s) already exist in {dest}: {', '.join(str(c) for c in clashes)}",
            hint="pick an empty directory, or move those files away first (nothing was written)",
        )
    written = []
    for f in files:
        target = dest / f.relative_to(sample)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        written.append(target)
    return written


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
