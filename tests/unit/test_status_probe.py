"""The host-side probe, run here exactly as shipped, against a fake OpenAI server on loopback and fake
state dirs; its parsers against recorded systemctl/supervisorctl outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktdeploy import status as st
from ktdeploy.hostside import status_probe as sp
from tests.support import fake_openai
from tests.support.probe_env import free_port, run_probe_locally, serve_record, write_stage

RECORDED = Path(__file__).parent / "recorded"


@pytest.fixture
def server():
    srv = fake_openai.serve_in_thread(model="test-model", token_delay=0.002)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_probe_reads_stages_plan_and_checks_api_and_webui(tmp_path, server):
    port = server.server_address[1]
    write_stage(tmp_path, "base", {"base_data_dir": "/srv/ktdeploy"})
    write_stage(tmp_path, "serve", serve_record(port, webui_port=port))
    (tmp_path / "plan.json").write_text(json.dumps({"summary": {"variant": "UD-IQ1_S", "gpus": 1}, "rules": []}))
    out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none", "deep": True})
    assert sorted(out["stages"]) == ["base", "serve"]
    assert out["plan"] == {"variant": "UD-IQ1_S", "gpus": 1}
    assert out["services_declared"] and [s["port"] for s in out["services"]] == [port, port]
    assert out["api"]["ok"] and out["api"]["listed"] and out["api"]["models"] == ["test-model"]
    assert out["webui"]["ok"] and out["webui"]["status"] == 200
    deep = out["deep"]
    assert deep["completion"]["ok"] and deep["completion"]["finish_reason"] == "length"
    assert deep["stream"]["ok"] and deep["stream"]["completion_tokens"] == 16
    assert 0 < deep["stream"]["ttft_s"] < 5 and deep["stream"]["tokens_per_s"] > 0
    assert out["download"]["state"] == "none"  # no jobs directory
    checks = {c.name: c.level for c in st.evaluate(out)}
    assert checks["api"] == checks["webui"] == checks["stream"] == "ok"


def test_plan_summary_from_the_plan_stage_record(tmp_path):
    write_stage(tmp_path, "plan", {"complete": True, "format": 1, "stage": "plan",
                                   "settings": {"engine": "ktransformers", "variant": "UD-IQ1_S", "gpus": [0]}})
    out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert out["plan"] == {"engine": "ktransformers", "variant": "UD-IQ1_S"}


def test_probe_reports_wrong_model_and_closed_ports(tmp_path, server):
    port = server.server_address[1]
    write_stage(tmp_path, "serve", serve_record(port, webui_port=free_port(), model="DeepSeek-R1"))
    out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert out["api"]["ok"] and not out["api"]["listed"]
    assert not out["webui"]["ok"] and "refused" in out["webui"]["error"]
    levels = {c.name: c.level for c in st.evaluate(out)}
    assert levels["api"] == "failed" and levels["webui"] == "degraded"


def test_api_key_is_read_from_the_services_env_file_and_never_printed(tmp_path):
    srv = fake_openai.serve_in_thread(model="test-model", api_key="s3cret-key")
    try:
        port = srv.server_address[1]
        env = tmp_path / "ktdeploy-api.env"
        env.write_text("LLAMA_ARG=1\nKTDEPLOY_API_KEY='s3cret-key'\n")
        api = {"unit": "ktdeploy-api", "host": "0.0.0.0", "port": port, "model": "test-model", "env_file": str(env)}
        # the serve role's record keeps services under "settings"
        write_stage(tmp_path, "serve", {"settings": {"services": {"api": api}}})
        out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none", "deep": True})
        assert out["api"]["listed"] and out["deep"]["stream"]["ok"]
        env.write_text("KTDEPLOY_API_KEY=wrong\n")
        out2 = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
        assert out2["api"]["status"] == 401
        assert "s3cret" not in json.dumps(out) + json.dumps(out2)
    finally:
        srv.shutdown()
        srv.server_close()


def test_deep_is_skipped_while_the_api_does_not_answer(tmp_path):
    write_stage(tmp_path, "serve", serve_record(free_port()))
    out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none", "deep": True})
    assert not out["api"]["ok"] and out["deep"] is None


def test_probe_on_a_bare_host_uses_the_documented_names(tmp_path):
    out = run_probe_locally({"state_dir": str(tmp_path / "none"), "manager": "none"})
    assert not out["services_declared"] and out["stages"] == {} and out["plan"] is None
    assert {s["unit"]: s["port"] for s in out["services"]} == {"ktdeploy-api": 10002, "ktdeploy-webui": 8080}


def test_stage_records_are_the_visible_json_files_in_name_order(tmp_path):
    (tmp_path / "stages").mkdir()
    for name in ("torch.json", "base.json", ".partial.json", "notes.txt"):
        (tmp_path / "stages" / name).write_text('{"stage": "%s"}' % name)
    out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert list(out["stages"]) == ["base", "torch"]
    assert out["stages"]["base"]["record"] == {"stage": "base.json"} and out["errors"] == []


def test_unreadable_record_is_reported_not_fatal(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "base.json").write_text("{not json")
    out = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert any("base.json" in e for e in out["errors"])


def test_download_module_on_the_host_is_called_and_its_failure_contained(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "download_state.py").write_text(
        "def status_all(d):\n    return [{'name': d.name, 'phase': 'downloading', 'percent': 25.0}]\n")
    cfg = {"state_dir": str(tmp_path), "manager": "none", "download_lib_dir": str(lib)}
    out = run_probe_locally(cfg)
    assert out["download"] == {"state": "running", "downloads": [{"name": "downloads", "phase": "downloading", "percent": 25.0}]}
    (lib / "download_state.py").write_text("def status_all(d):\n    1/0\n")
    out = run_probe_locally(cfg)
    assert out["download"]["state"] == "unknown" and any("ZeroDivisionError" in e for e in out["errors"])
    out = run_probe_locally(dict(cfg, download_lib_dir=str(tmp_path / "absent")))
    assert out["download"] == {"state": "none", "why": "no download was set up on this host"}
    (tmp_path / "downloads").mkdir()
    out = run_probe_locally(dict(cfg, download_lib_dir=str(tmp_path / "absent")))
    assert out["download"]["state"] == "unknown" and "download_state.py is not installed" in out["download"]["why"]


@pytest.mark.parametrize(
    "phases, state",
    [([], "none"), (["complete"], "done"), (["complete", "downloading"], "running"),
     (["interrupted", "complete"], "stopped"), (["refused", "downloading"], "failed")],
)
def test_overall_download_state(phases, state):
    assert sp.overall_download_state([{"phase": p} for p in phases]) == state


def test_real_download_state_module_reports_an_interrupted_download(tmp_path):
    """With the download role's own module (ktdeploy/hostside/download_state.py) installed as the role does."""
    real = pytest.importorskip("ktdeploy.hostside.download_state")
    lib, jobs, dest = tmp_path / "lib", tmp_path / "state" / "downloads", tmp_path / "models"
    lib.mkdir()
    (lib / "download_state.py").write_text(Path(real.__file__).read_text())
    job = jobs / "r1-gguf"
    job.mkdir(parents=True)
    dest.mkdir()
    shards = [f"DeepSeek-R1-UD-IQ1_S-0000{i}-of-00002.gguf" for i in (1, 2)]
    (job / "job.json").write_text(json.dumps({"source": "modelscope", "repo": "unsloth/DeepSeek-R1-GGUF", "dest": str(dest)}))
    (job / "manifest.json").write_text(json.dumps({"files": [{"path": p, "size": 1000, "sha256": "0" * 64} for p in shards]}))
    (job / "state.json").write_text(json.dumps({"phase": "downloading"}))
    (dest / shards[0]).write_bytes(b"x" * 1000)
    (dest / (shards[1] + ".incomplete")).write_bytes(b"x" * 500)
    out = run_probe_locally({"state_dir": str(tmp_path / "state"), "manager": "none", "download_lib_dir": str(lib)})
    (d,) = out["download"]["downloads"]
    assert out["download"]["state"] == "stopped" and d["phase"] == "interrupted" and d["percent"] == 75.0
    (check,) = [c for c in st.evaluate(out) if c.name == "download"]
    assert check.level == "degraded" and "r1-gguf interrupted 75.0%" in check.detail


