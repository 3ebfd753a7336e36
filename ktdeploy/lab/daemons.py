"""Background daemons the lab starts (apt proxy, wheelhouse server), tracked by pid files.

A pid file holds "PID STARTTIME" so a recycled pid is never mistaken for our daemon. Leases
(`leases/<pid>`) mark live processes using the lab; the last one out stops the daemons.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat); None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def running_record(record: str) -> int | None:
    try:
        pid_s, start = record.split()
        pid = int(pid_s)
    except ValueError:
        return None
    return pid if _start_time(pid) == start else None


def record_of(pid: int) -> str:
    return f"{pid} {_start_time(pid)}"


def running(pidfile: Path) -> int | None:
    """Pid of the daemon recorded in pidfile, if it still runs."""
    try:
        return running_record(pidfile.read_text())
    except OSError:
        return None


def start(argv: list[str], pidfile: Path, log: Path, ready: Callable[[], bool], timeout: float = 10) -> int:
    """Start argv detached (own session, survives this process) and wait until ready()."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=out, start_new_session=True)
    pidfile.write_text(record_of(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop(pidfile)
    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"{argv[0]} did not come up (log {log}): " + " | ".join(tail))


def stop(pidfile: Path, timeout: float = 5) -> bool:
    """Stop the daemon recorded in pidfile (TERM, then KILL); True when one was running."""
    pid = running(pidfile)
    pidfile.unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) is None:
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- leases -------------------------------------------------------------------------------------


def take_lease(leases: Path) -> None:
    leases.mkdir(parents=True, exist_ok=True)
    (leases / str(os.getpid())).write_text(record_of(os.getpid()))


def drop_lease(leases: Path) -> None:
    (leases / str(os.getpid())).unlink(missing_ok=True)


def other_live_leases(leases: Path) -> list[int]:
    """Pids of other live processes holding a lease; stale lease files are removed."""
    out = []
    if not leases.is_dir():
        return out
    for f in leases.iterdir():
        try:
            pid = running_record(f.read_text())
        except OSError:
            continue
        if pid is None:
            f.unlink(missing_ok=True)
        elif pid != os.getpid():
            out.append(pid)
    return out
