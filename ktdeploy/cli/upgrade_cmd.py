"""`ktdeploy upgrade` and `ktdeploy rollback`: gated, host-by-host rollouts of a new release, and the way back.

The playbooks do the work with Ansible's own means (playbooks/upgrade.yml, playbooks/rollback.yml:
serial, max_fail_percentage, retries); the request and its checks are `ktdeploy.provisioning`'s,
the per-host report `ktdeploy.lifecycle`'s.
"""

from __future__ import annotations

import sys

import click

from ktdeploy import engine, lifecycle, provisioning
from ktdeploy.display import make_display
from ktdeploy.cli import say



def _run(playbook: str, request, plain: bool, command: str, rollout_play: int) -> None:
    display = make_display(plain=plain)
    try:
        result = engine.run_playbook(playbook, request.inventory, extravars=request.extravars, limit=request.limit,
                                     on_event=display.event, on_tick=display.tick)
    except KeyboardInterrupt:
        display.stop()
        raise click.Abort() from None
    display.finish(result)
    report = lifecycle.run_report(result.artifact_dir, [t.name for t in request.targets], rollout_play=rollout_play)
    for line in report.lines(command):
        click.echo(f"{command}: {line}")
    sys.exit(result.exit_code)


@click.command("upgrade", short_help="Roll a new release out host by host, each gated on status --deep.")
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", metavar="INVENTORY", help="Inventory file or directory.")
@click.option("--limit", multiple=True, metavar="HOST,...", help="Only these hosts of the targets.")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="Set a variable (repeatable), e.g. a new plan_kt_version; kept out of the run records.")
@click.option("--profile", metavar="NAME", help="Apply a named set of settings (ktdeploy/profiles/NAME.yml); -e wins over it.")
@click.option("--force", is_flag=True, help="Go on although preflight finds problems with the plan.")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live display.")
def upgrade(hosts, inventory, limit, extra, profile, force, plain):
    """Converge HOST... (or the hosts of -i) to a new release: a new KTransformers version or patch
    series, a new model, a new server setting.

    First every host at once: everything up to the engine's build (built only where no wheel is kept
    for the wanted build stamp); nothing that serves is touched, and if any host fails here, no host
    is rolled out. Then one host at a time, in inventory order: install the build, rewrite the service
    files, restart, and wait until `status --deep` says ok. The first host that fails stops the
    rollout: the hosts after it keep their release, and `ktdeploy rollback HOST` takes the failed host
    back to the release kept before. Exit codes: 0 every host upgraded, 1 a host failed,
    2 bad input, 3 a host unreachable, 4 the plan has problems (nothing changed; --force goes on).
    """
    request = provisioning.build_request(hosts, inventory, limit, (), (), extra, False, profile)
    for warning in request.warnings:
        say(warning)
    provisioning.check_connections(request, say)
    provisioning.preflight(request, force, say)
    _run("upgrade.yml", request, plain, "upgrade", rollout_play=1)


@click.command("rollback", short_help="Take hosts back to the release kept before the current one.")
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", metavar="INVENTORY", help="Inventory file or directory.")
@click.option("--limit", multiple=True, metavar="HOST,...", help="Only these hosts of the targets.")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live display.")
def rollback(hosts, inventory, limit, plain):
    """Restore, one host at a time, the release kept before the current one on HOST... (with -i: those
    hosts of the inventory, or all of them): its kept engine wheel (reinstalled when the installed build differs) and its service
    files; then restart the API and wait until `status --deep` says ok.

    A host whose last upgrade stopped part-way goes back to its last recorded release. Run again, a
    rollback changes nothing. Exit codes: 0 ok, 1 a host failed (the run stops there), 2 bad input,
    3 a host unreachable.
    """
    if inventory and hosts:  # HOST... with -i picks hosts of the inventory, as in `ktdeploy status`
        hosts, limit = (), tuple(hosts) + tuple(limit)
    request = provisioning.build_request(hosts, inventory, limit, (), (), (), False)
    provisioning.check_connections(request, say)
    _run("rollback.yml", request, plain, "rollback", rollout_play=0)


COMMANDS = [upgrade, rollback]
