"""Keep a lab host booted: run `systemd-nspawn -b` again whenever the host asks for a reboot.

nspawn exits with 133 when the container reboots (`systemctl reboot`, `ansible.builtin.reboot`);
any other exit ends the loop. Run as `python -m ktdeploy.lab.bootloop ROOT NAME NETNS_PATH`, in its
own process group: SIGTERM to the group powers the host off cleanly.
"""

from __future__ import annotations

import subprocess
import sys

REBOOT = 133


def nspawn_argv(root: str, name: str, netns_path: str) -> list[str]:
    return [
        "systemd-nspawn", "--boot", f"--directory={root}", f"--machine={name}",
        # no machined/D-Bus on the controller: without these nspawn fails to start
        "--register=no", "--keep-unit",
        "--console=passive", f"--network-namespace-path={netns_path}",
    ]


def main(argv: list[str]) -> int:
    root, name, netns_path = argv
    while True:
        rc = subprocess.call(nspawn_argv(root, name, netns_path))
        if rc != REBOOT:
            return rc
        print(f"bootloop: {name} rebooted, starting it again", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
