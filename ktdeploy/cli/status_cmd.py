"""`ktdeploy status`, `ktdeploy logs`, `ktdeploy chat`: how the deployed hosts are doing."""

from __future__ import annotations

import json
import shlex
import sys
import time

import click

from ktdeploy import layout
from ktdeploy import status as st
from ktdeploy.errors import BadInput, KtdeployError
from ktdeploy.targets import Target, parse_targets, targets_from_inventory

_STYLE = {"ok": "green", "degraded": "yellow", "failed": "red", "unreachable": "magenta"}
WATCH_MIN_S, WATCH_MAX_S = 1.0, 3600.0


def _targets(hosts: tuple[str, ...], inventory: str | None) -> list[Target]:
    if inventory:
        return targets_from_inventory(inventory, limit=list(hosts) or None)
    if not hosts:
        raise BadInput("no host given", hint="name hosts (HOST, USER@HOST:PORT) or pass an inventory with -i")
    return parse_targets(list(hosts))


def _one_target(host: str, inventory: str | None) -> Target:
    targets = _targets((host,), inventory)
    return targets[0]


def _table(statuses: list[st.HostStatus], deep: bool):
    from rich.table import Table

    table = Table(show_lines=True)
    for col in ("host", "verdict", "services", "API", "Open WebUI", "download", "stages"):
        table.add_column(col, overflow="fold")
    if deep:
        table.add_column("deep check", overflow="fold")
    for s in statuses:
        verdict = f"[{_STYLE[s.verdict]}]{s.verdict}[/]"
        if s.error:
            table.add_row(s.name, verdict, f"[{_STYLE[s.verdict]}]{s.error}[/]", *[""] * (4 + deep))
            continue
        by = {}
        for c in s.checks:
            by.setdefault(c.name.split(":")[0], []).append(c)
        by["stages"] = by.get("removed", []) + by.get("stages", []) + by.get("release", [])
        row = [s.name, verdict] + [_cell(by.get(k, [])) for k in ("service", "api", "webui", "download", "stages")]
        if deep:
            row.append(_cell(by.get("completion", []) + by.get("stream", [])))
        table.add_row(*row)
    return table


def _cell(checks: list[st.Check]) -> str:
    return "\n".join(f"[{_STYLE[c.level]}]{c.detail}[/]" if c.level != "ok" else c.detail for c in checks) or "-"


@click.command()
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", type=click.Path(), help="Inventory file or directory (HOSTS then limit it).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (docs/status.md) instead of a table.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (exit code of the last round).")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between --watch rounds (1 to 3600).")
@click.option("--deep", is_flag=True, help="Also run a 1-token completion and a short streamed request (TTFT, tok/s).")
@click.option("--model", help="Model id the API must list (default: the one the serving stage recorded).")
@click.option("--connect-timeout", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True,
              help="SSH connect timeout, seconds (more than 0).")
@click.option("--plain", is_flag=True, help="Plain lines, one per check, instead of a table (the default when output is not a terminal).")
@click.option("--metrics-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Also write Prometheus metrics to PATH, atomically, every round (node-exporter textfile collector: *.prom).")
def status(hosts, inventory, as_json, watch, interval, deep, model, connect_timeout, plain, metrics_file):
    """Show how each host is doing: stages, download, services, API readiness, Open WebUI.

    Exit code: 0 all hosts ok, 5 a host is not ready yet (degraded), 1 a host failed,
    3 a host was unreachable; the worst host wins (unreachable > failed > degraded > ok).
    """
    targets = _targets(hosts, inventory)
    if not WATCH_MIN_S <= interval <= WATCH_MAX_S:
        raise BadInput(f"--interval {interval} is out of range", hint="use 1 to 3600 seconds")
    if metrics_file:
        from ktdeploy import metrics

        metrics.check_target(metrics_file)

    def round_once():
        statuses = st.collect(targets, deep=deep, model=model, connect_timeout=connect_timeout)
        doc = st.report(statuses, deep=deep)
        if metrics_file:
            metrics.write_textfile(metrics_file, metrics.render(doc))
        return statuses, doc

    plain = plain or not sys.stdout.isatty()
    if not watch:
        statuses, doc = round_once()
        if as_json:
            click.echo(json.dumps(doc, indent=2))
        elif plain:
            click.echo("\n".join(st.plain_lines(statuses)))
        else:
            from rich.console import Console

            Console().print(_table(statuses, deep))
        sys.exit(doc["exit_code"])
    sys.exit(_watch(round_once, interval, as_json, deep, plain))


