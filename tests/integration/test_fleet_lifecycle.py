"""Fleet lifecycle on three lab hosts with the real roles: a gated upgrade that stops at the first
failing host, rollbacks, and removal (issue 11).

Three hosts serve the tiny DeepSeek-V3 (llama.cpp, profile tiny-dsv3-cpu, model `tiny-dsv3-iq1s`).
The upgrade switches them to the other tiny model (`tiny-dsv3-k`: a new release of the service, same
llama-cpp-python wheel; building a second llama-cpp-python would take too long here). That model is
corrupt on the second host, so the second host fails its gate: the first host is upgraded, the
rollout stops, the third host keeps the old release. Rollbacks take the first host back to the
release kept before and the second to its last good one; `remove` leaves hosts clean.

One set of hosts and one converge for the module (hosts in parallel), to keep the suite fast.
The KTransformers engine runs the same release mechanism (its wheel kept per build stamp), but lab
hosts have no GPU: its build is covered by tests/integration/test_build_lab.py and the unit tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from servefixtures import API, ROOT, copy_dir, lab_extravars, on_host_json, stock_wheelhouse

from ktdeploy.lab import tiny_dsv3

pytestmark = [pytest.mark.lab, pytest.mark.slow]

OLD, NEW = "tiny-dsv3-iq1s", "tiny-dsv3-k"
MODELS = "/srv/ktdeploy/models"
KTDEPLOY = str(Path(sys.executable).parent / "ktdeploy")
LEAN_PACKAGES = ["ca-certificates", "python3-venv", "python3-packaging", "acl", "tmux", "libgomp1"]  # llama.cpp: OpenMP
UPGRADE = ["-e", f"plan_model_variant={NEW}", "-e", f"serve_model_name={NEW}",
           "-e", f"serve_llamacpp_model={MODELS}/{NEW}/gguf/{NEW}.gguf"]


def ktdeploy(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([KTDEPLOY, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def recap(out: str, host: str) -> dict:
    m = re.search(rf"^\s*{re.escape(host)}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", out, re.M)
    return dict(zip(("ok", "changed", "failed", "unreachable", "skipped"), map(int, m.groups()))) if m else {}


def status(inventory: Path, *hosts: str, deep: bool = True) -> dict[str, dict]:
    r = ktdeploy("status", "-i", str(inventory), *hosts, "--json", *(["--deep"] if deep else []), timeout=300)
    return {h["name"]: h for h in json.loads(r.stdout)["hosts"]}


def release_state(host) -> dict:
    return json.loads(host.run("cat /var/lib/ktdeploy/releases/state.json", check=True).stdout)


def served_model(host) -> list[str]:
    return [m["id"] for m in on_host_json(host, API + "/models")["data"]]


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    old = tiny_dsv3.write(tmp / OLD, "iq1s")
    new = tiny_dsv3.write(tmp / NEW, "k")
    hosts = []
    try:
        for _ in range(3):
            hosts.append(lab.up())
        stock_wheelhouse(lab, hosts[0], webui=False)
        for i, host in enumerate(hosts):
            copy_dir(host, old.config_dir.parent, f"{MODELS}/{OLD}")
            copy_dir(host, new.config_dir.parent, f"{MODELS}/{NEW}")
            if i == 1:  # the second host's copy of the new model is cut short: it cannot load
                host.run(f"truncate -s 1M {MODELS}/{NEW}/gguf/{NEW}.gguf", check=True)
        # No Open WebUI; of the base role's packages only what this path uses (the build toolchain
        # is for compiling: llama-cpp-python comes as a wheel here), to keep the converge short.
        extravars = lab_extravars(lab, serve_webui_enabled=False, base_packages=LEAN_PACKAGES)
        inventory = tmp / "inventory.yml"
        inventory.write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": {  # rollout order: hosts'
            h.name: {**h.hostvars(), **extravars} for h in hosts}}}}}, sort_keys=False))
        started = time.monotonic()
        r = ktdeploy("provision", "-i", str(inventory), "--profile", "tiny-dsv3-cpu", "--plain")
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        print(f"\nfleet: tiny-dsv3 converge on {len(hosts)} fresh lab hosts at once: {time.monotonic() - started:.0f} s")
        yield hosts, inventory
    finally:
        for host in hosts:
            lab.down(host.index)


@pytest.fixture(scope="module")
def upgraded(fleet):
    hosts, inventory = fleet
    before = {h.name: release_state(h) for h in hosts}
    units = {h.name: h.run("sha256sum /etc/systemd/system/ktdeploy-api.service", check=True).stdout for h in hosts}
    started = time.monotonic()
    r = ktdeploy("upgrade", "-i", str(inventory), "--profile", "tiny-dsv3-cpu", "--plain", *UPGRADE)
    print(f"\nfleet: upgrade (prepare 3 hosts, roll out 2, the second failing): {time.monotonic() - started:.0f} s")
    return r, before, units


def test_the_fleet_serves_the_old_model_with_a_release_recorded(fleet):
    hosts, inventory = fleet
    for host in hosts:
        state = release_state(host)
        assert len(state["history"]) == 1 and state["rolled_back"] is False
        wheel = host.run("ls /srv/ktdeploy/wheels/llamacpp/*/", check=True).stdout
        assert re.search(r"llama_cpp_python-.*\.whl", wheel)
    docs = status(inventory, deep=False)
    assert all(d["verdict"] == "ok" for d in docs.values()), {n: d["summary"] for n, d in docs.items()}
    assert all(any(c["name"] == "release" for c in d["checks"]) for d in docs.values())


def test_upgrade_stops_at_the_first_failing_host(fleet, upgraded):
    hosts, _ = fleet
    r, _, _ = upgraded
    h1, h2, h3 = (h.name for h in hosts)
    assert r.returncode == 1, r.stdout[-6000:] + r.stderr[-3000:]
    assert re.search(rf"^upgrade: {h1}: upgraded to release [0-9a-f]{{12}} \(was [0-9a-f]{{12}}\); status --deep ok$",
                     r.stdout, re.M), r.stdout[-3000:]
    assert re.search(rf"^upgrade: {h2}: FAILED: .*ktdeploy rollback {h2}", r.stdout, re.M), r.stdout[-3000:]
    assert f"upgrade: {h3}: not reached: keeps its release" in r.stdout
    assert "the hosts after it keep their release" in r.stdout
    assert recap(r.stdout, h2)["failed"] == 1 and recap(r.stdout, h1)["failed"] == 0


def test_the_first_host_serves_the_new_release_and_keeps_the_old(fleet, upgraded):
    hosts, inventory = fleet
    _, before, _ = upgraded
    h1 = hosts[0]
    assert served_model(h1) == [NEW]
    state = release_state(h1)
    assert state["history"][1] == before[h1.name]["history"][0] and state["history"][0] != state["history"][1]
    doc = status(inventory, h1.name)[h1.name]
    assert doc["verdict"] == "ok", doc["summary"]
    assert doc["probe"]["release"]["current"] == state["history"][0]


def test_the_failed_host_is_failed_and_the_third_untouched(fleet, upgraded):
    hosts, inventory = fleet
    _, before, units = upgraded
    h2, h3 = hosts[1], hosts[2]
    docs = status(inventory, h2.name, h3.name)
    # its API crashed: failed, or waiting to restart (degraded) until systemd's start limit
    assert docs[h2.name]["verdict"] in ("failed", "degraded"), docs[h2.name]["summary"]
    assert not docs[h2.name]["probe"]["api"]["ok"]
    assert docs[h3.name]["verdict"] == "ok", docs[h3.name]["summary"]
    assert served_model(h3) == [OLD]
    assert release_state(h3) == before[h3.name]
    assert h3.run("sha256sum /etc/systemd/system/ktdeploy-api.service", check=True).stdout == units[h3.name]
    # the prepare play ran there too: the wheel of the wanted build is kept, nothing else moved
    assert release_state(h2) == before[h2.name]


def test_rollback_takes_both_hosts_back_and_runs_once(fleet, upgraded):
    hosts, inventory = fleet
    h1, h2 = hosts[0], hosts[1]
    r = ktdeploy("rollback", "-i", str(inventory), h1.name, h2.name, "--plain")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert re.search(rf"^rollback: {h1.name}: rolled back to release [0-9a-f]{{12}} \(from [0-9a-f]{{12}}\)", r.stdout, re.M)
    assert re.search(rf"^rollback: {h2.name}: rolled back to release [0-9a-f]{{12}}", r.stdout, re.M)
    docs = status(inventory, h1.name, h2.name)
    for name in (h1.name, h2.name):
        assert docs[name]["verdict"] == "ok", docs[name]["summary"]
        assert docs[name]["probe"]["api"]["models"] == [OLD]
        assert docs[name]["probe"]["release"]["rolled_back"] is True
    assert served_model(h2) == [OLD]

    again = ktdeploy("rollback", "-i", str(inventory), h1.name, h2.name, "--plain")
    assert again.returncode == 0, again.stdout[-4000:]
    for name in (h1.name, h2.name):
        assert recap(again.stdout, name)["changed"] == 0, again.stdout[-4000:]
        assert f"rollback: {name}: already rolled back to release" in again.stdout


def test_remove_keeps_the_models_stops_downloads_and_runs_once(fleet, upgraded):
    hosts, inventory = fleet
    h3 = hosts[2]
    # a download running in its tmux session, holding its job's lock, as the download role starts them
    h3.run("mkdir -p /var/lib/ktdeploy/downloads/fake && chown -R ktdeploy: /var/lib/ktdeploy/downloads && "
           "runuser -u ktdeploy -- tmux new-session -d -s ktd-dl-fake "
           "flock /var/lib/ktdeploy/downloads/fake/lock sleep 600", check=True)
    r = ktdeploy("remove", "-i", str(inventory), h3.name, "--yes", "--plain")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    left = h3.run(
        "ls -d /etc/systemd/system/ktdeploy-* /etc/ktdeploy /usr/local/libexec/ktdeploy /usr/local/lib/ktdeploy "
        "/var/log/ktdeploy /srv/ktdeploy/venvs /srv/ktdeploy/venv-env /srv/ktdeploy/wheels /srv/ktdeploy/api "
        "/srv/ktdeploy/home /var/lib/ktdeploy/stages /var/lib/ktdeploy/releases /var/lib/ktdeploy/downloads "
        "2>/dev/null; pgrep -u ktdeploy -a; true", check=True).stdout.split()
    assert left == []
    assert h3.run(f"ls {MODELS}/{OLD}/gguf", check=True).stdout.split() == [f"{OLD}.gguf"]
    assert h3.run("systemctl is-active ktdeploy-api").stdout.strip() in ("inactive", "unknown")

    doc = status(inventory, h3.name, deep=False)[h3.name]
    assert doc["verdict"] == "ok" and doc["exit_code"] == 0, doc["summary"]
    assert doc["summary"].startswith("clean: ktdeploy was removed; kept: models /srv/ktdeploy/models")

    again = ktdeploy("remove", "-i", str(inventory), h3.name, "--yes", "--plain")
    assert again.returncode == 0 and recap(again.stdout, h3.name)["changed"] == 0, again.stdout[-4000:]


def test_remove_purge_models_deletes_them(fleet, upgraded):
    hosts, inventory = fleet
    h1 = hosts[0]
    r = ktdeploy("remove", "-i", str(inventory), h1.name, "--purge-models", "--yes", "--plain")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert h1.run("ls -d /srv/ktdeploy 2>/dev/null; true", check=True).stdout.strip() == ""
    doc = status(inventory, h1.name, deep=False)[h1.name]
    assert doc["verdict"] == "ok" and doc["summary"] == "clean: ktdeploy was removed; kept: service user ktdeploy"
