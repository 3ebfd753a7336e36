"""What the controller needs before the lab can run: root and a few host tools."""

from __future__ import annotations

import os
import shutil

from ktdeploy.errors import BadInput

FIX = "run `bash scripts/setup.sh` as root (it installs the host packages the lab needs)"

# tool -> Debian package that provides it
_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "apt-cacher-ng": "apt-cacher-ng",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


class LabUnavailable(BadInput):
    """The lab cannot run on this controller (exit code 2); the message names the fix."""


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing() -> list[str]:
    """One line per missing requirement; empty when the lab can run."""
    out = []
    if os.geteuid() != 0:
        out.append("root (the lab mounts overlays, creates network namespaces and boots containers)")
    for tool, pkg in _TOOLS.items():
        if _which(tool) is None:
            out.append(f"{tool} (Debian package {pkg})")
    if _which("mmdebstrap") is None and _which("debootstrap") is None:
        out.append("mmdebstrap or debootstrap (Debian packages mmdebstrap eatmydata, or debootstrap)")
    return out


def check() -> None:
    gaps = missing()
    if gaps:
        raise LabUnavailable("the lab cannot run here: missing " + "; ".join(gaps), hint=FIX)


def tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise LabUnavailable(f"the lab needs {name}, which is not installed", hint=FIX)
    return path
