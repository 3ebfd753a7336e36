"""LabHost: one booted lab host, as tests and the CLI see it."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ktdeploy.lab import inventory, ssh
from ktdeploy.lab.paths import host_address, host_name
from ktdeploy.targets import Target


@dataclass(frozen=True)
class LabHost:
    index: int
    key: Path
    run_dir: Path

    @property
    def name(self) -> str:
        return host_name(self.index)

    @property
    def address(self) -> str:
        return host_address(self.index)

    def hostvars(self, user: str = "deploy") -> dict:
        return inventory.host_vars(self.address, self.key, user)

    def target(self, user: str = "deploy") -> Target:
        """This host as a ktdeploy Target (works with ktdeploy.remote.connection and Ansible)."""
        return Target(name=self.name, host=self.address, user=user, hostvars=self.hostvars(user))

    def ssh_argv(self, user: str = "deploy") -> list[str]:
        return ssh.ssh_argv(self.key, self.address, user)

    def run(self, cmd: str | list[str], user: str = "root", *, timeout: float = 300, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run cmd over real ssh (a string goes to the remote shell; a list is quoted)."""
        return ssh.run(self.key, self.address, cmd, user=user, timeout=timeout, check=check, input=input)

    def inventory_path(self) -> Path:
        """An inventory holding only this host (safe to provision: no other session's hosts)."""
        return inventory.write(self.run_dir / "inventory.yml", [(self.name, self.address)], self.key)

    def boot_id(self) -> str:
        return self.run("cat /proc/sys/kernel/random/boot_id", check=True, timeout=30).stdout.strip()

    def reboot(self, timeout: float = 90) -> None:
        """Reboot the host and wait until it is back (new boot id, systemd done booting)."""
        before = self.boot_id()
        self.run("systemctl reboot", timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                r = self.run("cat /proc/sys/kernel/random/boot_id; systemctl is-system-running --wait", timeout=30)
            except subprocess.TimeoutExpired:
                continue
            lines = r.stdout.split()
            if len(lines) == 2 and lines[0] != before and lines[1] in ("running", "degraded"):
                return
        raise TimeoutError(f"{self.name} did not come back from a reboot within {timeout:.0f} s")
