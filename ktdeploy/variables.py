"""The variables a run of site.yml reads: the roles' documented defaults (`roles/*/defaults/main.yml`,
the contract of each role) and Ansible's connection variables; checks of the values a user sets."""

from __future__ import annotations

import difflib
from functools import cache

import yaml

from ktdeploy.errors import BadInput
from ktdeploy.resources import roles_dir
from ktdeploy.targets import port_number

# Ansible's connection and privilege-escalation variables (behavioral inventory parameters).
CONNECTION_VARS = frozenset({
    "ansible_host", "ansible_port", "ansible_user", "ansible_connection", "ansible_password",
    "ansible_ssh_host", "ansible_ssh_port", "ansible_ssh_user", "ansible_ssh_pass", "ansible_ssh_password",
    "ansible_ssh_private_key_file", "ansible_private_key_file", "ansible_ssh_common_args",
    "ansible_ssh_extra_args", "ansible_sftp_extra_args", "ansible_scp_extra_args", "ansible_ssh_executable",
    "ansible_ssh_pipelining", "ansible_pipelining", "ansible_ssh_timeout", "ansible_timeout",
    "ansible_ssh_transfer_method", "ansible_become", "ansible_become_method", "ansible_become_user",
    "ansible_become_password", "ansible_become_pass", "ansible_become_exe", "ansible_become_flags",
    "ansible_shell_type", "ansible_shell_executable", "ansible_python_interpreter", "ansible_remote_tmp",
})


@cache
def role_defaults(role: str) -> dict:
    """One role's defaults/main.yml as data (values untemplated)."""
    return yaml.safe_load((roles_dir() / role / "defaults" / "main.yml").read_text()) or {}


@cache
def defaults() -> dict:
    """Every role's defaults, one mapping (role variables are prefixed with their role's name)."""
    out: dict = {}
    for path in sorted(roles_dir().glob("*/defaults/main.yml")):
        out.update(role_defaults(path.parent.parent.name))
    return out


def known() -> frozenset[str]:
    return frozenset(defaults()) | CONNECTION_VARS


def unknown_warnings(names, where: str = "-e") -> list[str]:
    """One warning per name no role and no Ansible connection reads, naming the closest known one."""
    names_known = known()
    out = []
    for name in names:
        if name in names_known:
            continue
        close = difflib.get_close_matches(name, sorted(names_known), n=1, cutoff=0.75)
        out.append(f"warning: {where} {name} is not a variable of any role"
                   + (f"; did you mean {close[0]}?" if close else " (roles/*/defaults/main.yml lists them)"))
    return out


def _is_port_var(name: str) -> bool:
    return name.endswith("_port")


def _port_ok(name: str, value) -> bool:
    if isinstance(value, str) and "{{" in value:  # templated: Ansible resolves it at run time
        return True
    if value in ("", None):  # "" means the role's default only where the default is "" (plan_port)
        return defaults().get(name, None) in ("", None) and name in defaults()
    return port_number(value) is not None


def check_ports(values: dict, *, where: str = "-e", host: str | None = None) -> None:
    """BadInput (exit 2) for a port variable (`*_port`) whose value is no port (1-65535)."""
    for name, value in values.items():
        if _is_port_var(name) and not _port_ok(name, value):
            what = f"{where} {name}={str(value)!r}" if host is None else f"{host}: {name} {str(value)!r} in {where}"
            raise BadInput(f"{what} is not a port", hint="use a number from 1 to 65535")
