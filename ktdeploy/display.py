"""Progress of a playbook run, rendered from ansible-runner events.

`RunState` folds events into what each host is doing now and what failed (a looped task: each
failed item and its cause). Two renderings sit on top: `PlainDisplay` (one line per task result and
host, skipped tasks only counted unless verbose, heartbeat lines during long tasks; for pipes, CI
logs and `--plain`) and `LiveDisplay` (a rich table per host that ticks while a task runs). Both end
with the failures in full and a per-host recap (plain lines with a header row, or a table).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, TextIO

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ktdeploy.engine import Event, RunResult

HEARTBEAT_SECONDS = 30.0
_RESULTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}
_DUMP_FIELDS = ("msg", "rc", "stderr", "stdout", "module_stderr", "module_stdout", "censored")
_DUMP_LINES = 20
_GENERIC_MSGS = ("", "non-zero return code", "MODULE FAILURE", "One or more items failed")


@dataclass
class HostState:
    task: str = ""
    since: float = 0.0  # when the current task started on this host (epoch seconds)
    last_line: float = 0.0  # when the last line about this host was shown (plain mode)
    note: str = ""  # heartbeat detail: "poll 3", "attempt 2 of 5"
    last_result: str = ""
    running: bool = False


@dataclass
class Failure:
    host: str
    task: str
    kind: str  # "failed" or "unreachable"
    details: dict = field(default_factory=dict)
    items: list[tuple[str, dict]] = field(default_factory=list)  # (label, details) of each failed loop item

    def summary(self) -> str:
        if self.items:
            return "; ".join(f"{label}: {cause(details) or 'failed'}" for label, details in self.items)
        return cause(self.details) or self.kind


def cause(details: dict) -> str:
    """One line saying why: the message, or for a command's bare "non-zero return code" its exit
    status and the last line it wrote to stderr."""
    msg = str(details.get("msg") or "").strip()
    lines = str(details.get("stderr") or details.get("module_stderr") or "").strip().splitlines()
    if msg in _GENERIC_MSGS and lines:
        rc = f"exit {details['rc']}: " if details.get("rc") is not None else ""
        return rc + lines[-1].strip()
    return msg.splitlines()[0] if msg else str(details.get("censored") or "")


def _details(res: dict) -> dict:
    return {k: res[k] for k in _DUMP_FIELDS if res.get(k) not in (None, "")}


def _failed_items(res: dict) -> list[tuple[str, dict]]:
    items = []
    for n, r in enumerate(res.get("results") or [], 1):
        if isinstance(r, dict) and r.get("failed"):
            label = r.get("_ansible_item_label", r.get("item", f"item {n}"))
            items.append((label if isinstance(label, str) else json.dumps(label, sort_keys=True), _details(r)))
    return items


class RunState:
    """What every host is doing, folded from events in arrival order."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostState] = {}
        self.failures: list[Failure] = []
        self.play = ""

    def apply(self, event: Event) -> tuple[str, str | None]:
        """Fold one event in; returns (kind, host) where kind is a result, a heartbeat or ""."""
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        when = _created(event)
        if kind == "playbook_on_play_start":
            self.play = data.get("name") or data.get("play") or ""
            return "play", None
        if host is None:
            return "", None
        state = self.hosts.setdefault(host, HostState())
        if kind == "runner_on_start":
            state.task, state.since, state.note, state.running = data.get("task", ""), when, "", True
            return "start", host
        if kind == "runner_on_async_poll":
            state.note = f"poll {_polls(state.note) + 1}"
            return "heartbeat", host
        if kind == "runner_retry":
            res = data.get("res") or {}
            state.note = f"attempt {res.get('attempts', '?')} of {res.get('retries', '?')}"
            return "heartbeat", host
        if kind in _RESULTS:
            result = _RESULTS[kind]
            res = data.get("res") or {}
            if result == "ok" and res.get("changed"):
                result = "changed"
            if result == "failed" and data.get("ignore_errors"):
                result = "ignored"
            elif result in ("failed", "unreachable"):
                details, items = _details(res), _failed_items(res)
                if items and details.get("msg") in _GENERIC_MSGS:
                    details.pop("msg")  # "One or more items failed": the items say what
                self.failures.append(Failure(host, data.get("task", state.task), result, details, items))
            state.task = data.get("task", state.task)
            state.running, state.last_result = False, result
            return result, host
        return "", host


class PlainDisplay:
    """Line-per-result output for pipes and CI logs; heartbeat lines every `heartbeat` seconds."""

    def __init__(self, out: TextIO | None = None, *, heartbeat: float = HEARTBEAT_SECONDS,
                 clock: Callable[[], float] = time.time, verbose: bool = False) -> None:
        self.out = out or sys.stdout
        self.state = RunState()
        self.heartbeat = heartbeat
        self.clock = clock
        self.verbose = verbose  # list skipped tasks too (otherwise only counted)
        self.skips_hidden = 0
        self.console = Console(file=self.out, no_color=True, highlight=False, width=100,
                               force_terminal=False, soft_wrap=True)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def event(self, event: Event) -> None:
        kind, host = self.state.apply(event)
        if kind == "play":
            self.line(f"PLAY {self.state.play}")
        elif host and kind == "skipped" and not self.verbose:
            self.skips_hidden += 1
        elif host and kind in ("ok", "changed", "skipped", "ignored", "failed", "unreachable"):
            state = self.state.hosts[host]
            took = (event.get("event_data") or {}).get("duration")
            text = f"{host}  {kind:<11} {state.task}"
            if took is not None and kind not in ("skipped",):
                text += f" ({_elapsed(took)})"
            if kind in ("failed", "unreachable"):
                text += f": {self.state.failures[-1].summary()}"
            self.line(text)
            state.last_line = _created(event)
        elif host and kind == "heartbeat":
            self._heartbeat(host, _created(event))

    def tick(self) -> None:
        now = self.clock()
        for host, state in self.state.hosts.items():
            if state.running:
                self._heartbeat(host, now)

    def _heartbeat(self, host: str, now: float) -> None:
        state = self.state.hosts[host]
        if now - max(state.last_line, state.since) < self.heartbeat:
            return
        note = f", {state.note}" if state.note else ""
        self.line(f"{host}  {'running':<11} {state.task} ({_elapsed(now - state.since)}{note})")
        state.last_line = now

    def stop(self) -> None:
        pass

    def finish(self, result: RunResult) -> None:
        print_failures(self.console, self.state.failures)
        for line in plain_recap(result, self.skips_hidden):
            self.line(line)


