"""`ktdeploy provision`: check every host can be reached, then converge it with playbooks/site.yml.

The request, its checks and the preflight are `ktdeploy.provisioning`'s; this module reads the
options and shows the run.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click

from ktdeploy import bundle, engine, fleet, provisioning
from ktdeploy.display import make_display
from ktdeploy.cli import say


MODEL_POLL_SECONDS = 3.0
MODEL_REPORT_SECONDS = 30.0



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
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Install from this offline bundle (`ktdeploy bundle create`), served to the hosts over HTTP.")
@click.option("--bundle-address", metavar="ADDR[:PORT]",
              help=f"Where the hosts reach this machine (default: the address it reaches them from; port {bundle.DEFAULT_PORT}).")
@click.option("--plain", is_flag=True, help="Plain lines instead of the live display.")
@click.option("-v", "--verbose", is_flag=True, help="Plain lines list skipped tasks too (else the recap counts them).")
def provision(hosts, inventory, limit, check, only, skip, extra, profile, force, retry_failed, forks, serial,
              max_fail_percentage, bundle_dir, bundle_address, plain, verbose):
    """Converge HOST... (HOST, USER@HOST, USER@HOST:PORT, or `local` for this machine) or the hosts of -i INVENTORY.

    First checks that every host answers over SSH and can use sudo, then plans each host from its
    hardware (`ktdeploy preflight`); then runs playbooks/site.yml. A host that fails the check is
    named and left out; the others go on (none ready, or more than --max-fail-percentage not ready:
    nothing runs). At the end one line names each host that did not converge and why; they are
    recorded so that --retry-failed runs only them. With --bundle DIR the bundle is checked file by
    file first, then served from this machine for the run: apt, pip, the KTransformers source and the
    model come from it alone.
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
    if bundle_address and not bundle_dir:
        raise click.UsageError("--bundle-address goes with --bundle DIR")
    with contextlib.ExitStack() as stack:
        if bundle_dir:
            server = stack.enter_context(serve_bundle(request, bundle_dir, bundle_address, extra))
        selected, hostvars = [t.name for t in request.targets], request.hostvars
        checked = provisioning.check_fleet(request, say, max_fail_percentage)
        provisioning.preflight(request, force, say)
        if serial:
            request.extravars["ktdeploy_serial"] = serial
        if max_fail_percentage is not None:
            request.extravars["ktdeploy_max_fail_percentage"] = max_fail_percentage
        display = make_display(plain=plain, verbose=verbose)
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
        if bundle_dir:
            if "models" in server.manifest.get("contents", {}) and not request.check and \
                    provisioning.runs_role(request, "model_download"):
                wait_for_models(server, request, outcomes)
            say(f"bundle: {server.requests} request(s) served from {bundle_dir}; no longer served")
    record = fleet.write_record(result.artifact_dir, request.key, outcomes, check=request.check)
    if len(selected) > 1 or checked or any(o.state != fleet.OK for o in outcomes.values()):
        for line in fleet.summary_lines(outcomes):
            click.echo(line)
        if any(o.state != fleet.OK for o in outcomes.values()) and not request.check:
            click.echo(f"Once fixed, run the same command with --retry-failed to converge only these "
                       f"(recorded in {record}).")
    sys.exit(fleet.exit_code(outcomes, result))


@contextlib.contextmanager
def serve_bundle(request, bundle_dir: Path, address: str | None, extra: tuple[str, ...]):
    """Check the bundle (exit 2 before anything changes), serve it for the run, point the roles at it."""
    say(f"bundle: checking every file of {bundle_dir} against its manifest...")
    manifest = bundle.verify(bundle_dir)
    given = provisioning.parse_extravars(extra)
    bundle.check_run(manifest, {t.name: bundle.settings(t.hostvars, request.extravars) for t in request.targets}, given)
    host, port = bundle.controller_address(request.targets, address)
    with bundle.Server(bundle_dir, manifest, host, port) as server:
        say(f"bundle: serving {bundle_dir} at {server.url} for this run")
        chosen = set(given) | {k for t in request.targets for k in t.hostvars}
        request.extravars.update(bundle.provision_vars(manifest, bundle_dir, server.url, host, chosen))
        yield server


def wait_for_models(server, request, outcomes: dict) -> None:
    """Serve the bundle until the hosts' model downloads from it have stopped (they run detached);
    a host whose download failed becomes a failed host. Ctrl-C stops serving: a later
    `provision --bundle` resumes the downloads."""
    from ktdeploy import downloads

    variant = server.manifest["contents"]["models"]["variant"]
    targets = [t for t in request.targets if outcomes.get(t.name) and outcomes[t.name].state == fleet.OK]
    say(f"bundle: serving the model to {len(targets)} host(s) until their downloads end (Ctrl-C stops; "
        "a later provision --bundle resumes them)")
    last = 0.0
    try:
        while targets:
            snap = downloads.poll(targets, variant)
            if downloads.finished(snap):
                break
            if time.monotonic() - last >= MODEL_REPORT_SECONDS:
                for host, docs in sorted(snap.items()):
                    for d in docs if isinstance(docs, list) else []:
                        say("bundle: " + downloads.describe(host, d))
                last = time.monotonic()
            time.sleep(MODEL_POLL_SECONDS)
    except KeyboardInterrupt:
        say("bundle: stopped serving; the downloads resume at the next provision --bundle")
        raise click.Abort() from None
    for host, docs in sorted(snap.items() if targets else []):
        bad = [d for d in docs if d["phase"] != "complete"] if isinstance(docs, list) else []
        if isinstance(docs, str) or bad:
            cause = docs if isinstance(docs, str) else "; ".join(downloads.describe(host, d) for d in bad)
            outcomes[host] = fleet.Outcome(host, fleet.FAILED, f"model download from the bundle: {cause}")
        else:
            say(f"bundle: {host}: the model is complete ({', '.join(d['name'] for d in docs)})")


COMMANDS = [provision]
