"""Before provisioning: can every host be reached over SSH and become root without a prompt?

`check_hosts` runs the shipped `playbooks/connect-check.yml` through the engine and turns each
host's failure into one line naming the cause and the fix (`explain` holds the wording).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ktdeploy import engine, remote
from ktdeploy.errors import KtdeployError

CONNECT_TIMEOUT_S = 10

# (pattern in Ansible's message, cause, fix); first match wins. {user}/{port}/{host} are filled in.
_CAUSES = [
    (r"Connection refused", "SSH refused the connection on port {port}",
     "start sshd on the host, or name the right port as USER@HOST:PORT"),
    (r"timed out|Operation timed out", "SSH connection timed out",
     "check that the host is up and the address is right; a firewall may drop port {port}"),
    (r"No route to host|Network is unreachable", "no network route to the host",
     "check that the host is up and the address is right"),
    (r"Could not resolve hostname|Name or service not known|Temporary failure in name resolution",
     "the host name does not resolve", "use an IP address, or fix DNS or /etc/hosts"),
    (r"Permission denied \(|Authentication failed|Too many authentication failures",
     "SSH login as {user} was refused (authentication failed)",
     "install your public key for {user} (ssh-copy-id {user}@{host}), or set "
     "ansible_ssh_private_key_file in the inventory"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "the host's SSH key does not match the known one",
     "remove the old key with ssh-keygen -R {host} if the host was reinstalled"),
    (r"Connection (reset|closed) by|kex_exchange_identification",
     "the host closed the SSH connection", "check sshd on the host (its logs, MaxStartups, AllowUsers)"),
    (r"password is required|Missing sudo password|incorrect password|Incorrect sudo password",
     "{user} cannot use sudo without a password",
     "grant passwordless sudo ('{user} ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/{user}), "
     "connect as root, or set ansible_become_password in the inventory (vault)"),
    (r"not in the sudoers|is not allowed to (execute|run)|may not run sudo",
     "{user} may not use sudo", "add {user} to the sudoers (sudo group or /etc/sudoers.d/{user})"),
    (r"sudo: (command )?not found|sudo: not found", "sudo is not installed on the host",
     "install sudo on the host (apt-get install sudo), or connect as root"),
    (r"python3?[^\n]*(not found|No such file)|interpreter discovery", "Python 3 is missing on the host",
     "install python3 on the host (apt-get install python3)"),
]


# ssh's words when the port answered but no SSH greeting came (a closed, reset or silent handshake).
_NO_GREETING = r"kex_exchange_identification|banner exchange|Connection (reset|closed) by"
_PROXY = re.compile(r"Proxy(Command|Jump)|-J\b", re.I)


def not_ssh_problem(message: str, hv: dict, host: str) -> tuple[str, str] | None:
    """(cause, fix) when ssh failed at the greeting because the port is no SSH server, else None.

    ssh cannot tell that apart from an sshd that drops the connection, so the port is asked
    directly, as an SSH client would (not through a proxy: then the port is not ours to ask).
    """
    if not re.search(_NO_GREETING, message, re.I):
        return None
    if any(_PROXY.search(str(hv.get(k) or "")) for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args")):
        return None
    address, port = str(hv.get("ansible_host", host)), int(hv.get("ansible_port") or 22)
    reason = remote.not_ssh_reason(address, port)
    if reason is None:
        return None
    return (f"port {port} on {address} answers but is not an SSH server ({reason})",
            "name the host's SSH port as USER@HOST:PORT, or set ansible_port in the inventory")


@dataclass(frozen=True)
class HostProblem:
    host: str
    cause: str
    fix: str

    def line(self) -> str:
        return f"{self.host}: {self.cause} (fix: {self.fix})"


def explain(message: str, *, user: str | None = None, port: int | None = None,
            host: str | None = None) -> tuple[str, str]:
    """The cause and fix for one of Ansible's connection or become failure messages."""
    values = {"user": user or "the SSH user", "port": port or 22, "host": host or "HOST"}
    for pattern, cause, fix in _CAUSES:
        if re.search(pattern, message, re.I):
            return cause.format(**values), fix.format(**values)
    first = next((ln.strip() for ln in message.splitlines() if ln.strip()), "unknown error")
    return first, "run `ktdeploy provision` with the same target again after fixing this"


def check_hosts(inventory: dict | str, hostvars: dict[str, dict], *, limit: list[str] | None = None,
                on_event=None) -> list[HostProblem]:
    """Run the connection check; one HostProblem per host that is not ready (empty if all are).

    `hostvars` maps each host to its Ansible variables (to name the user and port in messages).
    """
    messages: dict[str, str] = {}

    def collect(event: dict) -> None:
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_unreachable", "runner_on_failed") and "host" in data:
            res = data.get("res") or {}
            text = "\n".join(str(res.get(k) or "") for k in ("msg", "module_stderr", "stderr"))
            messages.setdefault(data["host"], text)
        if on_event:
            on_event(event)

    result = engine.run_playbook(
        "connect-check.yml", inventory, limit=limit, on_event=collect,
        envvars={"ANSIBLE_TIMEOUT": str(CONNECT_TIMEOUT_S)},
    )
    if not result.hosts and result.rc != 0:
        detail = "; ".join(result.errors) or f"ansible-playbook ended with rc={result.rc}"
        raise KtdeployError(f"the connection check could not run: {detail}",
                            hint=f"see the run record in {result.artifact_dir}")
    return [problem(host, messages[host], hostvars) for host in sorted(messages)]


def problem(host: str, message: str, hostvars: dict[str, dict]) -> HostProblem:
    """The HostProblem for Ansible's connection or become failure `message` about `host`."""
    # Ansible reads an inventory name HOST:PORT as HOST, so fall back to matching the address.
    hv = hostvars.get(host) or next((v for v in hostvars.values() if v.get("ansible_host") == host), {})
    cause, fix = not_ssh_problem(message, hv, host) or explain(
        message, user=hv.get("ansible_user"), port=hv.get("ansible_port"), host=hv.get("ansible_host", host))
    return HostProblem(host, cause, fix)
