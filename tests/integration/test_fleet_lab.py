"""A fleet run on four lab hosts with the real roles (`--only base`, no Debian package: fast): one host's sshd
is stopped and one host cannot get its data directory; the other two converge, the summary names
both with their cause, and after the fixes `--retry-failed` converges those two only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy import fleet
from ktdeploy.cli import main
from ktdeploy.lab.paths import netns_name

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# No Debian package to install (apt is the slow part; the bundle test installs some): the base role
# still creates the service user, the directories and its stage record.
FLEET_VARS = {"base_packages": [], "plan_force": True}


def provision(inventory, *args):
    return CliRunner().invoke(main, ["provision", "-i", str(inventory), "--plain", "--only", "base", *args])


def container_init(host) -> str:
    """The host pid of a lab host's systemd (pid 1 in its pid namespace): a way in without SSH."""
    pids = subprocess.run(["ip", "netns", "pids", netns_name(host.index)], capture_output=True, text=True,
                          check=True).stdout.split()
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
        if nspid and nspid[-1] == "1":
            return pid
    raise AssertionError(f"no init process in {netns_name(host.index)}")


def stages(host) -> list[str]:
    return host.run("ls /var/lib/ktdeploy/stages 2>/dev/null", timeout=30).stdout.split()


def test_a_failing_and_an_unreachable_host_do_not_stop_the_fleet(lab_hosts, isolated):
    ok1, ok2, down, broken = lab_hosts(4)
    inventory = isolated / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "hosts": {h.name: h.hostvars("deploy") for h in (ok1, ok2, down, broken)}, "vars": FLEET_VARS}}))
    assert down.run("systemctl stop ssh", timeout=30).returncode == 0
    assert broken.run("mkdir -p /srv && touch /srv/ktdeploy", timeout=30).returncode == 0  # a file, not a dir

    result = provision(inventory)
    assert result.exit_code == 3, result.output  # the worst wins: a host was unreachable
    out = result.output
    assert "Hosts: 4 in the run: 2 ok, 1 failed, 1 unreachable" in out, out
    assert (f"  {down.name}  unreachable before the play (nothing ran there): SSH refused the connection "
            "on port 22 (fix: start sshd on the host") in out, out
    assert f"  {broken.name}  failed: Create the data, model and state directories.: " in out, out
    for h in (ok1, ok2):
        assert "base.json" in stages(h), (h.name, stages(h))
    assert "base.json" not in stages(broken)
    [site] = [p for p in (isolated / "runs").iterdir() if "-site-" in p.name]
    assert json.loads((site / fleet.RECORD).read_text())["retry"] == sorted([down.name, broken.name])

    # fix both; --retry-failed converges only them
    subprocess.run(["nsenter", "-t", container_init(down), "-m", "-u", "-i", "-p", "-n", "systemctl", "start", "ssh"],
                   check=True, capture_output=True, timeout=60)
    assert broken.run("rm /srv/ktdeploy", timeout=30).returncode == 0
    retry = provision(inventory, "--retry-failed")
    assert retry.exit_code == 0, retry.output
    assert "Hosts: 2 in the run: 2 ok" in retry.output, retry.output
    second = max((p for p in (isolated / "runs").iterdir() if "-site-" in p.name), key=lambda p: p.name)
    recap = (second / "stdout").read_text()
    assert down.name in recap and broken.name in recap
    assert ok1.name not in recap and ok2.name not in recap
    for h in (down, broken):
        assert "base.json" in stages(h), (h.name, stages(h))
    assert json.loads((second / fleet.RECORD).read_text())["retry"] == []
