"""`ktdeploy status`, `logs` and `chat` against real lab hosts (real SSH, real systemd).

The serving host runs tests/support/fake_openai.py under real units named ktdeploy-api/-webui
(a stand-in until the CPU demo profile can be provisioned in tests); see tests/support/lab_serving.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from importlib.resources import files

import jsonschema
import pytest

from ktdeploy import status as st
from tests.support import lab_serving as ls
from tests.support.probe_env import ctrl_c

pytestmark = pytest.mark.lab
KTDEPLOY = [os.path.join(os.path.dirname(sys.executable), "ktdeploy")]


def ktdeploy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*KTDEPLOY, *args], capture_output=True, text=True, timeout=timeout)


def schema() -> dict:
    return json.loads(files("ktdeploy").joinpath("schemas/status.json").read_text())


def power_off(host) -> None:
    """Take the host down but keep its address reserved: nothing answers SSH there any more."""
    host.run("systemctl poweroff", timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host.address, 22), timeout=1).close()
        except OSError:
            return
        time.sleep(0.2)
    raise AssertionError(f"{host.name} still answers on port 22 after poweroff")


def test_status_of_four_hosts_in_mixed_states(lab_hosts, tmp_path):
    serving, downloading, failed, down = lab_hosts(4)
    ls.make_serving(serving)
    ls.make_mid_download(downloading)
    ls.make_failed_unit(failed)
    power_off(down)
    inv = ls.inventory(tmp_path / "inv.yml", [serving, downloading, failed, down])

    r = ktdeploy("status", "-i", str(inv), "--json", "--connect-timeout", "3")
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema())
    by = {h["name"]: h for h in doc["hosts"]}
    assert r.returncode == 3 and doc["verdict"] == "unreachable" and doc["exit_code"] == 3, r.stderr
    assert by[down.name]["verdict"] == "unreachable" and any(
        cause in by[down.name]["error"]
        for cause in ("SSH refused the connection", "SSH connection timed out", "no network route to the host"))
    # a unit that exits at once is restarted until systemd's start limit stops it: status names the limit
    assert by[failed.name]["verdict"] == "failed" and "ktdeploy-api hit its start limit" in by[failed.name]["summary"]
    mid = by[downloading.name]
    assert mid["verdict"] == "degraded" and "not deployed yet" in mid["summary"]
    assert "base, python_env" in json.dumps(mid["checks"])
    if files("ktdeploy.hostside").joinpath("download_state.py").is_file():  # once the download role landed
        assert "r1-gguf interrupted 75.0%" in mid["summary"]
    ok = by[serving.name]
    assert ok["verdict"] == "ok", ok["summary"]
    assert ok["probe"]["api"]["models"] == [ls.MODEL] and ok["probe"]["manager"] == "systemd"
    assert {s["unit"]: s["state"] for s in ok["probe"]["services"]} == {"ktdeploy-api": "active", "ktdeploy-webui": "active"}
    assert ok["probe"]["host"]["uid"] == 0  # deploy user, probe through sudo -n

    # the worst host decides: without the unreachable one 1, then 5, then 0
    names = [serving.name, downloading.name, failed.name]
    assert ktdeploy("status", "-i", str(inv), *names).returncode == 1
    assert ktdeploy("status", "-i", str(inv), *names[:2]).returncode == 5
    table = ktdeploy("status", "-i", str(inv), serving.name, "--deep")
    assert table.returncode == 0 and "TTFT" in table.stdout and "tok/s" in table.stdout, table.stdout + table.stderr


def test_kill_9_is_restarted_and_status_counts_it(lab_host):
    ls.make_serving(lab_host)
    target = lab_host.target()
    (before,) = st.collect([target])
    api = next(s for s in before.probe["services"] if s["role"] == "api")
    assert before.verdict == "ok" and api["restarts"] == 0 and api["pid"] == ls.main_pid(lab_host, "ktdeploy-api")
    lab_host.run(f"kill -9 {api['pid']}", timeout=30)
    deadline = time.monotonic() + 30
    while True:
        (after,) = st.collect([target])
        new = next(s for s in after.probe["services"] if s["role"] == "api")
        if new["pid"] not in (None, api["pid"]) and after.verdict == "ok":
            break
        assert time.monotonic() < deadline, after.summary()
        time.sleep(0.5)
    assert new["restarts"] == 1 and new["state"] == "active"


def test_logs_shows_the_units_journal_and_chat_answers(lab_host, tmp_path):
    ls.make_serving(lab_host)
    inv = str(ls.inventory(tmp_path / "inv.yml", [lab_host]))
    r = ktdeploy("chat", "-i", inv, lab_host.name, "Hello?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Hello! I am a small test model."
    assert "The user wants a greeting." in r.stderr and "<think>" not in r.stdout + r.stderr
    j = json.loads(ktdeploy("chat", "-i", inv, lab_host.name, "Hello?", "--json").stdout)
    assert j["answer"] == "Hello! I am a small test model." and j["reasoning"].startswith("The user wants")

    logs = ktdeploy("logs", "-i", inv, lab_host.name, "api", "-n", "100")
    assert logs.returncode == 0, logs.stderr
    assert "fake-openai serving test-model" in logs.stdout and "POST /v1/chat/completions" in logs.stdout
    assert "ktdeploy-webui" not in logs.stdout
    bad = ktdeploy("logs", "-i", inv, lab_host.name, "nosuch")
    assert bad.returncode == 2 and "api (ktdeploy-api)" in bad.stderr


def test_logs_follow_prints_new_lines_until_interrupted(lab_host, tmp_path):
    ls.make_serving(lab_host)
    inv = str(ls.inventory(tmp_path / "inv.yml", [lab_host]))
    proc = subprocess.Popen([*KTDEPLOY, "logs", "-i", inv, lab_host.name, "api", "-f", "-n", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def wait_until(cond, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline and proc.poll() is None, f"{what}; got {lines!r}"
            time.sleep(0.2)

    try:
        wait_until(lambda: lines, "logs -f printed nothing")  # following from here on
        lab_host.run("python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:10002/health?followed')\"", timeout=30)
        wait_until(lambda: any("GET /health?followed" in ln for ln in lines), "the new line never came")
    finally:
        ctrl_c(proc)
    assert proc.returncode == 0, proc.stderr.read()