class LiveDisplay:
    """A rich table, one row per host: current task, time in it, heartbeat detail."""

    def __init__(self, console: Console | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.console = console or Console()
        self.state = RunState()
        self.clock = clock
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def event(self, event: Event) -> None:
        kind, host = self.state.apply(event)
        if host and kind in ("failed", "unreachable"):
            failure = self.state.failures[-1]
            self.console.print(f"[red]{host}: {kind}[/red] {failure.task}: {failure.summary()}",
                               markup=True, highlight=False)
        self.live.update(self._table())

    def tick(self) -> None:
        self.live.update(self._table())

    def stop(self) -> None:
        self.live.stop()

    def finish(self, result: RunResult) -> None:
        self.stop()
        print_failures(self.console, self.state.failures)
        print_recap(self.console, result)

    def _table(self) -> Table:
        table = Table(box=box.SIMPLE, title=self.state.play or None, title_justify="left")
        for column in ("host", "state", "task", "elapsed", ""):
            table.add_column(column)
        now = self.clock()
        for host, state in sorted(self.state.hosts.items()):
            if state.running:
                row = ("[cyan]running[/cyan]", _elapsed(now - state.since), state.note)
            else:
                row = (_styled(state.last_result), "", "")
            table.add_row(host, row[0], state.task, row[1], row[2])
        return table


def make_display(plain: bool = False, out: TextIO | None = None, verbose: bool = False):
    """Live when writing to a terminal, plain lines otherwise (or when asked); verbose plain lines
    list skipped tasks too."""
    out = out or sys.stdout
    if plain or not out.isatty():
        return PlainDisplay(out, verbose=verbose)
    return LiveDisplay(Console(file=out))


def print_failures(console: Console, failures: list[Failure]) -> None:
    for failure in failures:
        console.print(f"\n{failure.kind.upper()}: {failure.host}: {failure.task}", style="bold red",
                      markup=False, highlight=False)
        _print_details(console, failure.details, "  ")
        for label, details in failure.items:
            console.print(f"  item {label}:", markup=False, highlight=False)
            _print_details(console, details, "    ")


def _print_details(console: Console, details: dict, indent: str) -> None:
    for key, value in details.items():
        lines = str(value).rstrip().splitlines() or [""]
        if len(lines) > _DUMP_LINES:
            lines = [f"... ({len(lines) - _DUMP_LINES} earlier lines in the run record)"] + lines[-_DUMP_LINES:]
        console.print(f"{indent}{key}: " + f"\n{indent}  ".join(lines), markup=False, highlight=False)


def print_recap(console: Console, result: RunResult) -> None:
    for error in result.errors:
        console.print(error, style="red", markup=False, highlight=False)
    table = Table(box=box.SIMPLE, title="Recap", title_justify="left")
    table.add_column("host")
    for column in RECAP_COLUMNS:
        table.add_column(column, justify="right")
    for host, stats in sorted(result.hosts.items()):
        table.add_row(host, *(str(getattr(stats, c)) for c in RECAP_COLUMNS))
    if result.hosts:
        console.print(table)
    else:
        console.print("Recap: no host ran a task", markup=False, highlight=False)
    console.print(f"Run record: {result.artifact_dir}", markup=False, highlight=False)


RECAP_COLUMNS = ("ok", "changed", "failed", "unreachable", "skipped")


def plain_recap(result: RunResult, skips_hidden: int = 0) -> list[str]:
    """The recap as plain lines: a header row, one row per host, how many skipped tasks went unlisted."""
    lines = list(result.errors)
    if result.hosts:
        width = max(len("host"), *(len(h) for h in result.hosts))
        lines += ["", "Recap", "  ".join(["host".ljust(width), *RECAP_COLUMNS])]
        lines += ["  ".join([host.ljust(width), *(str(getattr(stats, c)).rjust(len(c)) for c in RECAP_COLUMNS)])
                  for host, stats in sorted(result.hosts.items())]
    else:
        lines.append("Recap: no host ran a task")
    if skips_hidden:
        lines.append(f"{skips_hidden} skipped task{'' if skips_hidden == 1 else 's'} not listed (-v lists them)")
    return lines + [f"Run record: {result.artifact_dir}"]


def _styled(result: str) -> str:
    color = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red"}.get(result)
    return f"[{color}]{result}[/{color}]" if color else result


def _created(event: Event) -> float:
    created = event.get("created")
    return datetime.fromisoformat(created).timestamp() if created else time.time()


def _polls(note: str) -> int:
    return int(note.split()[1]) if note.startswith("poll ") else 0


def _elapsed(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
