"""Where the shipped playbooks, roles, templates and ansible.cfg live.

In a source checkout (editable install) they sit beside the package; in a wheel they are
packed under ktdeploy/_share.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def share_dir() -> Path:
    checkout = _PKG.parent
    if (checkout / "playbooks" / "site.yml").is_file():
        return checkout
    return _PKG / "_share"


def playbooks_dir() -> Path:
    return share_dir() / "playbooks"


def roles_dir() -> Path:
    return share_dir() / "roles"


def templates_dir() -> Path:
    return share_dir() / "templates"


def ansible_cfg() -> Path:
    return share_dir() / "ansible.cfg"


def sample_inventory() -> Path:
    return share_dir() / "inventory" / "sample"


def ansible_bin(name: str) -> str:
    """Path of an Ansible executable from the environment ktdeploy runs in (PATH as fallback)."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        from ktdeploy.errors import BadInput

        raise BadInput(f"{name} not found", hint="install ktdeploy with its dependencies (scripts/setup.sh)")
    return found
