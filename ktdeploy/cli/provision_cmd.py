"""`ktdeploy provision`: check every host can be reached, then converge it with playbooks/site.yml.

The request, its checks and the preflight are `ktdeploy.provisioning`'s; this module reads the
options and shows the run.
"""

from __future__ import annotations

import sys

import click

from ktdeploy import engine, provisioning
from ktdeploy.display import make_display


def say(line: str) -> None:
    click.echo(line, err=True)


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
@click.option("-v", "--verbose", is_flag=True, help="Plain lines list skipped tasks too (else the recap counts them).")
def provision(hosts, inventory, limit, check, only, skip, extra, profile, force, plain, verbose):
    """Converge HOST... (HOST, USER@HOST, USER@HOST:PORT, or `local` for this machine) or the hosts of -i INVENTORY.

    First checks that every host answers over SSH and can use sudo, then plans each host from its
    hardware (`ktdeploy preflight`); then runs playbooks/site.yml.
    Exit codes: 0 ok, 1 a task failed, 2 bad input, 3 a host unreachable or without sudo,
    4 the plan has problems (nothing changed; --force goes on).
    """
    request = provisioning.build_request(hosts, inventory, limit, only, skip, extra, check, profile)
    for warning in request.warnings:
        say(warning)
    provisioning.check_connections(request, say)
    provisioning.preflight(request, force, say)
    display = make_display(plain=plain, verbose=verbose)
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
