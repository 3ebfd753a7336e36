"""Converging lab hosts with playbooks/site.yml: what the role tests and the benchmark share."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "playbooks" / "site.yml"
# Installed into the env from the lab wheelhouse (the tutorial's ninja and packaging), and imported back.
ENV_PACKAGES = ["packaging==24.2", "ninja==1.11.1.1"]
ENV_IMPORTS = ["packaging", "ninja"]
_RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)


@dataclass
class Run:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    ansible_output: str = ""  # Ansible's own output, where the tool prints something else (ktdeploy)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def recap(self, host: str) -> dict[str, int]:
        """The PLAY RECAP counters of host (the last recap printed)."""
        found = [m for m in _RECAP.finditer(self.ansible_output or self.stdout) if m.group(1) == host]
        if not found:
            raise AssertionError(f"no PLAY RECAP line for {host} in:\n{self.output[-3000:]}")
        keys = ("ok", "changed", "unreachable", "failed", "skipped")
        return dict(zip(keys, map(int, found[-1].groups()[1:])))

    def explain(self) -> str:
        return f"$ {' '.join(self.argv)}\nexit {self.rc} after {self.seconds:.0f} s\n{self.output[-6000:]}"


def role_vars(wheelhouse) -> dict:
    """Settings for base + python_env(venv) on a lab host: Python packages come from the wheelhouse."""
    return {
        # A lab host has no GPU and a small disk: the plan's preflight would stop the play before the roles.
        "plan_force": True,
        "python_env_backend": "venv",
        "python_env_packages": ENV_PACKAGES,
        "python_env_pip_index_url": wheelhouse.index_url,
        "python_env_pip_trusted_hosts": [wheelhouse.trusted_host],
    }


def write_inventory(host, path: Path, variables: dict) -> Path:
    """An inventory with only this lab host and the given group variables."""
    data = {"all": {"hosts": {host.name: host.hostvars()}, "vars": variables}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def _run(argv: list[str], timeout: float, env: dict | None = None) -> Run:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                               "ANSIBLE_NOCOLOR": "1", **(env or {})})
    return Run(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def ansible_playbook(inventory: Path, *args: str, timeout: float = 1200) -> Run:
    """Plain `ansible-playbook -i INVENTORY playbooks/site.yml ARGS` (the repo's ansible.cfg)."""
    return _run([_tool("ansible-playbook"), "-i", str(inventory), str(SITE), *args], timeout)


def ktdeploy_provision(inventory: Path, *args: str, runs_dir: Path, timeout: float = 1200) -> Run:
    """`ktdeploy provision -i INVENTORY ARGS`; Ansible's output is read back from the run record."""
    run = _run([_tool("ktdeploy"), "provision", "-i", str(inventory), *args], timeout,
               env={"KTDEPLOY_RUNS_DIR": str(runs_dir)})
    record = re.search(r"^Run record: (.+)$", run.stdout, re.M)
    stdout = Path(record.group(1).strip()) / "stdout" if record else None
    if stdout is not None and stdout.is_file():
        run.ansible_output = stdout.read_text()
    return run
