"""`ktdeploy download`: start or resume the model downloads on hosts, optionally wait with a live bar.

The role `model_download` does the work on the host (a detached tmux/screen session per download);
this command fills its items from the catalog, runs it, then reads the host-side JSON status
(`download_state.py --json`), the same data `ktdeploy status` shows.
"""

from __future__ import annotations

import json
import sys
import time
from functools import cache

import click
import yaml

from ktdeploy import downloads, exitcodes
from ktdeploy.errors import BadInput
from ktdeploy.resources import roles_dir
from ktdeploy.targets import Target

ENDPOINT_VARS = {"modelscope": "model_download_modelscope_endpoint", "huggingface": "model_download_hf_endpoint",
                 "mirror": "model_download_mirror_url"}
FINAL_PHASES = ("complete", "failed", "refused", "interrupted", "unknown")
POLL_SECONDS = 2.0


@cache
def role_defaults(role: str) -> dict:
    return yaml.safe_load((roles_dir() / role / "defaults" / "main.yml").read_text()) or {}


def download_extravars(variant_name: str | None, source: str, endpoint: str | None, verify: bool) -> dict:
    """The role computes its items from the plan's variant; --model sets that variant for both.

    The plan's hardware problems (no GPU, little RAM) do not stop a download: the role checks the
    disk against the exact listing itself (plan_force).
    """
    out = {"model_download_source": source, "model_download_rehash": verify, "plan_force": True}
    if variant_name:
        downloads.item_names(variant_name)  # an unknown or packaged variant is bad input before anything runs
        out["plan_model_variant"] = variant_name
    if endpoint:
        out[ENDPOINT_VARS[source]] = endpoint
    return out


def item_names(target: Target, variant_name: str | None) -> list[str]:
    return downloads.item_names(variant_name or target.hostvars.get("plan_model_variant") or None)


def status_command(target: Target, names: list[str]) -> str:
    import shlex

    from ktdeploy import rolevars

    v = rolevars.host_vars(target.name, target.hostvars)  # as the role resolves its defaults for this host
    lib, jobs = str(v["model_download_lib_dir"]), str(v["model_download_jobs_dir"])
    return shlex.join(["python3", f"{lib}/download_state.py", "--json", jobs, *names])


def fetch_status(target: Target, variant_name: str | None) -> list[dict]:
    from ktdeploy import remote

    cmd = status_command(target, item_names(target, variant_name))
    rc, out, err = remote.run_script(target, cmd, sudo=True, timeout=120)
    if rc != 0:
        raise RuntimeError(f"download status failed (rc {rc}): {err.strip() or out.strip()}")
    return json.loads(out)


def poll(targets: list[Target], variant_name: str | None) -> dict[str, list[dict] | str]:
    from ktdeploy import remote

    results = remote.on_hosts(targets, lambda t: fetch_status(t, variant_name))
    return {r.target.name: (r.value if r.ok else r.error) for r in results}


def finished(snapshot: dict) -> bool:
    return all(isinstance(v, str) or all(d["phase"] in FINAL_PHASES and not d["running"] for d in v)
               for v in snapshot.values())


def snapshot_exit_code(snapshot: dict, waited: bool) -> int:
    if any(isinstance(v, str) for v in snapshot.values()):
        return exitcodes.UNREACHABLE
    ok = ("complete",) if waited else ("complete", "planned", "downloading", "verifying")
    if all(d["phase"] in ok for v in snapshot.values() for d in v):
        return exitcodes.OK
    return exitcodes.FAILED


def describe(host: str, d: dict) -> str:
    from ktdeploy.hostside.download_state import fmt_bytes

    parts = [f"{host} {d['name']}: {d['phase']}"]
    if d.get("total_bytes"):
        parts.append(f"{fmt_bytes(d['done_bytes'])} of {fmt_bytes(d['total_bytes'])} ({d['percent']:.1f}%)")
    if d.get("error"):
        parts.append(d["error"])
    return ", ".join(parts)


def wait_with_progress(targets: list[Target], variant_name: str | None, plain: bool) -> dict:
    """Poll until every download has stopped; a rich bar per (host, download) unless plain."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from ktdeploy.hostside.download_state import fmt_bytes

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=False),
               TextColumn("{task.fields[rate]} {task.fields[eta]}")]
    tasks: dict[tuple[str, str], int] = {}
    with Progress(*columns, disable=plain, transient=False) as bar:
        while True:
            snap = poll(targets, variant_name)
            for host, docs in snap.items():
                for d in docs if isinstance(docs, list) else []:
                    key = (host, d["name"])
                    fields = {"rate": f"{fmt_bytes(d['rate_bps'])}/s" if d.get("rate_bps") else "",
                              "eta": f"eta {int(d['eta_s'])}s" if d.get("eta_s") else d["phase"]}
                    if key not in tasks:
                        tasks[key] = bar.add_task(f"{host} {d['name']}", total=d.get("total_bytes"), **fields)
                    bar.update(tasks[key], completed=d.get("done_bytes") or 0, total=d.get("total_bytes"), **fields)
            if finished(snap):
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
              help="ModelScope endpoint, HF_ENDPOINT mirror (e.g. https://hf-mirror.com), or the mirror's URL/path.")
@click.option("--wait", is_flag=True, help="Stay until every download has finished, with a live progress bar.")
@click.option("--verify", is_flag=True, help="Hash every file again, even those already verified.")
@click.option("--json", "as_json", is_flag=True, help="Print the download status as JSON.")
@click.option("--plain", is_flag=True, help="Plain lines instead of live displays.")
def download(hosts, inventory, limit, variant, source, endpoint, wait, verify, as_json, plain):
    """Fetch the GGUF variant and the DeepSeek-R1 config files onto HOST... (or the hosts of -i).

    Each download runs detached on the host (tmux session `ktd-dl-<name>`, owned by the service
    user), so it survives a dropped SSH session; re-running resumes a failed one and skips a
    complete one. Exit codes: 0 ok, 1 a download failed, 2 bad input, 3 a host unreachable.
    """
    if source == "mirror" and not endpoint:
        raise BadInput("--source mirror needs --endpoint", hint="pass the mirror's base URL or an absolute path")
    from ktdeploy import engine
    from ktdeploy.cli.provision_cmd import build_request, check_connections
    from ktdeploy.display import make_display

    extravars = download_extravars(variant, source, endpoint, verify)
    request = build_request(hosts, inventory, limit, (), (), (), False)
    check_connections(request)
    display = make_display(plain=plain, out=sys.stderr if as_json else None)  # stdout holds only the JSON
    try:
        result = engine.run_playbook("site.yml", request.inventory, extravars=extravars, tags=["model_download"],
                                     limit=request.limit, on_event=display.event, on_tick=display.tick)
    except KeyboardInterrupt:
        display.stop()
        raise click.Abort() from None
    display.finish(result)
    if result.exit_code != exitcodes.OK:
        sys.exit(result.exit_code)
    snap = (wait_with_progress(request.targets, variant, plain or as_json) if wait
            else poll(request.targets, variant))
    if as_json:
        click.echo(json.dumps([{"host": h, "downloads": v} if isinstance(v, list) else {"host": h, "error": v}
                               for h, v in snap.items()], indent=1))
    else:
        for host, docs in snap.items():
            for line in [f"{host}: {docs}"] if isinstance(docs, str) else [describe(host, d) for d in docs]:
                click.echo(line)
    sys.exit(snapshot_exit_code(snap, waited=wait))


COMMANDS = [download]