def _watch(round_once, interval: float, as_json: bool, deep: bool, plain: bool = False) -> int:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    code = 0
    try:
        if as_json or plain:  # one JSON document per line and round, or the plain lines of each round
            while True:
                statuses, doc = round_once()
                code = doc["exit_code"]
                if as_json:
                    click.echo(json.dumps(doc))
                else:
                    click.echo("\n".join([time.strftime("%H:%M:%S"), *st.plain_lines(statuses)]), nl=True)
                time.sleep(interval)
        with Live(Text("probing…"), console=Console(), auto_refresh=False) as live:
            while True:
                statuses, doc = round_once()
                code = doc["exit_code"]
                stamp = Text(f"{time.strftime('%H:%M:%S')}  every {interval:g} s, Ctrl-C to stop", style="dim")
                live.update(Group(_table(statuses, deep), stamp), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return code


def _pick(probe: dict, service: str | None) -> list[dict]:
    services = probe.get("services") or []
    if service is None:
        return services
    chosen = [s for s in services if service in (s["role"], s["unit"], s["unit"] + ".service")]
    if not chosen:
        names = ", ".join(f"{s['role']} ({s['unit']})" for s in services) or "none"
        raise BadInput(f"no service {service!r} on this host", hint=f"use one of: {names}")
    return chosen


def logs_command(manager: str, services: list[dict], lines: int, follow: bool) -> str:
    """The host-side shell command that prints (or follows) the services' logs."""
    if manager == "systemd":
        units = " ".join(f"-u {shlex.quote(s['unit'])}" for s in services)
        return f"journalctl --no-pager -o short-iso {units} -n {lines}" + (" -f" if follow else "")
    if manager == "supervisord":
        files = " ".join(shlex.quote(s.get("log") or layout.service_log(layout.LOG_DIR, s["unit"])) for s in services)
        return f"tail -n {lines}" + (" -F " if follow else " ") + files
    raise KtdeployError("this host has neither systemd nor supervisord; no service logs to show")


@click.command()
@click.argument("host")
@click.argument("service", required=False)
@click.option("-i", "--inventory", type=click.Path(), help="Inventory that names HOST.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--lines", type=click.IntRange(1, 100000), default=200, show_default=True)
def logs(host, service, inventory, follow, lines):
    """Print the logs of a host's services (SERVICE: api, webui or a unit name; default all).

    systemd hosts: the journal (journalctl -u); supervisord hosts: the programs' log files.
    """
    from ktdeploy.remote import connection

    target = _one_target(host, inventory)
    probe = st.probe_one(target)
    cmd = logs_command(probe.get("manager"), _pick(probe, service), lines, follow)
    with connection(target) as conn:
        try:
            r = conn.run(st.as_root_if_possible(cmd), hide=False, warn=True, pty=follow, in_stream=False)
        except KeyboardInterrupt:
            return
    if follow:  # ended by Ctrl-C (the remote side sees it through the pty)
        return
    if r.exited != 0:
        raise KtdeployError(f"{cmd!r} failed on {target.name} (exit {r.exited})")


@click.command()
@click.argument("host")
@click.argument("prompt")
@click.option("-i", "--inventory", type=click.Path(), help="Inventory that names HOST.")
@click.option("--model", help="Model id (default: the one the API lists).")
@click.option("--max-tokens", type=click.IntRange(1, 100000), default=1024, show_default=True)
@click.option("--api-key", envvar="KTDEPLOY_API_KEY", help="API key if the server wants one (env KTDEPLOY_API_KEY).")
@click.option("--hide-reasoning", is_flag=True, help="Print only the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print {model, reasoning, answer, usage} as JSON (no streaming).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=600.0, show_default=True,
              help="Seconds to wait for the reply (more than 0).")
def chat(host, prompt, inventory, model, max_tokens, api_key, hide_reasoning, as_json, timeout):
    """Send PROMPT to the host's API and print the answer (reasoning apart, on stderr).

    The API binds 127.0.0.1 on the host; ktdeploy reaches it through an SSH port forward (directly
    for a target with a local connection).
    """
    from ktdeploy import chat as ch

    target = _one_target(host, inventory)
    api = ch.ready_api(target, st.probe_one(target), host)
    model = model or ch.default_model(api)
    with ch.open_client(target, api, api_key=api_key, timeout=timeout) as client, ch.api_errors(target.name):
        if as_json:
            click.echo(json.dumps(ch.reply(client, model, prompt, max_tokens)))
        else:
            show_stream(ch.stream_reply(client, model, prompt, max_tokens), hide_reasoning)


def show_stream(parts, hide_reasoning: bool) -> None:
    """Print a streamed reply: the answer on stdout, the reasoning on stderr, dimmed, under [reasoning]."""
    last = None
    for kind, text in parts:
        if kind == "reasoning" and hide_reasoning:
            continue
        if kind != last:
            click.secho(("\n" if last else "") + f"[{kind}]", err=True, dim=True)
            last = kind
        if kind == "answer":
            click.echo(text, nl=False)
        else:
            click.secho(text, err=True, dim=True, nl=False)
    click.echo()


COMMANDS = [status, logs, chat]
