"""Kernel limits a machine needs to run many lab hosts at once.

Every lab host's systemd (5), systemd-logind, dbus-daemon and getty hold an inotify instance each:
about 8 per host, all counted against root's `fs.inotify.max_user_instances`. The kernel's default,
128, runs out at about 15 hosts machine-wide; the next host's systemd then fails to start ("Failed
to create control group inotify object: Too many open files").
"""

from __future__ import annotations

from pathlib import Path

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
PER_HOST = 8
WANTED = 1024  # about 128 hosts


def ensure_inotify_instances(log=print, path: Path = INOTIFY_INSTANCES, wanted: int = WANTED) -> int | None:
    """Raise the inotify instance limit to `wanted` when it is lower; returns the limit in force."""
    try:
        current = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if current >= wanted:
        return current
    hosts = current // PER_HOST
    try:
        path.write_text(f"{wanted}\n")
    except OSError as exc:
        log(f"lab: fs.inotify.max_user_instances is {current} (about {hosts} lab hosts machine-wide) and "
            f"could not be raised ({exc.strerror or exc}); set it with `sysctl fs.inotify.max_user_instances={wanted}`")
        return current
    log(f"lab: raised fs.inotify.max_user_instances from {current} to {wanted} (each lab host takes about "
        f"{PER_HOST}; {current} allow about {hosts} hosts machine-wide)")
    return wanted