def test_stream_without_done_is_an_error():
    lines = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n']
    out = sp.read_sse(lines, time.monotonic(), time.monotonic() + 5)
    assert not out["ok"] and "without [DONE]" in out["error"]


def test_sse_usage_and_llama_timings():
    t0 = time.monotonic()
    lines = [b": ping\n", b"\n", b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n',
             b'data: {"choices":[{"delta":{"content":"a"}}]}\n',
             b'data: {"choices":[],"usage":{"completion_tokens":7},"timings":{"predicted_per_second":21.5}}\n',
             b"data: [DONE]\n"]
    out = sp.read_sse(lines, t0, t0 + 5)
    assert out["ok"] and out["completion_tokens"] == 7 and out["content_deltas"] == 2
    assert out["server_tokens_per_s"] == 21.5


def test_parse_systemctl_show_recorded():
    text = (RECORDED / "systemctl_show.txt").read_text()
    blocks = sp.parse_systemctl_show(text)
    entries = [sp.systemd_entry(b) for b in blocks]
    assert [e["state"] for e in entries] == ["active", "failed", "not-found"]
    assert entries[0]["pid"] and entries[0]["restarts"] == 0
    assert entries[1]["result"] == "exit-code" and entries[1]["restarts"] >= 1


def test_start_limit_read_from_systemds_own_journal_lines():
    """Result stays `exit-code` when a crash loop hits the start limit; systemd's journal says it
    (recorded on a lab host: `journalctl -u UNIT _PID=1 -o cat`, Debian 12's systemd 252)."""
    hit = (RECORDED / "journal_start_limit.txt").read_text().splitlines()
    assert sp.start_limit_hit(hit)
    assert not sp.start_limit_hit((RECORDED / "journal_after_reset.txt").read_text().splitlines())
    assert not sp.start_limit_hit([])


