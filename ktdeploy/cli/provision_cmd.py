"""`ktdeploy provision`: check every host can be reached, then converge it with playbooks/site.yml.

The request, its checks and the preflight are `ktdeploy.provisioning`'s; this module reads the
options and shows the run.
"""

from __future__ import annotations

import sys

import click

from ktdeploy import engine, fleet, provisioning
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
@click.option("--retry-failed", is_flag=True,
              help="Only the hosts the last run of the same inventory (or hosts) did not converge.")
@click.option("--forks", type=click.IntRange(min=1), metavar="N",
              help="Hosts Ansible works on at once (default: ansible.cfg's, 20).")
@click.option("--serial", metavar="N|N%", help="Converge the hosts in batches of this size (Ansible's serial).")
@click.option("--max-fail-percentage", type=click.IntRange(0, 100), metavar="P",
              help="Stop every host once more than P%% of them failed or were unreachable (0: any).")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live display.")
def provision(hosts, inventory, limit, check, only, skip, extra, profile, force, retry_failed, forks, serial,
              max_fail_percentage, plain):
    """Converge HOST... (HOST, USER@HOST, USER@HOST:PORT, or `local` for this machine) or the hosts of -i INVENTORY.

    First checks that every host answers over SSH and can use sudo, then plans each host from its
    hardware (`ktdeploy preflight`); then runs playbooks/site.yml. A host that fails the check is
    named and left out; the others go on (none ready, or more than --max-fail-percentage not ready:
    nothing runs). At the end one line names each host that did not converge and why; they are
    recorded so that --retry-failed runs only them.
    Exit codes: 0 ok, 1 a task failed, 2 bad input, 3 a host unreachable or without sudo,
    4 the plan has problems (nothing changed; --force goes on).
    """
    serial = provisioning.serial_value(serial)
    request = provisioning.build_request(hosts, inventory, limit, only, skip, extra, check, profile,
                                         retry_failed=retry_failed)
    for warning in request.warnings:
        say(warning)
    if request.retry_note:
        say(request.retry_note)
    if not request.targets:
        sys.exit(0)
    selected, hostvars = [t.name for t in request.targets], request.hostvars
    checked = provisioning.check_fleet(request, say, max_fail_percentage)
    provisioning.preflight(request, force, say)
    if serial:
        request.extravars["ktdeploy_serial"] = serial
    if max_fail_percentage is not None:
        request.extravars["ktdeploy_max_fail_percentage"] = max_fail_percentage
    display = make_display(plain=plain)
    try:
        result = engine.run_playbook(
            "site.yml", request.inventory, extravars=request.extravars, tags=request.tags,
            skip_tags=request.skip_tags, limit=request.limit, check=request.check, diff=request.check,
            forks=forks, on_event=display.event, on_tick=display.tick,
        )
    except KeyboardInterrupt:
        display.stop()
        raise click.Abort() from None
    display.finish(result)
    outcomes = fleet.outcomes(selected, hostvars, checked, result)
    record = fleet.write_record(result.artifact_dir, request.key, outcomes, check=request.check)
    if len(selected) > 1 or checked or any(o.state != fleet.OK for o in outcomes.values()):
        for line in fleet.summary_lines(outcomes):
            click.echo(line)
        if any(o.state != fleet.OK for o in outcomes.values()) and not request.check:
            click.echo(f"Once fixed, run the same command with --retry-failed to converge only these "
                       f"(recorded in {record}).")
    sys.exit(fleet.exit_code(outcomes, result))


COMMANDS = [provision]
