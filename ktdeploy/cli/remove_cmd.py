"""`ktdeploy remove`: stop and remove a deployment from hosts (playbooks/remove.yml), keeping the models."""

from __future__ import annotations

import sys

import click

from ktdeploy import engine, lifecycle, provisioning
from ktdeploy.display import make_display
from ktdeploy.errors import BadInput
from ktdeploy.cli import say



@click.command("remove", short_help="Remove the deployment from hosts (models kept unless --purge-models).")
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", metavar="INVENTORY", help="Inventory file or directory (the one the hosts were provisioned with).")
@click.option("--limit", multiple=True, metavar="HOST,...", help="Only these hosts of the targets.")
@click.option("--purge-models", is_flag=True, help="Also delete the model directory (base_model_dir).")
@click.option("--purge-webui-data", is_flag=True, help="Also delete Open WebUI's data (its accounts and chats).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live display.")
def remove(hosts, inventory, limit, purge_models, purge_webui_data, yes, plain):
    """Stop and remove what ktdeploy put on HOST... (with -i: those hosts of the inventory, or all of
    them): the services (systemd units
    or supervisord programs), their environment and secret files, the helper, the venvs ktdeploy
    created (never an env of the `existing` backend), KTransformers build trees, kept wheels and the
    stamp, download jobs (running ones are stopped), kept releases and stage records.

    The model directory stays unless --purge-models, Open WebUI's data unless --purge-webui-data; the
    service user and the system packages stay. Afterwards `ktdeploy status` says the host is clean and
    names what was kept. Running it again changes nothing. Exit codes: 0 ok, 1 a task failed, 2 bad
    input, 3 a host unreachable.
    """
    if inventory and hosts:  # HOST... with -i picks hosts of the inventory, as in `ktdeploy status`
        hosts, limit = (), tuple(hosts) + tuple(limit)
    request = provisioning.build_request(hosts, inventory, limit, (), (), (), False)
    names = ", ".join(t.name for t in request.targets)
    purged = [what for what, on in (("the models", purge_models), ("Open WebUI's data", purge_webui_data)) if on]
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput("remove deletes the deployment on " + names + " and asks for confirmation first",
                           hint="pass --yes to confirm without a terminal")
        what = f"Remove ktdeploy from {names}" + (f", deleting {' and '.join(purged)}" if purged else " (models kept)")
        click.confirm(what + "?", abort=True, err=True)
    provisioning.check_connections(request, say)
    request.extravars.update(lifecycle.remove_extravars(purge_models, purge_webui_data))
    display = make_display(plain=plain)
    try:
        result = engine.run_playbook("remove.yml", request.inventory, extravars=request.extravars,
                                     limit=request.limit, on_event=display.event, on_tick=display.tick)
    except KeyboardInterrupt:
        display.stop()
        raise click.Abort() from None
    display.finish(result)
    sys.exit(result.exit_code)


COMMANDS = [remove]