def test_a_failed_unit_gets_its_start_limit(monkeypatch):
    show = "\n".join(["Id=ktdeploy-api.service", "LoadState=loaded", "ActiveState=failed", "SubState=failed",
                      "Result=exit-code", "NRestarts=5", "StartLimitBurst=5", "StartLimitIntervalUSec=1h", "",
                      "Id=ktdeploy-webui.service", "LoadState=loaded", "ActiveState=active", "SubState=running",
                      "Result=success", "NRestarts=0", "StartLimitBurst=5", "StartLimitIntervalUSec=1h", ""])
    journal = (RECORDED / "journal_start_limit.txt").read_text()
    calls = []

    def run(argv, timeout=10):
        calls.append(argv)
        return 0, show if argv[0] == "systemctl" else journal, ""

    monkeypatch.setattr(sp, "run", run)
    states = sp.systemd_states(["ktdeploy-api", "ktdeploy-webui"], [])
    assert states["ktdeploy-api"]["start_limit_hit"] is True
    assert states["ktdeploy-api"]["start_limit"] == {"burst": 5, "interval": "1h"}
    assert "start_limit_hit" not in states["ktdeploy-webui"]
    assert [c[0] for c in calls] == ["systemctl", "journalctl"]  # the journal only for the failed unit


def test_parse_supervisorctl_status_recorded():
    text = (RECORDED / "supervisorctl_status.txt").read_text()
    states = sp.parse_supervisorctl_status(text)
    assert states["ktdeploy-api"]["state"] == "active" and states["ktdeploy-api"]["pid"]
    assert states["ktdeploy-webui"]["state"] == "failed" and states["ktdeploy-webui"]["raw"] == "FATAL"
    assert "nosuch" not in states


def test_unexpected_exits_counted_from_recorded_supervisord_log():
    lines = (RECORDED / "supervisord.log").read_text().splitlines()
    assert sp.count_unexpected_exits(lines, ["ktdeploy-api", "ktdeploy-webui"]) == {"ktdeploy-api": 0, "ktdeploy-webui": 2}


