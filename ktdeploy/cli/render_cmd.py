"""`ktdeploy render HOST`: print the units, supervisord programs and environment files the serve
role would write on HOST, rendered locally from the same templates. Secrets are masked.

The plan is the one provision would make: from HOST's facts when it answers (one SSH round trip,
the same preflight, the same refusal of plan problems), else the plan's facts-free part, said so."""

from __future__ import annotations

import click


@click.command("render")
@click.argument("host")
@click.option("-i", "--inventory", type=click.Path(), help="Inventory holding HOST (its host and group vars apply).")
@click.option("--profile", help="Apply a profile's settings (e.g. cpu-demo).")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="Set a variable (repeatable), as `ktdeploy provision -e` does.")
@click.option("--manager", type=click.Choice(["systemd", "supervisord"]), help="Render for this service manager.")
@click.option("--offline", is_flag=True, help="Do not contact HOST: preview without its facts (placeholders).")
@click.option("--force", is_flag=True, help="Preview although the plan has problems (as provision --force goes on).")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Write the files under this directory.")
def render(host, inventory, profile, extra, manager, offline, force, output_dir):
    """Preview the service files for HOST without touching it."""
    from pathlib import Path

    from ktdeploy.profiles import load as load_profile
    from ktdeploy.provisioning import parse_extravars
    from ktdeploy.render import rendered_files
    from ktdeploy.targets import parse_target, targets_from_inventory
    from ktdeploy.variables import unknown_warnings

    overrides: dict = {}
    if inventory:
        target = targets_from_inventory(inventory, limit=[host])[0]
        overrides.update(target.hostvars)
    else:
        target = parse_target(host)
    if profile:
        overrides.update(load_profile(profile))
    given = parse_extravars(extra)
    for warning in unknown_warnings(given):
        click.echo(warning, err=True)
    overrides.update(given)
    if manager:
        overrides["serve_service_manager"] = manager
    plan = _offline(target, "--offline") if offline else _host_plan(target, overrides, force)
    files = rendered_files(target.name, overrides, plan=plan)
    for path, text in files.items():
        if output_dir:
            dest = Path(output_dir) / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            click.echo(str(dest))
        else:
            click.echo(f"# ==> {path} <==")
            click.echo(text)


def _host_plan(target, overrides: dict, force: bool) -> dict | None:
    """The plan provision would make for target, or None (said on stderr) when it cannot be made."""
    from ktdeploy import rolevars
    from ktdeploy.preflight import PlanOptions, preflight_or_raise
    from ktdeploy.errors import KtdeployError, PlanProblem

    settings = rolevars.plan_settings(target.name, overrides)
    forced = settings.pop("force") or force
    try:
        plans = preflight_or_raise([target], PlanOptions(**settings), force=forced)
    except PlanProblem:
        raise
    except KtdeployError as exc:
        return _offline(target, exc.message.splitlines()[0])
    plan = plans[target.name]
    for finding in plan.problems:
        click.echo(f"{target.name}: problem (forced past): {finding.message}", err=True)
    for finding in plan.warnings:
        click.echo(f"{target.name}: warning: {finding.message}", err=True)
    return plan.to_dict()


def _offline(target, why: str) -> None:
    """Say that the preview is made without the host's facts (rendered_files then uses preview_plan)."""
    from ktdeploy.render import PLACEHOLDER

    click.echo(f"render: no plan from {target.name}'s facts ({why}); previewing without them: what the plan "
               f"takes from the hardware shows {PLACEHOLDER} and the service manager is systemd "
               "(--manager picks the other)", err=True)
    return None


COMMANDS = [render]
