"""Lab hosts: allocate an index, wire its netns, mount its overlay, boot it; and take it down.

Host N lives in `<state>/run/N/` (overlay upper/work dirs, the mounted root, the boot loop's pid
record, its log). Indexes are allocated machine-wide under ALLOC_LOCK: an index is taken when its
netns exists (any state dir) or its run dir exists (this state dir).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ktdeploy.lab import daemons, net, ssh
from ktdeploy.lab.locks import file_lock
from ktdeploy.lab.paths import (
    ALLOC_LOCK,
    MAX_INDEX,
    NETNS_DIR,
    LabPaths,
    host_address,
    host_name,
    netns_name,
)

BOOT_TIMEOUT = 90
NSPAWN_RUN = Path("/run/systemd/nspawn")


class HostError(RuntimeError):
    pass


@dataclass(frozen=True)
class HostState:
    index: int
    running: bool  # its boot loop (nspawn) still runs
    owner: int | None  # pid of the process that owns it (torn down with it); None: kept until `down`


def allocate(used: set[int], lowest: int = 1, highest: int = MAX_INDEX) -> int:
    """The lowest free index."""
    for n in range(lowest, highest + 1):
        if n not in used:
            return n
    raise HostError(f"all {highest} lab host indexes are in use; take some down (`ktdeploy lab list`)")


def check_index(n: int) -> None:
    if not 1 <= n <= MAX_INDEX:
        raise ValueError(f"lab host index {n} out of range 1..{MAX_INDEX}")


def used_indexes(paths: LabPaths) -> set[int]:
    return net.lab_netns_indexes() | set(indexes(paths))


def indexes(paths: LabPaths) -> list[int]:
    """Hosts of this state dir (up, or left half-down by a crash)."""
    if not paths.run.is_dir():
        return []
    return sorted(int(p.name) for p in paths.run.iterdir() if p.name.isdigit())


def reserve(paths: LabPaths, n: int | None, owner: str | None) -> int:
    """Claim index n (or the lowest free one) machine-wide: creates its run dir and netns."""
    with file_lock(ALLOC_LOCK):
        used = used_indexes(paths)
        if n is None:
            n = allocate(used)
        else:
            check_index(n)
            if n in used:
                raise HostError(f"lab host {n} is already up (or left over); `ktdeploy lab down {n}` first")
        d = paths.host_dir(n)
        d.mkdir(parents=True)
        if owner is not None:  # a daemons.record_of() of the owning process
            (d / "owner").write_text(owner)
        try:
            net.create_netns(n)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
    return n


def boot(paths: LabPaths, n: int, golden: Path, timeout: float = BOOT_TIMEOUT, systemd: bool = True) -> None:
    """Wire, mount and boot reserved host n; returns once ssh answers and systemd finished booting.

    systemd=False starts sshd as the container's main process instead: a host with no init system.
    """
    d = paths.host_dir(n)
    net.wire_netns(n)
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(exist_ok=True)
    (d / "golden").write_text(str(golden))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={golden},upperdir={d / 'upper'},workdir={d / 'work'}", str(d / "root")],
        check=True, capture_output=True,
    )
    name = host_name(n)
    (d / "root/etc/hostname").write_text(f"{name}\n")
    (d / "root/etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {name}\n")
    argv = [sys.executable, "-m", "ktdeploy.lab.bootloop", str(d / "root"), name, str(NETNS_DIR / netns_name(n))]
    if not systemd:
        argv.append("--no-systemd")
    with open(d / "nspawn.log", "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=log, start_new_session=True)
    (d / "pid").write_text(daemons.record_of(proc.pid))
    _wait_ready(paths, n, proc, timeout, systemd)


def _wait_ready(paths: LabPaths, n: int, proc: subprocess.Popen, timeout: float, systemd: bool = True) -> None:
    addr = host_address(n)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HostError(f"lab host {n} stopped while booting (exit {proc.returncode}):\n{log_tail(paths, n)}")
        if net.port_open(addr, 22, timeout=0.5):
            left = max(5, int(deadline - time.monotonic()))
            probe = ["timeout", str(left), "systemctl", "is-system-running", "--wait"] if systemd else ["true"]
            try:
                r = ssh.run(paths.key, addr, probe, timeout=left + 10)
            except subprocess.TimeoutExpired:
                break
            state = r.stdout.strip()
            if state in ("running", "degraded") or (not systemd and r.returncode == 0):
                return
            if r.returncode == 255:  # ssh itself failed: sshd not ready yet
                last = r.stderr.strip()
                time.sleep(0.2)
                continue
            raise HostError(f"lab host {n} finished booting in state {state!r}: {r.stderr.strip()}")
        time.sleep(0.1)
    why = f" (last ssh error: {last})" if last else ""
    raise HostError(f"lab host {n} did not answer ssh within {timeout:.0f} s{why}:\n{log_tail(paths, n)}")


def log_tail(paths: LabPaths, n: int, lines: int = 15) -> str:
    try:
        text = (paths.host_dir(n) / "nspawn.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def proc_stats():
    """(proc dir, the fields of its stat after the command name) of every process now running."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            yield p, stat.rsplit(")", 1)[1].split()


def group_members(pgid: int) -> list[int]:
    # fields[0] is the state: a zombie is gone, only not yet reaped
    return [int(p.name) for p, fields in proc_stats() if int(fields[2]) == pgid and fields[0] != "Z"]


def _loop_group(d: Path) -> int | None:
    """The boot loop's process group id, when members still run."""
    try:
        pgid = int((d / "pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pgid if group_members(pgid) else None


def state(paths: LabPaths, n: int) -> HostState:
    d = paths.host_dir(n)
    owner = None
    try:
        owner = int((d / "owner").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return HostState(n, _loop_group(d) is not None, owner)


def owner_record(paths: LabPaths, n: int) -> str | None:
    try:
        return (paths.host_dir(n) / "owner").read_text()
    except OSError:
        return None


def owner_gone(paths: LabPaths, n: int) -> bool:
    record = owner_record(paths, n)
    return record is not None and daemons.running_record(record) is None


def shutdown(paths: LabPaths, n: int, timeout: float = 15) -> None:
    """Power host n off and remove everything it had: processes, mount, run dir, netns, veth."""
    d = paths.host_dir(n)
    if not d.exists() and not net.netns_exists(n):
        raise HostError(f"lab host {n} is not up")
    pgid = _loop_group(d)
    if pgid is not None:
        _stop_group(pgid, timeout)
    root = d / "root"
    if _is_mounted(root):
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)
    net.delete_netns(n)
    for leftover in (NSPAWN_RUN / "propagate" / host_name(n),):
        try:
            leftover.rmdir()
        except OSError:
            pass


def _stop_group(pgid: int, timeout: float) -> None:
    # SIGTERM to systemd-nspawn -b is a clean poweroff of the host
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return
            time.sleep(0.1)
    # our own child stays a zombie until reaped
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)
