"""ktdeploy.lab: throwaway Debian 12 hosts booted with `systemd-nspawn -b`, reached over real SSH.

Each lab host N is an overlayfs copy of one golden rootfs, booted (real systemd) in network
namespace `ktlabN` as `10.203.N.2`; its only route leads to the controller address `10.203.0.1`
(on lo), where the apt proxy (:3142) and the wheelhouse index (:3141) listen. Needs root,
systemd-nspawn, mmdebstrap or debootstrap, apt-cacher-ng (`scripts/setup.sh` installs them);
without them `LabUnavailable` (exit code 2) names what is missing.

State lives in `~/.cache/ktdeploy/lab` (or `$KTDEPLOY_LAB_DIR`), shared by every process of the
machine; host indexes are allocated machine-wide under a lock.

Public API::

    lab = Lab()                       # Lab(state_dir=None)
    lab.ensure_ready()                # proxy + wheelhouse server running (reused if up), golden built once
    h = lab.up()                      # LabHost; up(n) for a given index; up(keep=True) outlives this process
    lab.down(h.index); lab.down_all() # down_all also stops the daemons unless others use them
    lab.close()                       # down the hosts this Lab made; stop daemons if nobody else needs them
    lab.list() -> list[LabHost]
    lab.ssh_argv(n, user="deploy")    # argv for real ssh
    lab.inventory_path()              # YAML inventory of all up hosts (group `lab`, hosts `labN`)
    lab.wheelhouse.add(["pkg==1.2"], no_deps=False, sdist=False)   # controller's pip download
    lab.wheelhouse.index_url          # http://10.203.0.1:3141/simple/
    lab.wheelhouse.pip_args           # ["--index-url", ..., "--trusted-host", "10.203.0.1"]

    h.index, h.name ("labN"), h.address ("10.203.N.2"), h.key
    h.target(user="deploy")           # ktdeploy.targets.Target with Ansible hostvars
    h.run(cmd, user="root")           # CompletedProcess over real ssh (text, captured)
    h.inventory_path()                # inventory with only this host
    h.reboot()                        # `systemctl reboot` and wait until it is back

Users in every host: root, `deploy` (passwordless sudo) and `nosudo` (no sudo), all with the lab
key; packages: systemd, dbus, openssh-server, python3, sudo, iproute2 only.

The names above are imported on first use, so `python -m ktdeploy.lab.tiny_dsv3` (numpy and gguf
only) runs where the lab's own dependencies are not installed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CONTROLLER_IP": "ktdeploy.lab.paths",
    "Lab": "ktdeploy.lab.lab",
    "LabHost": "ktdeploy.lab.host",
    "LabUnavailable": "ktdeploy.lab.requirements",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
