"""Real ssh into lab hosts with the lab key (the hosts share host keys: never record them)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

COMMON_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]


def ssh_argv(key: Path, address: str, user: str = "deploy", connect_timeout: int = 5) -> list[str]:
    return [
        "ssh", "-i", str(key), *COMMON_OPTS,
        "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={connect_timeout}", f"{user}@{address}",
    ]


def run(key: Path, address: str, cmd: str | list[str], *, user: str = "root", timeout: float = 120,
        check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    """Run cmd (a shell string, or an argv that gets quoted) on the host; output captured as text."""
    if not isinstance(cmd, str):
        cmd = shlex.join(cmd)
    return subprocess.run(
        [*ssh_argv(key, address, user), cmd],
        capture_output=True, text=True, timeout=timeout, check=check, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
