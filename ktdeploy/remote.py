"""Quick read-only SSH access to targets through Fabric (facts, status, logs).

Provisioning goes through Ansible (ktdeploy.engine); this module is for one batched round trip per
host, hosts in parallel, each host's success or failure kept apart.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from ktdeploy.targets import Target

T = TypeVar("T")


@dataclass
class HostResult:
    """What one host gave back: a value, or the error that kept it from answering."""

    target: Target
    value: object = None
    error: str | None = None
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def connection(target: Target, connect_timeout: float = 10):
    """A Fabric connection honouring the target's Ansible connection variables."""
    from fabric import Config, Connection

    hv = target.hostvars
    kwargs: dict = {"banner_timeout": connect_timeout, "auth_timeout": connect_timeout}
    key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
    if key:
        kwargs["key_filename"] = [str(key)]
    password = hv.get("ansible_password") or hv.get("ansible_ssh_pass")
    if password:
        kwargs["password"] = password
    cfg = Config(overrides={"load_ssh_configs": True, "run": {"hide": True, "warn": True}})
    conn = Connection(
        host=target.host,
        user=target.user or hv.get("ansible_user"),
        port=target.port or hv.get("ansible_port") or 22,
        connect_kwargs=kwargs,
        connect_timeout=connect_timeout,
        config=cfg,
    )
    # Lab hosts share host keys and real hosts may be new to us: like ansible host_key_checking=False.
    conn.client.set_missing_host_key_policy(_accept_policy())
    return conn


def _accept_policy():
    import paramiko

    return paramiko.AutoAddPolicy()


def run_script(
    target: Target, script: str, *, sudo: bool = False, timeout: float = 60, connect_timeout: float = 10
) -> tuple[int, str, str]:
    """Run a shell script on the target in one round trip; returns (rc, stdout, stderr).

    A target with `ansible_connection=local` is this machine: the script runs here, as Ansible would.
    """
    local = target.hostvars.get("ansible_connection") == "local"
    cmd = "bash -c " + shlex.quote(script)
    if sudo and not (local and os.geteuid() == 0):
        cmd = "sudo -n " + cmd
    if local:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout, r.stderr
    with connection(target, connect_timeout=connect_timeout) as conn:
        r = conn.run(cmd, timeout=timeout, in_stream=False)
        return r.exited, r.stdout, r.stderr


def describe_connect_error(exc: BaseException) -> str | None:
    """One line naming why SSH failed, or None when exc is not a connection failure."""
    import paramiko

    if isinstance(exc, paramiko.AuthenticationException):
        return f"SSH authentication failed ({exc}); check the user and key (ansible_user, ansible_ssh_private_key_file)"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError)
    ):
        return "SSH connection refused; is sshd running and is the port right?"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "SSH connection timed out; is the host up and reachable?"
    if isinstance(exc, socket.gaierror):
        return f"host name does not resolve ({exc.strerror})"
    if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
        return f"SSH failed: {exc}"
    return None


def on_hosts(targets: list[Target], fn: Callable[[Target], T], max_workers: int = 64) -> list[HostResult]:
    """Call fn for every target in parallel; one failing host never hides the others.

    One thread per host up to max_workers: the threads mostly wait on the network, and a fleet larger
    than the pool would be probed in waves (each wave as long as one host's round trip).
    """

    def one(t: Target) -> HostResult:
        try:
            return HostResult(t, value=fn(t))
        except Exception as exc:  # each host's failure is reported, never raised across hosts
            why = describe_connect_error(exc)
            if why is not None:
                return HostResult(t, error=why, unreachable=True)
            return HostResult(t, error=f"{type(exc).__name__}: {exc}")

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(targets))) as pool:
        return list(pool.map(one, targets))
