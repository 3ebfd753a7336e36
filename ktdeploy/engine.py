"""The one place that runs Ansible: a thin facade over ansible-runner.

`run_playbook` starts ansible-playbook through `ansible_runner`, hands every event to the caller
(on the calling thread, so displays need no locking), and returns per-host stats.

Secrets stay out of the run records (`~/.cache/ktdeploy/runs/<ident>/`, kept for `ktdeploy logs`):
- extra vars are written to a 0600 file in a private temp dir, passed as `-e @file` and deleted
  after the run, so neither the command line nor `env/extravars` holds them;
- runner's own env files are off (`suppress_env_files`);
- runner records the child's whole environment in `artifacts/<ident>/command`, so the child gets
  only the variables Ansible needs (`_ENV_KEEP`), never the caller's tokens or proxy credentials.
Tasks that handle secrets must still use `no_log: true`: their results are events.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ktdeploy import exitcodes
from ktdeploy.resources import ansible_bin, ansible_cfg, playbooks_dir

KEEP_RUNS = 20
TICK_SECONDS = 0.5
# Of the caller's environment the child keeps only these (runner's and our own settings pass).
_ENV_KEEP = re.compile(r"PATH|HOME|USER|LOGNAME|LANG|LANGUAGE|TZ|TMPDIR|TERM|SSH_AUTH_SOCK|LC_\w+|ANSIBLE_\w+")
_ENV_SECRET = re.compile(r"ANSIBLE_PRIVATE_KEY|\w*(PASS|PASSWORD|PASSPHRASE|TOKEN|SECRET)")

Event = dict
EventHandler = Callable[[Event], None]


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class RunResult:
    """How a playbook run ended: runner status and rc, per-host stats, where its records are."""

    status: str
    rc: int
    artifact_dir: Path
    hosts: dict[str, HostStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def unreachable_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if s.unreachable)

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if s.failed)

    @property
    def exit_code(self) -> int:
        """The worst across hosts: unreachable, else failed, else ok (docs/architecture.md)."""
        if self.unreachable_hosts:
            return exitcodes.UNREACHABLE
        if self.failed_hosts or self.rc != 0 or self.status != "successful":
            return exitcodes.FAILED
        return exitcodes.OK

    def failure_lines(self, limit: int = 2000) -> list[str]:
        """`host: task: message` for each failed task (and failed loop item), read from the run record."""
        return [f"{f.host}: {f.task}: {m[:limit]}" for f in self.failures() for m in f.messages]

    def _events(self):
        for path in sorted((self.artifact_dir / "job_events").glob("*.json"),
                           key=lambda p: int(p.name.split("-", 1)[0]) if p.name[0].isdigit() else 0):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue

    def finished_hosts(self) -> set[str]:
        """Hosts the play went through to the end (failed ones included). Each `serial` batch starts
        with its own play start; a batch that Ansible stopped (max_fail_percentage reached, or no host
        left) ends with "no hosts remaining", and its hosts did not finish."""
        finished: set[str] = set()
        batch: set[str] = set()
        stopped = False
        for event in self._events():
            kind, data = event.get("event"), event.get("event_data") or {}
            if kind == "playbook_on_play_start":
                finished |= set() if stopped else batch
                batch = set()
            elif kind == "playbook_on_no_hosts_remaining":
                stopped = True
            elif kind.startswith("runner_on_") and data.get("host"):
                batch.add(data["host"])
        return finished | (set() if stopped else batch)

    def failures(self) -> list["TaskFailure"]:
        """Each failed (not ignored) or unreachable task result, in the order the run record has them."""
        out = []
        for event in self._events():
            data = event.get("event_data") or {}
            if event.get("event") not in ("runner_on_failed", "runner_on_unreachable") or data.get("ignore_errors"):
                continue
            res = data.get("res") or {}
            msgs = [str(r.get("msg")) for r in res.get("results") or [] if r.get("failed") and r.get("msg")]
            msgs = msgs or [str(res.get("msg") or res.get("stderr") or "failed")]
            kind = "unreachable" if event["event"] == "runner_on_unreachable" else "failed"
            out.append(TaskFailure(str(data.get("host")), str(data.get("task")), kind, msgs))
        return out


@dataclass
class TaskFailure:
    """One failed or unreachable task result of a run: its host, task, kind and messages."""

    host: str
    task: str
    kind: str  # "failed" or "unreachable"
    messages: list[str]


def runs_dir() -> Path:
    override = os.environ.get("KTDEPLOY_RUNS_DIR")
    base = Path(override) if override else Path.home() / ".cache" / "ktdeploy" / "runs"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def playbook_path(playbook: str | Path) -> Path:
    """A shipped playbook by name (`site.yml`), or any path."""
    path = Path(playbook)
    if not path.is_absolute() and not path.exists():
        path = playbooks_dir() / path
    return path.resolve()


def run_playbook(
    playbook: str | Path,
    inventory: dict | str | Path,
    *,
    extravars: dict | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    limit: list[str] | str | None = None,
    check: bool = False,
    diff: bool = False,
    envvars: dict | None = None,
    forks: int | None = None,
    on_event: EventHandler | None = None,
    on_tick: Callable[[], None] | None = None,
    keep: int = KEEP_RUNS,
) -> RunResult:
    """Run one playbook to the end and return its result.

    `inventory` is Ansible inventory data (dict) or a file/directory path. `envvars` are for
    non-secret settings only (they are recorded); secrets go in `extravars`. `forks` is how many
    hosts Ansible works on at once (None: ansible.cfg's). `on_event` gets
    each runner event, `on_tick` is called about twice a second while the run is quiet, both on
    this thread. Ctrl-C cancels the run and re-raises KeyboardInterrupt.
    """
    import ansible_runner.interface

    private = Path(tempfile.mkdtemp(prefix="ktdeploy-run-"))
    run_lock = None
    events: queue.Queue = queue.Queue()
    stats: dict = {}
    errors: list[str] = []
    cancel = threading.Event()

    def handler(event: Event) -> bool:
        if event.get("event") == "playbook_on_stats":
            stats.update(event.get("event_data", {}))
        if event.get("event") in ("verbose", "error") and "ERROR" in event.get("stdout", ""):
            errors.append(event["stdout"].strip())
        events.put(event)
        return True  # keep it on disk: runner drops events a handler does not keep

    try:
        cmdline = _cmdline(private, extravars, check=check, diff=diff)
        runner = ansible_runner.interface.init_runner(
            private_data_dir=str(private),
            artifact_dir=str(runs_dir()),
            ident=_ident(playbook),
            rotate_artifacts=0,  # pruned below, sparing the runs of other ktdeploy processes
            playbook=str(playbook_path(playbook)),
            inventory=inventory if isinstance(inventory, dict) else str(Path(inventory).resolve()),
            tags=",".join(tags) if tags else None,
            skip_tags=",".join(skip_tags) if skip_tags else None,
            limit=",".join(limit) if isinstance(limit, (list, tuple)) else limit,
            cmdline=cmdline,
            forks=forks,
            envvars=_envvars(envvars),
            quiet=True,
            suppress_env_files=True,
            fact_cache_type="ansible.cfg",  # keep ansible.cfg's fact cache, not one per run
            event_handler=handler,
            cancel_callback=cancel.is_set,
        )
        runner.config.env = _child_env(runner.config.env)
        record = Path(runner.config.artifact_dir)
        run_lock = _hold_run_lock(record)
        prune_runs(record.parent, keep)
        thread = threading.Thread(target=runner.run, name="ansible-runner", daemon=True)
        thread.start()
        _pump(thread, events, cancel, on_event, on_tick)
        return RunResult(
            status=runner.status,
            rc=runner.rc if runner.rc is not None else -1,
            artifact_dir=record,
            hosts=_host_stats(stats),
            errors=errors,
        )
    finally:
        if run_lock is not None:
            run_lock.close()
        shutil.rmtree(private, ignore_errors=True)


RUN_LOCK = "ktdeploy-run.lock"


def _hold_run_lock(record: Path):
    """Mark this run's record as in use for as long as the returned file stays open (the kernel
    drops the lock when the process dies, so a killed run's record can be pruned later)."""
    f = open(record / RUN_LOCK, "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _in_use(record: Path) -> bool:
    try:
        with open(record / RUN_LOCK) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file: a record of an older ktdeploy, or gone meanwhile
        return False
    return False


def prune_runs(root: Path, keep: int) -> None:
    """Remove the oldest run records beyond `keep`. Two ktdeploy processes may share the runs
    directory (two terminals, two test lanes): a record still in use by another run is kept, and a
    record another process removed first is no error."""
    if keep < 1:
        return

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    try:
        records = sorted((p for p in root.iterdir() if p.is_dir()), key=mtime)
    except FileNotFoundError:
        return
    for old in records[: max(0, len(records) - keep)]:
        if not _in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def _pump(thread, events: queue.Queue, cancel: threading.Event, on_event, on_tick) -> None:
    try:
        while thread.is_alive() or not events.empty():
            try:
                event = events.get(timeout=TICK_SECONDS)
            except queue.Empty:
                if on_tick:
                    on_tick()
                continue
            if on_event:
                on_event(event)
    except KeyboardInterrupt:
        cancel.set()
        thread.join()
        raise


def _cmdline(private: Path, extravars: dict | None, *, check: bool, diff: bool) -> str | None:
    args = []
    if extravars:
        vars_file = private / "extravars.json"
        fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(extravars, f)
        args += ["-e", f"@{vars_file}"]
    if check:
        args.append("--check")
    if diff:
        args.append("--diff")
    return " ".join(shlex.quote(a) for a in args) or None


def _envvars(extra: dict | None) -> dict:
    bin_dir = str(Path(ansible_bin("ansible-playbook")).parent)
    path = os.environ.get("PATH", "")
    env = {
        "ANSIBLE_CONFIG": str(ansible_cfg()),
        "PATH": path if bin_dir in path.split(os.pathsep) else os.pathsep.join([bin_dir, path]),
        "ANSIBLE_NOCOLOR": "1",  # run records stay readable
    }
    env.update(extra or {})
    return env


def _child_env(env: dict) -> dict:
    def keep(key: str, value: str) -> bool:
        if os.environ.get(key) != value:
            return True  # set by runner or by us
        return bool(_ENV_KEEP.fullmatch(key)) and not _ENV_SECRET.fullmatch(key)

    return {k: v for k, v in env.items() if keep(k, v)}


def _ident(playbook: str | Path) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{stamp}-{Path(playbook).stem}-{secrets.token_hex(2)}"


def _host_stats(stats: dict) -> dict[str, HostStats]:
    keys = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
            "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}
    hosts: dict[str, HostStats] = {}
    for src, dst in keys.items():
        for host, count in (stats.get(src) or {}).items():
            setattr(hosts.setdefault(host, HostStats()), dst, count)
    for host in stats.get("processed") or {}:
        hosts.setdefault(host, HostStats())
    return hosts
