"""`ktdeploy render HOST`: print the units, supervisord programs and environment files the serve
role would write on HOST, rendered locally from the same templates. Secrets are masked."""

from __future__ import annotations

import click


@click.command("render")
@click.argument("host")
@click.option("-i", "--inventory", type=click.Path(), help="Inventory holding HOST (its host and group vars apply).")
@click.option("--profile", help="Apply a profile's settings (e.g. cpu-demo).")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="Set a variable (repeatable), as `ktdeploy provision -e` does.")
@click.option("--manager", type=click.Choice(["systemd", "supervisord"]), help="Render for this service manager.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Write the files under this directory.")
def render(host, inventory, profile, extra, manager, output_dir):
    """Preview the service files for HOST without touching it."""
    from pathlib import Path

    from ktdeploy.profiles import load as load_profile
    from ktdeploy.provisioning import parse_extravars
    from ktdeploy.render import rendered_files
    from ktdeploy.targets import targets_from_inventory
    from ktdeploy.variables import unknown_warnings

    overrides: dict = {}
    if inventory:
        overrides.update(targets_from_inventory(inventory, limit=[host])[0].hostvars)
    if profile:
        overrides.update(load_profile(profile))
    given = parse_extravars(extra)
    for warning in unknown_warnings(given):
        click.echo(warning, err=True)
    overrides.update(given)
    if manager:
        overrides["serve_service_manager"] = manager
    files = rendered_files(host, overrides)
    for path, text in files.items():
        if output_dir:
            dest = Path(output_dir) / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            click.echo(str(dest))
        else:
            click.echo(f"# ==> {path} <==")
            click.echo(text)


COMMANDS = [render]
