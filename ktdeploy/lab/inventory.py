"""The Ansible inventory of lab hosts (YAML), rendered from the hosts that are up."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ktdeploy.lab.paths import CONTROLLER_IP, WHEELHOUSE_PORT
from ktdeploy.lab.ssh import COMMON_OPTS

GROUP = "lab"
# Lab hosts reach no package index but the lab wheelhouse (it holds what was added to it, e.g. by
# `ktdeploy lab demo`): every role that runs pip applies python_env's settings.
PIP_VARS = {
    "python_env_pip_index_url": f"http://{CONTROLLER_IP}:{WHEELHOUSE_PORT}/simple/",
    "python_env_pip_trusted_hosts": [CONTROLLER_IP],
}


def host_vars(address: str, key: Path, user: str = "deploy") -> dict:
    return {
        "ansible_host": address,
        "ansible_user": user,
        "ansible_become": user != "root",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": " ".join(COMMON_OPTS),
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def render(hosts: list[tuple[str, str]], key: Path) -> dict:
    """hosts: (name, address) pairs -> inventory data with one group, `lab`, whose pip uses the wheelhouse."""
    return {"all": {"children": {GROUP: {"hosts": {name: host_vars(addr, key) for name, addr in hosts},
                                         "vars": dict(PIP_VARS)}}}}


def write(path: Path, hosts: list[tuple[str, str]], key: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("# written by ktdeploy lab: the lab hosts that are up\n"
                   + yaml.safe_dump(render(hosts, key), sort_keys=False))
    os.replace(tmp, path)
    return path
