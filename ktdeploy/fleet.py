"""A fleet run's hosts: how each one ended, the summary that names every host that did not
converge with its cause, and the record `ktdeploy provision --retry-failed` reads.

Ansible's own model: a host that fails or cannot be reached drops out of the play and the others
go on (`max_fail_percentage` and `serial` bound that); the hosts that did not make it are written
down so the next run can be limited to them (Ansible's retry files and `--limit @file`). Here the
list lives in the run record (`<run record>/ktdeploy-hosts.json`) and carries over from run to run:
a host stays listed until a run that includes it converges it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ktdeploy import exitcodes
from ktdeploy.connect import HostProblem, problem
from ktdeploy.engine import RunResult, runs_dir

RECORD = "ktdeploy-hosts.json"
FORMAT = 1

OK, FAILED, UNREACHABLE, NOT_RUN = "ok", "failed", "unreachable", "not run"


@dataclass(frozen=True)
class Outcome:
    """How one host of the run ended, and why when not `ok` (one line)."""

    host: str
    state: str  # ok, failed, unreachable, not run
    cause: str = ""
    before_play: bool = False  # stopped by the connection check: nothing ran there


def request_key(inventory: dict | str, target_names: list[str]) -> str:
    """What makes two runs "the same fleet": the inventory file, or the hosts named on the command line."""
    if isinstance(inventory, dict):
        return "hosts:" + ",".join(sorted(target_names))
    return "inventory:" + str(Path(inventory).resolve())


def outcomes(selected: list[str], hostvars: dict[str, dict], checked: list[HostProblem],
             result: RunResult | None) -> dict[str, Outcome]:
    """Every selected host's outcome: the connection check's problems, then the play's result.

    `hostvars` (target name -> Ansible variables) maps the names Ansible reports back to targets
    (Ansible reads a target named HOST:PORT as HOST).
    """
    out: dict[str, Outcome] = {}
    for p in checked:
        name = _target(p.host, selected, hostvars)
        out[name] = Outcome(name, UNREACHABLE, f"{p.cause} (fix: {p.fix})", before_play=True)
    if result is None:
        return {n: out.get(n, Outcome(n, NOT_RUN, "the run stopped before the play")) for n in selected}
    first: dict[str, tuple[str, str, str]] = {}
    for f in result.failures():
        first.setdefault(_target(f.host, selected, hostvars), (f.kind, f.task, f.messages[0] if f.messages else ""))
    stats = {_target(h, selected, hostvars): s for h, s in result.hosts.items()}
    finished = {_target(h, selected, hostvars) for h in result.finished_hosts()}
    for name in selected:
        if name in out:
            continue
        s = stats.get(name)
        kind, task, message = first.get(name, ("", "", ""))
        if s is not None and s.unreachable:
            p = problem(name, message, hostvars)
            out[name] = Outcome(name, UNREACHABLE, f"{task}: {p.cause} (fix: {p.fix})" if task else p.cause)
        elif s is not None and s.failed:
            out[name] = Outcome(name, FAILED, f"{task}: {_first_line(message)}" if task else _first_line(message))
        elif name in finished:
            out[name] = Outcome(name, OK)
        else:
            out[name] = Outcome(name, NOT_RUN, "the play stopped before it got to the end here (more hosts failed "
                                "than --max-fail-percentage allows, or every host of an earlier --serial batch failed)")
    return out


def exit_code(outs: dict[str, Outcome], result: RunResult | None) -> int:
    """The worst across hosts: unreachable, else failed (or not run), else the play's own code."""
    states = {o.state for o in outs.values()}
    if UNREACHABLE in states:
        return exitcodes.UNREACHABLE
    if FAILED in states or NOT_RUN in states:
        return exitcodes.FAILED
    return result.exit_code if result is not None else exitcodes.OK


def summary_lines(outs: dict[str, Outcome]) -> list[str]:
    """`Hosts: N in the run: ...`, then one line per host that did not converge, naming the cause."""
    counts = {s: sum(1 for o in outs.values() if o.state == s) for s in (OK, FAILED, UNREACHABLE, NOT_RUN)}
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    lines = [f"Hosts: {len(outs)} in the run: {', '.join(parts) or 'none'}"]
    width = max((len(o.host) for o in outs.values()), default=0)
    for o in sorted(outs.values(), key=lambda o: o.host):
        if o.state == OK:
            continue
        where = " before the play (nothing ran there)" if o.before_play else ""
        lines.append(f"  {o.host:<{width}}  {o.state}{where}: {o.cause}")
    return lines


def write_record(run_dir: Path, key: str, outs: dict[str, Outcome], *, check: bool = False) -> Path:
    """Record the run's hosts in its run record; `retry` carries over the earlier runs' failures.

    A host listed by the previous record of the same fleet stays listed unless this run included
    it; a host of this run is listed when it did not converge. A --check run changes nothing: the
    list stays as it was.
    """
    previous = latest(key)
    before = previous[1].get("retry", []) if previous else []
    carried = before if check else [h for h in before if h not in outs]  # a dry run converges nothing
    failed = [] if check else sorted(h for h, o in outs.items() if o.state != OK)
    data = {
        "format": FORMAT,
        "key": key,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "check": check,
        "hosts": {h: {k: v for k, v in asdict(o).items() if k != "host"} for h, o in sorted(outs.items())},
        "retry": sorted(set(carried) | set(failed)),
    }
    path = run_dir / RECORD
    tmp = path.with_name(f".{RECORD}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def latest(key: str, base: Path | None = None) -> tuple[Path, dict] | None:
    """The newest host record of this fleet among the kept run records, with its path."""
    base = base or runs_dir()
    found = []
    for path in base.glob(f"*/{RECORD}"):
        try:
            data = json.loads(path.read_text())
            found.append((path.stat().st_mtime, path.parent.name, path, data))
        except (OSError, ValueError):
            continue
    for _, _, path, data in sorted(found, key=lambda f: (f[0], f[1]), reverse=True):
        if data.get("format") == FORMAT and data.get("key") == key:
            return path, data
    return None


def _target(host: str, selected: list[str], hostvars: dict[str, dict]) -> str:
    if host in selected:
        return host
    return next((n for n in selected if str((hostvars.get(n) or {}).get("ansible_host")) == host), host)


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    return lines[0][:300] if lines else "failed"
