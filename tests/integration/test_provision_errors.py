"""`ktdeploy provision` against lab hosts that cannot be provisioned: each gives exit 3, one line
per host naming the cause, and nothing but the connection check runs."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy.cli import main

pytestmark = pytest.mark.lab

CLOSED_PORT = 2  # nothing listens there on a lab host


def write_inventory(path, hosts: dict[str, dict]):
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def provision(inventory, *args):
    return CliRunner().invoke(main, ["provision", "-i", str(inventory), "--plain", "-e", "plan_force=true", *args])


def problem_lines(output: str, host: str) -> list[str]:
    """The connection check's lines about host (the preflight's forced-past findings aside)."""
    plan = (f"{host}: problem (forced past): ", f"{host}: warning: ")
    return [ln for ln in output.splitlines() if ln.startswith(f"{host}: ") and not ln.startswith(plan)]


def only_the_check_ran(tmp_path) -> bool:
    return [p.name.split("-", 1)[1].rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir()] == ["connect-check"]


def test_ssh_refused(lab_host, isolated):
    hv = dict(lab_host.hostvars("deploy"), ansible_port=CLOSED_PORT)
    result = provision(write_inventory(isolated / "hosts.yml", {"refused": hv}))
    assert result.exit_code == 3, result.output
    assert problem_lines(result.output, "refused") == [
        f"refused: SSH refused the connection on port {CLOSED_PORT} "
        "(fix: start sshd on the host, or name the right port as USER@HOST:PORT)"]
    assert only_the_check_ran(isolated)


def test_user_without_sudo(lab_host, isolated):
    good = lab_host.hostvars("deploy")
    inventory = write_inventory(isolated / "hosts.yml", {"good": good, "nosudo-host": lab_host.hostvars("nosudo")})
    # a fleet goes on with its ready hosts unless told otherwise: 0 means any host not ready stops it
    result = provision(inventory, "--max-fail-percentage", "0")
    assert result.exit_code == 3, result.output
    [line] = problem_lines(result.output, "nosudo-host")
    assert line.startswith("nosudo-host: nosudo cannot use sudo without a password (fix: grant passwordless sudo")
    assert problem_lines(result.output, "good") == []  # the host that is ready gets no line
    assert "1 of 2 host(s) not ready, more than --max-fail-percentage 0 allows; nothing was changed" in result.output
    assert only_the_check_ran(isolated)


def test_ssh_login_refused(lab_host, isolated):
    hv = dict(lab_host.hostvars("deploy"), ansible_user="ghost")
    result = provision(write_inventory(isolated / "hosts.yml", {"ghosted": hv}))
    assert result.exit_code == 3, result.output
    [line] = problem_lines(result.output, "ghosted")
    assert line.startswith(f"ghosted: SSH login as ghost was refused (authentication failed) "
                           f"(fix: install your public key for ghost (ssh-copy-id ghost@{lab_host.address})")
    assert only_the_check_ran(isolated)


def test_host_down(lab, isolated):
    host = lab.up()
    up = True
    try:
        inventory = write_inventory(isolated / "hosts.yml", {"gone": host.hostvars("deploy")})
        lab.down(host.index)
        up = False
        result = provision(inventory)
    finally:
        if up:
            lab.down(host.index)
    assert result.exit_code == 3, result.output
    [line] = problem_lines(result.output, "gone")
    assert line.startswith(("gone: SSH connection timed out", "gone: no network route to the host")), line
    assert only_the_check_ran(isolated)


def test_ready_host_passes_the_check_and_is_provisioned(lab_host, isolated):
    inventory = write_inventory(isolated / "hosts.yml", {"ready": lab_host.hostvars("deploy")})
    result = provision(inventory, "--only", "plan")  # base is converged by test_roles
    assert result.exit_code == 0, result.output
    assert problem_lines(result.output, "ready") == []
    assert "Run record:" in result.output