def test_unexpected_exits_counted_since_last_start():
    lines = [
        "2026-11-29 01:00:00,000 INFO supervisord started with pid 1",
        "2026-11-29 01:00:01,000 INFO exited: ktdeploy-api (terminated by SIGKILL; not expected)",
        "2026-11-29 01:00:02,000 INFO supervisord started with pid 9",
        "2026-11-29 01:00:03,000 INFO exited: ktdeploy-api (terminated by SIGKILL; not expected)",
        "2026-11-29 01:00:04,000 INFO exited: ktdeploy-api (exit status 0; expected)",
        "2026-11-29 01:00:05,000 INFO exited: ktdeploy-webui (exit status 1; not expected)",
    ]
    assert sp.count_unexpected_exits(lines, ["ktdeploy-api", "ktdeploy-webui"]) == {"ktdeploy-api": 1, "ktdeploy-webui": 1}


@pytest.fixture
def supervisord(tmp_path):
    """A real supervisord (PyPI supervisor) running the fake server as program ktdeploy-api."""
    port = free_port()
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"""[unix_http_server]
file={tmp_path}/supervisor.sock
[supervisord]
logfile={tmp_path}/supervisord.log
pidfile={tmp_path}/supervisord.pid
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{tmp_path}/supervisor.sock
[program:ktdeploy-api]
command={sys.executable} {fake_openai.__file__} --port {port} --model test-model
autorestart=true
startsecs=1
stdout_logfile={tmp_path}/ktdeploy-api.log
redirect_stderr=true
"""
    )
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bindir / "supervisord"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    try:
        yield conf, port, env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_supervisord_program_state_and_restart_count(tmp_path, supervisord):
    conf, port, env = supervisord
    write_stage(tmp_path / "state", "serve", serve_record(port))
    cfg = {"state_dir": str(tmp_path / "state"), "manager": "supervisord", "supervisor_conf": str(conf)}

    def running():
        out = run_probe_locally(cfg, env=env)
        api = out["services"][0]
        return out if api["state"] == "active" and out["api"]["ok"] else None

    out = _wait_for(running)
    assert out["manager"] == "supervisord" and out["services"][0]["restarts"] == 0
    assert st.verdict(st.evaluate(out)) == "ok"
    os.kill(out["services"][0]["pid"], signal.SIGKILL)
    again = _wait_for(lambda: (o := running()) and o["services"][0]["pid"] != out["services"][0]["pid"] and o)
    assert again["services"][0]["restarts"] == 1


def test_probe_config_follows_the_role_variables_of_the_host():
    from ktdeploy import layout
    from ktdeploy.targets import Target

    cfg = st.probe_config(Target("gpu1", "gpu1", hostvars={"base_state_dir": "/data/state",
                                                           "model_download_jobs_dir": "{{ base_state_dir }}/jobs"}))
    assert (cfg["state_dir"], cfg["downloads_dir"]) == ("/data/state", "/data/state/jobs")
    plain = st.probe_config(Target("gpu1", "gpu1"))
    assert (plain["state_dir"], plain["download_lib_dir"], plain["config_dir"]) == (
        layout.STATE_DIR, layout.LIB_DIR, layout.CONFIG_DIR)


def test_the_rollout_gates_probe_config_is_complete(tmp_path):
    """The gate (roles/release) hands probe_config_from's result to the probe as it is, without the
    defaults probe_script lays under it: the probe must run on it (an empty host: nothing deployed)."""
    from ktdeploy import layout

    cfg = st.probe_config_from({"base_state_dir": str(tmp_path / "state"), "serve_config_dir": "",
                                "model_download_lib_dir": "", "model_download_jobs_dir": "", "serve_log_dir": ""},
                               deep=True)
    assert set(layout.probe_defaults()) <= set(cfg) and cfg["state_dir"] == str(tmp_path / "state")
    probe = Path(st.__file__).parent / "hostside" / "status_probe.py"
    out = subprocess.run([sys.executable, str(probe), json.dumps(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "host" in json.loads(out.stdout)
