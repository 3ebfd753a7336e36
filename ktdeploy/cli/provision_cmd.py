"""`ktdeploy provision`: check every host can be reached, then converge it with playbooks/site.yml."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click
import yaml

from ktdeploy import connect, engine, profiles, rolevars
from ktdeploy.display import make_display
from ktdeploy.errors import BadInput, Unreachable
from ktdeploy.resources import playbooks_dir
from ktdeploy.cli.plan_cmd import PlanOptions, preflight_or_raise
from ktdeploy.targets import Target, inventory_from_targets, parse_targets, targets_from_inventory


@dataclass
class ProvisionRequest:
    """Everything one provisioning run was asked to do, validated."""

    targets: list[Target]
    inventory: dict | str
    limit: list[str] | None = None
    tags: list[str] = field(default_factory=list)
    skip_tags: list[str] = field(default_factory=list)
    extravars: dict = field(default_factory=dict)
    check: bool = False


def site_role_tags() -> list[str]:
    """The tags given to roles in playbooks/site.yml (what --only and --skip accept)."""
    plays = yaml.safe_load((playbooks_dir() / "site.yml").read_text()) or []
    tags: set[str] = set()
    for play in plays:
        for role in play.get("roles") or []:
            role_tags = role.get("tags", []) if isinstance(role, dict) else []
            tags.update([role_tags] if isinstance(role_tags, str) else role_tags)
    return sorted(tags)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _role_tags(values: tuple[str, ...], option: str) -> list[str]:
    wanted = _split(values)
    valid = site_role_tags()
    unknown = [t for t in wanted if t not in valid]
    if unknown:
        raise BadInput(
            f"{option}: unknown role(s) {', '.join(unknown)}",
            hint=f"use roles from playbooks/site.yml: {', '.join(valid) or '(none defined yet)'}",
        )
    return wanted


def _extravars(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise BadInput(f"-e {pair!r} is not KEY=VALUE", hint="pass variables as -e name=value")
        out[key] = value
    return out


def build_request(hosts, inventory, limit, only, skip, extra, check, profile=None) -> ProvisionRequest:
    if hosts and inventory:
        raise BadInput("give hosts or -i INVENTORY, not both",
                       hint="to pick hosts from an inventory, use -i INVENTORY --limit HOST,...")
    if not hosts and not inventory:
        raise BadInput("no target given", hint="name hosts (HOST, USER@HOST, USER@HOST:PORT) or pass -i INVENTORY")
    wanted = _split(limit) or None
    if inventory:
        targets = targets_from_inventory(inventory, limit=wanted)
        inv: dict | str = str(inventory)
    else:
        targets = parse_targets(list(hosts))
        names = [t.name for t in targets]
        unknown = [n for n in wanted or [] if n not in names]
        if unknown:
            raise BadInput(f"--limit names host(s) not given: {', '.join(unknown)}",
                           hint=f"use one of: {', '.join(names)}")
        # Selected here rather than by Ansible's --limit: names like HOST:PORT are not patterns.
        targets = [t for t in targets if not wanted or t.name in wanted]
        inv, wanted = inventory_from_targets(targets), None
    return ProvisionRequest(
        targets=targets, inventory=inv, limit=wanted,
        tags=_role_tags(only, "--only"), skip_tags=_role_tags(skip, "--skip"),
        extravars={**(profiles.load(profile) if profile else {}), **_extravars(extra)}, check=check,
    )


def _settings(request: ProvisionRequest, target: Target) -> dict:
    """The variables the play will see for this host: its inventory vars, then profile and -e."""
    return {**target.hostvars, **request.extravars}


def plan_options(request: ProvisionRequest, target: Target) -> PlanOptions:
    """The plan role's variables as preflight options, resolved from the role defaults as the role
    resolves them (`ktdeploy.rolevars`): an inventory that sets only base_data_dir moves the model dir too."""
    settings = rolevars.plan_settings(target.name, _settings(request, target))
    settings.pop("force")
    return PlanOptions(**settings)


def preflight(request: ProvisionRequest, force: bool = False) -> None:
    """Plan every host from its live facts; stop before anything changes when a plan cannot work.

    Raises PlanProblem (exit 4) unless forced (--force, or plan_force for that host). The plan role
    at the head of site.yml makes the same plan again on the host, from the same module.
    """
    click.echo(f"Planning {len(request.targets)} host(s) from their hardware...", err=True)
    plans = preflight_or_raise(
        request.targets,
        lambda t: plan_options(request, t),
        force=lambda t: force or rolevars.plan_settings(t.name, _settings(request, t))["force"],
    )
    for name, plan in plans.items():
        for finding in plan.problems:
            click.echo(f"{name}: problem (forced past): {finding.message}", err=True)
        for finding in plan.warnings:
            click.echo(f"{name}: warning: {finding.message}", err=True)
    if force:
        request.extravars["plan_force"] = True


def check_connections(request: ProvisionRequest) -> None:
    click.echo(f"Checking SSH and sudo on {len(request.targets)} host(s)...", err=True)
    hostvars = {t.name: t.ansible_vars() for t in request.targets}
    problems = connect.check_hosts(request.inventory, hostvars, limit=request.limit)
    if problems:
        for problem in problems:
            click.echo(problem.line(), err=True)
        raise Unreachable(f"{len(problems)} of {len(request.targets)} host(s) not ready; nothing was changed")


@click.command("provision", short_help="Check hosts can be reached, then converge them with site.yml.")
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", metavar="INVENTORY", help="Inventory file or directory (see `ktdeploy init`).")
@click.option("--limit", multiple=True, metavar="HOST,...", help="Only these hosts of the targets.")
@click.option("--check", is_flag=True, help="Dry run: report what would change, with diffs; change nothing.")
@click.option("--only", multiple=True, metavar="ROLE,...", help="Run only these roles (tags of site.yml).")
@click.option("--skip", multiple=True, metavar="ROLE,...", help="Skip these roles.")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="Set a variable (repeatable); kept out of the run records.")
@click.option("--profile", metavar="NAME",
              help="Apply a named set of settings (ktdeploy/profiles/NAME.yml), e.g. cpu-demo; -e wins over it.")
@click.option("--force", is_flag=True, help="Go on although preflight finds problems with the plan.")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live display.")
def provision(hosts, inventory, limit, check, only, skip, extra, profile, force, plain):
    """Converge HOST... (HOST, USER@HOST, USER@HOST:PORT, or `local` for this machine) or the hosts of -i INVENTORY.

    First checks that every host answers over SSH and can use sudo, then plans each host from its
    hardware (`ktdeploy preflight`); then runs playbooks/site.yml.
    Exit codes: 0 ok, 1 a task failed, 2 bad input, 3 a host unreachable or without sudo,
    4 the plan has problems (nothing changed; --force goes on).
    """
    request = build_request(hosts, inventory, limit, only, skip, extra, check, profile)
    check_connections(request)
    preflight(request, force)
    display = make_display(plain=plain)
    try:
        result = engine.run_playbook(
            "site.yml", request.inventory, extravars=request.extravars, tags=request.tags,
            skip_tags=request.skip_tags, limit=request.limit, check=request.check, diff=request.check,
            on_event=display.event, on_tick=display.tick,
        )
    except KeyboardInterrupt:
        display.stop()
        raise click.Abort() from None
    display.finish(result)
    sys.exit(result.exit_code)


COMMANDS = [provision]
