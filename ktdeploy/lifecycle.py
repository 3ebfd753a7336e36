"""Upgrade, rollback and removal of deployments: what the playbooks were asked and what they did.

`ktdeploy upgrade` runs playbooks/upgrade.yml (every host prepared at once, then one host at a time,
each gated on `status --deep`), `ktdeploy rollback` runs playbooks/rollback.yml, `ktdeploy remove`
runs playbooks/remove.yml. Ansible does the scheduling (serial, max_fail_percentage); this module
reads the run record afterwards and says, host by host, where the rollout left each one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

RECORD_TASK = "Record the release the API runs"
ROLLBACK_TASK = "Restore the release kept before the current one"
GATE_TASK = "Stop unless status --deep says ok"


@dataclass
class HostOutcome:
    """Where one host stands after an upgrade or a rollback."""

    host: str
    state: str  # upgraded | unchanged | rolled-back | failed | failed-prepare | not-reached
    release: str = ""
    previous: str = ""
    detail: str = ""

    def line(self, command: str) -> str:
        h = self.host
        if self.state == "upgraded":
            was = f" (was {self.previous})" if self.previous else ""
            return f"{h}: upgraded to release {self.release}{was}; status --deep ok"
        if self.state == "unchanged":
            again = "already rolled back to" if command == "rollback" else "already on"
            return f"{h}: {again} release {self.release}; status --deep ok"
        if self.state == "rolled-back":
            was = f" (from {self.previous})" if self.previous else ""
            return f"{h}: rolled back to release {self.release}{was}; status --deep ok"
        if self.state == "failed":
            hint = f"; back to the release before: ktdeploy rollback {h}" \
                if command == "upgrade" and "ktdeploy rollback" not in self.detail else ""
            return f"{h}: FAILED{': ' + self.detail if self.detail else ''}{hint}"
        if self.state == "failed-prepare":
            return f"{h}: FAILED while preparing (before any host was rolled out){': ' + self.detail if self.detail else ''}"
        return f"{h}: not reached: keeps its release"


@dataclass
class Report:
    hosts: dict[str, HostOutcome] = field(default_factory=dict)

    def lines(self, command: str) -> list[str]:
        return [o.line(command) for o in self.hosts.values()]


def _events(artifact_dir: Path) -> list[dict]:
    out = []
    for path in (Path(artifact_dir) / "job_events").glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda e: e.get("counter", 0))


def _msg(res: dict) -> str:
    text = str(res.get("msg") or res.get("stderr") or "failed")
    return " ".join(text.split())[:1500]


def report(events: list[dict], hosts: list[str], *, rollout_play: int) -> Report:
    """Each host's outcome from a run's events; `rollout_play` is the index of the serial play."""
    plays: list[str] = []  # play uuids in order: a play with `serial` starts once per batch, one uuid
    seen: dict[str, set[int]] = {}
    failed: dict[str, tuple[int, str]] = {}
    recorded: dict[str, dict] = {}
    rolled: dict[str, dict] = {}
    current = -1
    for event in events:
        kind, data = event.get("event"), event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            # Ansible numbers the batches of a serial play: <uuid>, <uuid>_2, <uuid>_3, ...
            uuid = re.sub(r"_\d+$", "", data.get("play_uuid") or f"play {len(plays)}")
            if uuid not in plays:
                plays.append(uuid)
            current = plays.index(uuid)
            continue
        host = data.get("host")
        if not host or not kind or not kind.startswith("runner_on_"):
            continue
        play = current
        seen.setdefault(host, set()).add(play)
        res = data.get("res") or {}
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failed.setdefault(host, (play, _msg(res)))
            if play == rollout_play:  # the rescue's message says it all: keep the last one
                failed[host] = (play, _msg(res))
        if kind == "runner_on_ok" and play == rollout_play:
            task = data.get("task") or ""
            if task.startswith(RECORD_TASK):
                recorded[host] = res
            elif task.startswith(ROLLBACK_TASK):
                rolled[host] = res
    out = Report()
    for host in hosts:
        if host in failed:
            play, why = failed[host]
            state = "failed" if play >= rollout_play else "failed-prepare"
            out.hosts[host] = HostOutcome(host, state, detail=why)
        elif rollout_play not in seen.get(host, set()):
            out.hosts[host] = HostOutcome(host, "not-reached")
        elif host in rolled:
            r = rolled[host]
            state = "rolled-back" if r.get("changed") else "unchanged"
            out.hosts[host] = HostOutcome(host, state, r.get("release", ""), r.get("rolled_back_from", ""))
        else:
            r = recorded.get(host, {})
            state = "upgraded" if r.get("changed") else "unchanged"
            out.hosts[host] = HostOutcome(host, state, r.get("release", ""), r.get("previous", "") if r.get("changed") else "")
    return out


def run_report(artifact_dir: Path, hosts: list[str], *, rollout_play: int) -> Report:
    return report(_events(artifact_dir), hosts, rollout_play=rollout_play)


def remove_extravars(purge_models: bool, purge_webui_data: bool) -> dict:
    """The remove role's variables for the command's flags (roles/remove/defaults/main.yml)."""
    return {"remove_purge_models": bool(purge_models), "remove_purge_webui_data": bool(purge_webui_data)}
