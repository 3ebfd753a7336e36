"""`ktdeploy download`: start or resume the model downloads on hosts, optionally wait with a live bar.

The role `model_download` does the work on the host (a detached tmux/screen session per download);
this command fills its items from the catalog, runs it, then reads the host-side JSON status
(`download_state.py --json`), the same data `ktdeploy status` shows. The rules are
`ktdeploy.downloads`'; the request and its checks `ktdeploy.provisioning`'s.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import click

from ktdeploy import downloads, exitcodes
from ktdeploy.errors import BadInput
from ktdeploy.targets import Target

POLL_SECONDS = 2.0


def wait_with_progress(targets: list[Target], variant_name: str | None, plain: bool) -> dict:
    """Poll until every download has stopped; a rich bar per (host, download) unless plain."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from ktdeploy.hostside.download_state import fmt_bytes

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=False),
               TextColumn("{task.fields[rate]} {task.fields[eta]}")]
    tasks: dict[tuple[str, str], int] = {}
    with Progress(*columns, disable=plain, transient=False) as bar:
        while True:
            snap = downloads.poll(targets, variant_name)
            for host, docs in snap.items():
                for d in docs if isinstance(docs, list) else []:
                    key = (host, d["name"])
                    fields = {"rate": f"{fmt_bytes(d['rate_bps'])}/s" if d.get("rate_bps") else "",
                              "eta": f"eta {int(d['eta_s'])}s" if d.get("eta_s") else d["phase"]}
                    if key not in tasks:
                        tasks[key] = bar.add_task(f"{host} {d['name']}", total=d.get("total_bytes"), **fields)
                    bar.update(tasks[key], completed=d.get("done_bytes") or 0, total=d.get("total_bytes"), **fields)
            if downloads.finished(snap):
                return snap
            time.sleep(POLL_SECONDS)


@click.command("download", short_help="Start or resume the model downloads (resumable, verified).")
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", metavar="INVENTORY", help="Inventory file or directory.")
@click.option("--limit", multiple=True, metavar="HOST,...", help="Only these hosts of the targets.")
@click.option("--model", "variant", metavar="VARIANT", help="GGUF variant from the catalog (default: the catalog's).")
@click.option("--source", type=click.Choice(downloads.SOURCES), default="modelscope", show_default=True,
              help="Where the files come from.")
@click.option("--endpoint", metavar="URL|PATH",
              help="ModelScope endpoint, HF_ENDPOINT mirror (e.g. https://hf-mirror.com), or the mirror's URL "
                   "or absolute path on the host; an http(s) URL with a host.")
@click.option("--wait", is_flag=True, help="Stay until every download has finished, with a live progress bar.")
@click.option("--verify", is_flag=True, help="Hash every file again, even those already verified.")
@click.option("--fan-out", "fan_out", is_flag=True,
              help="Fetch from the source on one host (the seed) only; the others fetch from it. Waits for both.")
@click.option("--seed", metavar="HOST", help="The host that fetches from the source (default: the first).")
@click.option("--peer-address", metavar="ADDR[:PORT]", help="The seed's address as the other hosts reach it "
              "(default: its inventory address; port model_download_peer_port, 8766).")
@click.option("--peer-relay", metavar="ADDR[:PORT]", help="The hosts reach only this machine: relay ADDR[:PORT] "
              "of this machine to the seed's server over SSH for the run.")
@click.option("--controller-seed", "controller_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="With --fan-out: this machine is the seed; it downloads into DIR once and serves every host "
                   "(at --peer-address ADDR[:PORT], default the address it reaches them from, port 8766).")
@click.option("--json", "as_json", is_flag=True, help="Print the download status as JSON.")
@click.option("--plain", is_flag=True, help="Plain lines instead of live displays.")
@click.option("-v", "--verbose", is_flag=True, help="Plain lines list skipped tasks too (else the recap counts them).")
def download(hosts, inventory, limit, variant, source, endpoint, wait, verify, fan_out, seed, peer_address,
             peer_relay, controller_dir, as_json, plain, verbose):
    """Fetch the GGUF variant and the DeepSeek-R1 config files onto HOST... (or the hosts of -i).

    Each download runs detached on the host (tmux session `ktd-dl-<name>`, owned by the service
    user), so it survives a dropped SSH session; re-running resumes a failed one and skips a
    complete one. With --fan-out only the seed fetches from the source; when it is done it serves
    its verified files, the other hosts fetch them from it (sha256-checked, resumable), then its
    server stops. Exit codes: 0 ok, 1 a download failed, 2 bad input, 3 a host unreachable.
    """
    if source == "mirror" and not endpoint:
        raise BadInput("--source mirror needs --endpoint", hint="pass the mirror's base URL or an absolute path")
    if (seed or peer_address or peer_relay or controller_dir) and not fan_out:
        raise click.UsageError("--seed, --peer-address, --peer-relay and --controller-seed go with --fan-out")
    from ktdeploy import engine, fanout, provisioning
    from ktdeploy.display import make_display

    extravars = downloads.download_extravars(variant, source, endpoint, verify)
    request = provisioning.build_request(hosts, inventory, limit, (), (), (), False)
    provisioning.check_connections(request, lambda line: click.echo(line, err=True))
    display = make_display(plain=plain, out=sys.stderr if as_json else None, verbose=verbose)  # stdout holds only the JSON
    with contextlib.ExitStack() as stack:  # the relay or this machine's server, for the run
        if fan_out:
            fanout.prepare(stack, request.targets, extravars, variant=variant, source=source, endpoint=endpoint,
                           verify=verify, seed=seed, peer_address=peer_address, peer_relay=peer_relay,
                           controller_dir=controller_dir, say=lambda line: click.echo(line, err=True))
            wait = True  # a host seed: the play waits for it, then for the others; this machine: we wait
        try:
            result = engine.run_playbook("site.yml", request.inventory, extravars=extravars, tags=["model_download"],
                                         limit=request.limit, on_event=display.event, on_tick=display.tick)
        except KeyboardInterrupt:
            display.stop()
            raise click.Abort() from None
        display.finish(result)
        failed = result.exit_code != exitcodes.OK
        snap = (wait_with_progress(request.targets, variant, plain or as_json) if wait and not failed
                else downloads.poll(request.targets, variant))  # after a failed play: what the host has
    play_errors = {t.name: "\n".join(ln for ln in result.failure_lines() if ln.startswith(f"{t.name}: "))
                   for t in request.targets} if failed else {}
    if as_json:
        click.echo(json.dumps(downloads.report(snap, play_errors), indent=1))
    else:
        for host, docs in snap.items():
            if isinstance(docs, str) and play_errors.get(host):
                continue  # the recap above shows why
            for line in [f"{host}: {docs}"] if isinstance(docs, str) else [downloads.describe(host, d) for d in docs]:
                click.echo(line)
    sys.exit(result.exit_code if failed else downloads.snapshot_exit_code(snap, waited=wait))


COMMANDS = [download]
