"""The status command's own behaviour: input errors, unreachable hosts, --watch rounds and Ctrl-C."""

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from ktdeploy.cli import main
from tests.support.probe_env import ctrl_c, free_port

KTDEPLOY = os.path.join(os.path.dirname(sys.executable), "ktdeploy")


def test_no_host_and_bad_interval_are_bad_input():
    r = CliRunner().invoke(main, ["status"])
    assert r.exit_code == 2 and "no host given" in r.output
    r = CliRunner().invoke(main, ["status", "h", "--interval", "0.1", "--watch"])
    assert r.exit_code == 2 and "--interval" in r.output


def test_refused_host_is_unreachable_in_table_and_json():
    spec = f"nobody@127.0.0.1:{free_port()}"
    r = CliRunner().invoke(main, ["status", spec])
    assert r.exit_code == 3 and "unreachable" in r.output and "refused" in r.output
    r = CliRunner().invoke(main, ["status", spec, "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 3 and doc["hosts"][0]["verdict"] == "unreachable" and doc["hosts"][0]["probe"] is None


def _judged(monkeypatch):
    from ktdeploy import status as st
    from ktdeploy.remote import HostResult
    from ktdeploy.targets import parse_target
    from tests.unit.test_status_eval import SERVING

    webui_stopped = [dict(SERVING["services"][0]),
                     dict(SERVING["services"][1], state="inactive", sub="dead")]
    probe = dict(SERVING, services=webui_stopped, webui={"port": 8080, "ok": False, "error": "connection refused"})
    monkeypatch.setattr(st, "collect", lambda targets, **kw: [
        st.judge(HostResult(t, value=(probe, 0.2))) for t in targets])


@pytest.mark.parametrize("args", [[], ["--plain"]])
def test_not_on_a_terminal_status_prints_plain_lines(monkeypatch, args):
    """A pipe or a CI log gets one line per check, not an 80-column table whose cells wrap."""
    _judged(monkeypatch)
    r = CliRunner().invoke(main, ["status", "gpu1", *args])
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0] == "gpu1: failed"
    assert "  service:webui  failed    ktdeploy-webui is stopped (dead); start it or re-run provision" in lines
    assert not any(ch in r.output for ch in "┃│━─┏")


def test_watch_json_prints_a_document_per_round_until_ctrl_c():
    proc = subprocess.Popen([KTDEPLOY, "status", f"nobody@127.0.0.1:{free_port()}", "--watch", "--json", "--interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 60
    try:
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
    finally:
        ctrl_c(proc)
    assert len(lines) == 2 and all(d["verdict"] == "unreachable" for d in lines)
    assert proc.returncode == 3


def test_logs_command_per_manager():
    from ktdeploy.cli.status_cmd import logs_command

    svcs = [{"role": "api", "unit": "ktdeploy-api"}, {"role": "webui", "unit": "ktdeploy-webui", "log": "/var/log/w.log"}]
    assert logs_command("systemd", svcs, 50, True) == "journalctl --no-pager -o short-iso -u ktdeploy-api -u ktdeploy-webui -n 50 -f"
    assert logs_command("supervisord", svcs[:1], 5, True) == "tail -n 5 -F /var/log/ktdeploy/ktdeploy-api.log"
    assert logs_command("supervisord", svcs, 5, False) == "tail -n 5 /var/log/ktdeploy/ktdeploy-api.log /var/log/w.log"


def test_ask_streams_answer_to_stdout_reasoning_apart_and_names_a_missing_key(capsys):
    from openai import OpenAI

    from ktdeploy.chat import api_errors, reply, stream_reply
    from ktdeploy.cli.status_cmd import show_stream
    from ktdeploy.errors import KtdeployError
    from tests.support import fake_openai

    srv = fake_openai.serve_in_thread(model="m", api_key="k1")
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        show_stream(stream_reply(OpenAI(base_url=url, api_key="k1"), "m", "hi", 64), hide_reasoning=False)
        out, err = capsys.readouterr()
        assert out.strip() == "Hello! I am a small test model."
        assert "[reasoning]" in err and "The user wants a greeting." in err and "<think>" not in out + err
        with pytest.raises(KtdeployError, match="the API wants a key"):
            with api_errors("h"):
                reply(OpenAI(base_url=url, api_key="wrong", max_retries=0), "m", "hi", 8)
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("args", [["chat", "HOST", "hi", "--timeout", "-1"], ["chat", "HOST", "hi", "--timeout", "0"],
                                  ["status", "HOST", "--connect-timeout", "-1"],
                                  ["status", "HOST", "--connect-timeout", "0"]])
def test_timeouts_must_be_positive_before_any_host_is_asked(args):
    host = f"nobody@127.0.0.1:{free_port()}"  # refused: exit 3 if it were asked
    r = CliRunner().invoke(main, [host if a == "HOST" else a for a in args])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{args[-2]}'" in r.output and "x>0" in r.output
