"""Targets: what the user names on the command line, turned into Ansible inventory data.

`host`, `user@host`, `user@host:port`, `[v6addr]:port` or an inventory file (`-i`). One parser for
every command (provision, facts, preflight, download, status, ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ktdeploy.errors import BadInput
from ktdeploy.resources import ansible_bin

_SPEC = re.compile(
    r"""^(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@)?
        (?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))
        (?::(?P<port>\d{1,5}))?$""",
    re.X,
)


@dataclass(frozen=True)
class Target:
    """One host as Ansible and Fabric see it."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None
    hostvars: dict = field(default_factory=dict, compare=False, hash=False)

    def ansible_vars(self) -> dict:
        out = dict(self.hostvars)
        out["ansible_host"] = self.host
        if self.user:
            out["ansible_user"] = self.user
        if self.port:
            out["ansible_port"] = self.port
        return out


LOCAL = "local"


def local_target() -> Target:
    """This machine, converged by Ansible's local connection with the Python that runs ktdeploy.

    Root without sudo (a container, a cloud GPU machine) becomes other users through su, with a shell
    for service accounts whose login shell is nologin.
    """
    hostvars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    if os.geteuid() == 0 and not shutil.which("sudo"):
        hostvars.update(ansible_become_method="su", ansible_become_flags="-s /bin/sh")
    return Target(name=LOCAL, host="localhost", hostvars=hostvars)


def port_number(value) -> int | None:
    """value as a TCP port (1-65535), or None when it is not one (bool, text, out of range)."""
    if isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text.isdigit():
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def parse_address(text: str, option: str, default_port: int, hint: str) -> tuple[str, int]:
    """ADDRESS[:PORT] or [V6ADDRESS][:PORT] (a bare IPv6 address too) as (address, port); BadInput
    naming the option otherwise."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", text) or \
        re.fullmatch(r"([A-Za-z0-9.-]+)(?::(\d{1,5}))?", text) or re.fullmatch(r"([0-9A-Fa-f:]+:[0-9A-Fa-f:.]*)()", text)
    port = int(m.group(2)) if m and m.group(2) else default_port
    if not m or not 0 < port < 65536:
        raise BadInput(f"{option} {text!r} is not ADDRESS[:PORT]", hint=hint)
    return m.group(1), port


def parse_target(spec: str) -> Target:
    """`local` (this machine), HOST, USER@HOST, USER@HOST:PORT or [v6addr]:PORT."""
    if spec.strip() == LOCAL:
        return local_target()
    m = _SPEC.match(spec.strip())
    if not m:
        raise BadInput(
            f"cannot read target {spec!r}",
            hint="name a host as HOST, USER@HOST or USER@HOST:PORT, or pass an inventory with -i",
        )
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise BadInput(f"port {port} in {spec!r} is out of range", hint="use a port from 1 to 65535")
    host = m["v6"] or m["host"]
    return Target(name=host if port is None else f"{host}:{port}", host=host, user=m["user"], port=port)


def parse_targets(specs: list[str]) -> list[Target]:
    targets = [parse_target(s) for s in specs]
    seen: set[str] = set()
    for t in targets:
        if t.name in seen:
            raise BadInput(f"target {t.name} is named twice", hint="name each host once")
        seen.add(t.name)
    return targets


def inventory_from_targets(targets: list[Target], group: str = "ktdeploy") -> dict:
    """An Ansible YAML/JSON inventory holding the given targets in one group."""
    return {"all": {"children": {group: {"hosts": {t.name: t.ansible_vars() for t in targets}}}}}


def load_inventory(path: str | Path) -> dict:
    """Read an inventory file or directory through `ansible-inventory --list`.

    Returns Ansible's own JSON view; a malformed inventory raises BadInput naming the parser's
    complaint.
    """
    from ktdeploy import inventory_cache

    path = Path(path)
    if not path.exists():
        raise BadInput(f"inventory {path} does not exist", hint="pass an existing file or directory to -i")
    cache_key = inventory_cache.key(path)
    cached = inventory_cache.get(cache_key) if cache_key else None
    if cached is not None:
        return cached
    proc = subprocess.run(
        [ansible_bin("ansible-inventory"), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        env=_strict_inventory_env(),
    )
    if proc.returncode != 0:
        raise BadInput(
            f"inventory {path} cannot be read: {_first_error(proc.stderr)}",
            hint="fix the file (YAML or INI inventory), or check it with `ansible-inventory -i PATH --list`",
        )
    data = json.loads(proc.stdout)
    if cache_key:
        inventory_cache.put(cache_key, data)
    return data


def targets_from_inventory(path: str | Path, limit: list[str] | None = None) -> list[Target]:
    data = load_inventory(path)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = sorted(_all_hosts(data))
    if not names:
        raise BadInput(f"inventory {path} lists no hosts", hint="add hosts to it (see inventory/sample)")
    if limit:
        unknown = [n for n in limit if n not in names]
        if unknown:
            raise BadInput(
                f"host(s) {', '.join(unknown)} not in inventory {path}",
                hint=f"use one of: {', '.join(names)}",
            )
        names = [n for n in names if n in limit]
    out = []
    for n in names:
        hv = hostvars.get(n, {})
        port = hv.get("ansible_port")
        if isinstance(port, str) and "{{" in port:  # templated: Ansible resolves it at run time
            port = None
        if port not in (None, "") and port_number(port) is None:
            raise BadInput(
                f"{n}: ansible_port {str(port)!r} in inventory {path} is not a port",
                hint="set ansible_port to the host's SSH port, a number from 1 to 65535 (or leave it out for 22)",
            )
        out.append(
            Target(
                name=n,
                host=str(hv.get("ansible_host", n)),
                user=hv.get("ansible_user"),
                port=port_number(port) if port not in (None, "") else None,
                hostvars=hv,
            )
        )
    return out


def _all_hosts(data: dict) -> set[str]:
    hosts: set[str] = set(data.get("_meta", {}).get("hostvars", {}))
    for key, group in data.items():
        if key != "_meta" and isinstance(group, dict):
            hosts.update(group.get("hosts", []))
    return hosts


def _strict_inventory_env() -> dict:
    import os

    env = dict(os.environ)
    # By default Ansible only warns about an unparsable inventory and carries on with no hosts.
    env["ANSIBLE_INVENTORY_UNPARSED_FAILED"] = "true"
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "true"
    return env


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith(("[ERROR]", "ERROR!")):
            return line.split("]", 1)[-1].lstrip(": ").strip() if line.startswith("[ERROR]") else line[6:].strip()
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[0] if lines else "unknown error"
