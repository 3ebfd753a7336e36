"""Quick read-only SSH access to targets through Fabric (facts, status, logs).

Provisioning goes through Ansible (ktdeploy.engine); this module is for one batched round trip per
host, hosts in parallel, each host's success or failure kept apart.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import socket
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from ktdeploy.targets import Target

T = TypeVar("T")

# paramiko logs a failed handshake with its traceback from the transport thread; without a handler
# that lands on stderr. The failure reaches the caller as an exception and is reported from there.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


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


def ssh_port(target: Target) -> int:
    """The port SSH to target uses: the one named with the target, else ansible_port, else 22."""
    return int(target.port or target.hostvars.get("ansible_port") or 22)


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
        port=ssh_port(target),
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
    argv = openssh_argv(target, connect_timeout)
    if argv is None:
        with connection(target, connect_timeout=connect_timeout) as conn:
            r = conn.run(cmd, timeout=timeout, in_stream=False)
            return r.exited, r.stdout, r.stderr
    r = subprocess.run([*argv, cmd], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode == 255 and re.search(_SSH_OWN_FAILURE, r.stderr, re.M):
        raise SshFailure(r.stderr.strip())
    return r.returncode, r.stdout, r.stderr


class SshFailure(OSError):
    """OpenSSH could not connect or log in; the message is its own stderr."""


# ssh's own failures (exit 255), as opposed to a remote command that exited 255.
_SSH_OWN_FAILURE = (r"^ssh: |^kex_exchange_identification|Permission denied \(|Host key verification failed|"
                    r"^Connection (closed|reset|timed out)|^banner exchange|Too many authentication failures")


def openssh_argv(target: Target, connect_timeout: float = 10) -> list[str] | None:
    """The OpenSSH command line for target, or None where Fabric must connect instead (no ssh
    client here, or a password to give). OpenSSH does the handshake in C: on a fleet the controller
    spends a few ms of CPU per host, where paramiko spends about 0.1 s."""
    hv = target.hostvars
    if hv.get("ansible_password") or hv.get("ansible_ssh_pass") or not shutil.which("ssh"):
        return None
    # like ansible's host_key_checking=False and Fabric's accept policy: lab hosts share keys, real
    # hosts may be new to us
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, math.ceil(connect_timeout))}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-p", str(ssh_port(target)),
            # first choice of key exchange: curve25519, as paramiko's. OpenSSH 9's default hybrid
            # (sntrup761) costs ~0.15 CPU-s per connection on each side; the others stay allowed.
            "-o", "KexAlgorithms=^curve25519-sha256"]
    key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
    if key:
        argv += ["-i", str(key)]
    argv += shlex.split(str(hv.get("ansible_ssh_common_args") or ""))
    user = target.user or hv.get("ansible_user")
    if user:
        argv += ["-l", str(user)]
    return argv + ["--", target.host]


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


def not_ssh_reason(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why host:port answers but is no SSH server ("it answered 'HTTP/1.1 400 Bad Request'"), or None
    when it greets as SSH does, cannot be reached, or closes without a word (an sshd may do that too).

    Sends an SSH client's identification line first, as an SSH client does, so that servers which
    wait for the client (HTTP) answer too.
    """
    data = b""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"SSH-2.0-ktdeploy_check\r\n")
            while b"\n" not in data and len(data) < 1024:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
    except (TimeoutError, socket.timeout):
        if not data:
            return f"it sent no SSH greeting within {timeout:g} s"
    except OSError:
        return None
    if not data or data.startswith(b"SSH-"):
        return None
    first = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    first = "".join(c if c.isprintable() else "?" for c in first)[:60]
    return f"it answered {first!r}"


def _ssh_failure(target: Target, exc: BaseException, reason_timeout: float = 3.0) -> str | None:
    """For an SSH handshake that failed: one line naming a port that is not an SSH server, else None.
    For OpenSSH's own failures, its message turned into a cause and fix, as the connection check does."""
    import paramiko

    if isinstance(exc, SshFailure):
        from ktdeploy.connect import explain, not_ssh_problem  # connect builds on this module

        hv = {**target.hostvars, "ansible_host": target.host, "ansible_port": ssh_port(target)}
        cause, fix = not_ssh_problem(str(exc), hv, target.host) or explain(
            str(exc), user=target.user or hv.get("ansible_user"), port=ssh_port(target), host=target.host)
        return f"{cause} (fix: {fix})"
    if isinstance(exc, paramiko.AuthenticationException) or not isinstance(exc, (paramiko.SSHException, EOFError)):
        return None
    port = ssh_port(target)
    reason = not_ssh_reason(target.host, port, timeout=reason_timeout)
    if reason is None:
        return None
    return (f"port {port} on {target.host} answers but is not an SSH server ({reason}); "
            "name the host's SSH port as USER@HOST:PORT, or set ansible_port in the inventory")


def on_hosts(targets: list[Target], fn: Callable[[Target], T], max_workers: int = 64) -> list[HostResult]:
    """Call fn for every target in parallel; one failing host never hides the others.

    One thread per host up to max_workers: the threads mostly wait on the network, and a fleet larger
    than the pool would be probed in waves (each wave as long as one host's round trip).
    """

    def one(t: Target) -> HostResult:
        try:
            return HostResult(t, value=fn(t))
        except Exception as exc:  # each host's failure is reported, never raised across hosts
            why = _ssh_failure(t, exc) or describe_connect_error(exc)
            if why is not None:
                return HostResult(t, error=why, unreachable=True)
            return HostResult(t, error=f"{type(exc).__name__}: {exc}")

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(targets))) as pool:
        return list(pool.map(one, targets))
