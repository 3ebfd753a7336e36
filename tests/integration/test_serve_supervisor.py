"""The same API service under supervisord, on a lab host where systemd is not running at all
(nspawn runs sshd as the container's main process, as on container GPU platforms)."""

from __future__ import annotations

import re

import pytest
from servefixtures import API, MODEL, lab_extravars, on_host_json, provision, stock_wheelhouse, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def bare(lab, tmp_path_factory):
    host = lab.up(systemd=False)
    try:
        stock_wheelhouse(lab, host, webui=False)
        extravars = lab_extravars(lab, serve_webui_enabled=False)
        proc, recap = provision(host, extravars, tmp_path_factory.mktemp("first"))
        assert proc.returncode == 0 and recap.get("failed") == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        yield host, extravars
    finally:
        lab.down(host.index)


def _program(host) -> tuple[str, int]:
    out = host.run("supervisorctl status ktdeploy-api", timeout=30).stdout
    m = re.search(r"ktdeploy-api\s+(\S+)(?:\s+pid (\d+))?", out)
    return (m[1], int(m[2] or 0)) if m else ("?", 0)


def test_no_systemd_means_supervisord(bare):
    host, _ = bare
    assert host.run("test -d /run/systemd/system", timeout=30).returncode == 1
    assert host.run("cat /proc/1/comm", timeout=30).stdout.strip() != "systemd"
    record = host.run("cat /var/lib/ktdeploy/stages/serve.json", check=True).stdout
    assert '"service_manager": "supervisord"' in record
    # supervisord reports STARTING until the program has lived startsecs: poll, bounded.
    state, pid = wait_for(lambda: (s := _program(host))[0] == "RUNNING" and s, 60, "ktdeploy-api RUNNING")
    assert pid > 0
    assert [m["id"] for m in on_host_json(host, API + "/models")["data"]] == [MODEL]
    conf = host.run("stat -c '%a %U %G' /etc/supervisor/conf.d/ktdeploy-api.conf /etc/ktdeploy/ktdeploy-api.env",
                    check=True).stdout.split("\n")
    # the env file is root's: the program (ktdeploy-svc as the service user) reads it through its group
    assert conf[0] == "600 root root" and conf[1] == "640 root ktdeploy"


def test_kill_9_is_restarted_by_supervisord(bare):
    host, _ = bare
    _, before = _program(host)
    host.run(f"kill -9 {before}", check=True)
    wait_for(lambda: (lambda s: s[0] == "RUNNING" and s[1] not in (0, before))(_program(host)), 60,
             "ktdeploy-api running again under a new pid")
    wait_for(lambda: on_host_json(host, API + "/models")["data"][0]["id"] == MODEL, 60, "API ready again")
    log = host.run("tail -c 4000 /var/log/ktdeploy/ktdeploy-api.log", check=True).stdout
    assert "Uvicorn running" in log or "Application startup complete" in log


def test_second_run_changes_nothing(bare, tmp_path):
    host, extravars = bare
    proc, recap = provision(host, extravars, tmp_path)
    assert proc.returncode == 0 and recap["changed"] == 0, proc.stdout[-4000:]
