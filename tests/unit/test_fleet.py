"""Fleet runs of `ktdeploy provision` (ktdeploy.fleet): a host that fails the connection check or a
task drops out while the others converge, the summary names each with its cause, the run record
lists them, and --retry-failed runs only them. Real ansible-playbook runs on this machine (local
connection, four inventory names), the connection check stubbed to call one host unreachable."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy import engine, fleet, provisioning
from ktdeploy.cli import main
from ktdeploy.connect import HostProblem

# Stands in for playbooks/site.yml (found first in the working directory): a host whose `broken`
# variable is true fails its task; every host then runs a last task.
SITE = """
- name: Provision ktdeploy hosts
  hosts: all
  gather_facts: false
  serial: "{{ ktdeploy_serial | default('100%') }}"
  max_fail_percentage: "{{ ktdeploy_max_fail_percentage | default(100) }}"
  tasks:
    - name: Check the host is not broken
      ansible.builtin.assert:
        that: not (broken | default(false) | bool)
        fail_msg: "{{ inventory_hostname }} is broken: rm /srv/ktdeploy"
        quiet: true
    - name: Converge
      ansible.builtin.debug:
        msg: converged
"""

REFUSED = HostProblem("gpu3", "SSH refused the connection on port 22",
                      "start sshd on the host, or name the right port as USER@HOST:PORT")


@pytest.fixture
def fleet_env(tmp_path, runs_dir, local_host, monkeypatch):
    """Four hosts (gpu1..gpu4) in an inventory; gpu3 unreachable, gpu4 broken unless told otherwise."""
    (tmp_path / "site.yml").write_text(SITE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(provisioning, "preflight_or_raise", lambda targets, *a, **k: {})
    state = {"unreachable": {"gpu3"}, "broken": {"gpu4"}, "checked": []}

    def check_hosts(inventory, hostvars, limit=None, **_):
        state["checked"].append(sorted(limit or hostvars))
        return [HostProblem(h, REFUSED.cause, REFUSED.fix) for h in sorted(state["unreachable"])
                if h in (limit or hostvars)]

    monkeypatch.setattr(provisioning.connect, "check_hosts", check_hosts)

    def write_inventory():
        hosts = {f"gpu{i}": dict(local_host, broken=f"gpu{i}" in state["broken"]) for i in range(1, 5)}
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))

    state["write"] = write_inventory
    write_inventory()
    return tmp_path, state


def provision(inventory, *args):
    return CliRunner().invoke(main, ["provision", "-i", str(inventory), "--plain", *args])


def site_runs(runs_dir):
    return sorted(p for p in runs_dir.iterdir() if "-site-" in p.name) if runs_dir.exists() else []


def test_one_unreachable_and_one_failing_host_do_not_stop_the_others(fleet_env, runs_dir):
    tmp, state = fleet_env
    result = provision(tmp / "hosts.yml")
    assert result.exit_code == 3, result.output  # the worst wins: a host was unreachable
    assert "gpu3: SSH refused the connection on port 22 (fix: start sshd" in result.output
    assert "Going on with the 3 ready host(s)" in result.output
    lines = result.output.splitlines()
    start = lines.index("Hosts: 4 in the run: 2 ok, 1 failed, 1 unreachable")
    assert lines[start + 1:start + 3] == [
        "  gpu3  unreachable before the play (nothing ran there): SSH refused the connection on port 22 "
        "(fix: start sshd on the host, or name the right port as USER@HOST:PORT)",
        "  gpu4  failed: Check the host is not broken: gpu4 is broken: rm /srv/ktdeploy",
    ]
    [run] = site_runs(runs_dir)
    record = json.loads((run / fleet.RECORD).read_text())
    assert record["retry"] == ["gpu3", "gpu4"]
    assert record["hosts"]["gpu1"]["state"] == "ok" and record["hosts"]["gpu3"]["before_play"]
    assert f"run the same command with --retry-failed to converge only these (recorded in {run / fleet.RECORD})" \
        in result.output.replace("\n", " ")
    # the play ran on the three ready hosts only
    assert sorted(engine.RunResult("", 0, run).finished_hosts()) == ["gpu1", "gpu2", "gpu4"]

    # fixed: --retry-failed checks and converges gpu3 and gpu4 only
    state["unreachable"].clear()
    state["broken"].clear()
    state["write"]()
    retry = provision(tmp / "hosts.yml", "--retry-failed")
    assert retry.exit_code == 0, retry.output
    assert "--retry-failed: 2 host(s) the earlier runs left unconverged (gpu3, gpu4;" in retry.output
    assert state["checked"][-1] == ["gpu3", "gpu4"]
    assert "Hosts: 2 in the run: 2 ok" in retry.output
    second = site_runs(runs_dir)[-1]
    assert json.loads((second / fleet.RECORD).read_text())["retry"] == []
    assert "gpu1" not in (second / "stdout").read_text()

    again = provision(tmp / "hosts.yml", "--retry-failed")
    assert again.exit_code == 0, again.output
    assert "nothing to retry" in again.output
    assert len(site_runs(runs_dir)) == 2


def test_a_host_left_out_of_a_later_run_stays_listed(fleet_env, runs_dir):
    tmp, state = fleet_env
    assert provision(tmp / "hosts.yml").exit_code == 3
    state["broken"].clear()
    state["write"]()
    # a dry run converges nothing: the list stays
    assert provision(tmp / "hosts.yml", "--limit", "gpu4", "--check").exit_code == 0
    assert json.loads((site_runs(runs_dir)[-1] / fleet.RECORD).read_text())["retry"] == ["gpu3", "gpu4"]
    # a run limited to gpu4 converges it; gpu3, not in that run, is still to retry
    assert provision(tmp / "hosts.yml", "--limit", "gpu4").exit_code == 0
    record = json.loads((site_runs(runs_dir)[-1] / fleet.RECORD).read_text())
    assert record["retry"] == ["gpu3"]


def test_max_fail_percentage_0_stops_before_anything_changes(fleet_env, runs_dir):
    tmp, _ = fleet_env
    result = provision(tmp / "hosts.yml", "--max-fail-percentage", "0")
    assert result.exit_code == 3, result.output
    assert "1 of 4 host(s) not ready, more than --max-fail-percentage 0 allows; nothing was changed" in result.output
    assert site_runs(runs_dir) == []


def test_max_fail_percentage_stops_the_other_hosts_mid_play(fleet_env, runs_dir):
    tmp, state = fleet_env
    state["unreachable"].clear()
    result = provision(tmp / "hosts.yml", "--max-fail-percentage", "10")
    assert result.exit_code == 1, result.output
    assert "Hosts: 4 in the run: 1 failed, 3 not run" in result.output, result.output
    record = json.loads((site_runs(runs_dir)[-1] / fleet.RECORD).read_text())
    assert record["retry"] == ["gpu1", "gpu2", "gpu3", "gpu4"]


def test_serial_batches_reach_the_play(fleet_env, runs_dir):
    tmp, state = fleet_env
    state["unreachable"].clear()
    state["broken"].clear()
    state["write"]()
    result = provision(tmp / "hosts.yml", "--serial", "2", "--forks", "2")
    assert result.exit_code == 0, result.output
    assert result.output.count("PLAY Provision ktdeploy hosts") == 2  # two batches of two


def test_no_host_ready_stops_before_anything_changes(fleet_env, runs_dir):
    tmp, state = fleet_env
    state["unreachable"].update({"gpu1", "gpu2", "gpu4"})
    result = provision(tmp / "hosts.yml")
    assert result.exit_code == 3, result.output
    assert "4 of 4 host(s) not ready; nothing was changed" in result.output
    assert site_runs(runs_dir) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--retry-failed"], "--retry-failed: no earlier provision run of"),
    (["--retry-failed", "--limit", "gpu1"], "give --limit or --retry-failed, not both"),
    (["--serial", "0"], "--serial '0' is not a batch size"),
    (["--serial", "abc"], "--serial 'abc' is not a batch size"),
    (["--serial", "150%"], "--serial '150%' is not a batch size"),
])
def test_bad_fleet_options_exit_2_before_anything_runs(fleet_env, runs_dir, args, message):
    tmp, state = fleet_env
    result = provision(tmp / "hosts.yml", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert state["checked"] == []
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_the_fleet_key_tells_inventories_and_named_hosts_apart(tmp_path):
    inv = tmp_path / "hosts.yml"
    assert fleet.request_key(str(inv), ["a"]) == f"inventory:{inv.resolve()}"
    assert fleet.request_key({"all": {}}, ["b", "a"]) == fleet.request_key({"all": {}}, ["a", "b"]) == "hosts:a,b"
