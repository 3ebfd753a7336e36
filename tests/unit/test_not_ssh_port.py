"""A target port that answers but is not an SSH server gets one clear line naming it (exit 3), from
the connection check before provisioning (real ssh) and from the commands that probe over Fabric;
never a paramiko traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ktdeploy import remote
from ktdeploy.cli import main
from tests.support.not_ssh import not_ssh_server

KTDEPLOY = os.path.join(os.path.dirname(sys.executable), "ktdeploy")


def test_the_greeting_check_tells_ssh_from_other_servers():
    with not_ssh_server("http") as port:
        assert remote.not_ssh_reason("127.0.0.1", port) == "it answered 'HTTP/1.1 400 Bad Request'"
    with not_ssh_server("silent") as port:
        assert remote.not_ssh_reason("127.0.0.1", port, timeout=0.5) == "it sent no SSH greeting within 0.5 s"


def test_provision_names_the_port_that_is_not_ssh(runs_dir):
    with not_ssh_server("http") as port:
        result = CliRunner().invoke(main, ["provision", f"root@127.0.0.1:{port}", "--plain"])
    assert result.exit_code == 3, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("127.0.0.1")]
    assert lines == [f"127.0.0.1: port {port} on 127.0.0.1 answers but is not an SSH server "
                     "(it answered 'HTTP/1.1 400 Bad Request') (fix: name the host's SSH port as USER@HOST:PORT, "
                     "or set ansible_port in the inventory)"]


@pytest.mark.parametrize("command", [["preflight"], ["status", "--json"], ["facts", "--save", "unused"], ["logs"],
                                     ["chat", "hi"]])
def test_fabric_commands_say_one_line_without_a_traceback(command, tmp_path):
    with not_ssh_server("http") as port:
        proc = subprocess.run([KTDEPLOY, command[0], f"root@127.0.0.1:{port}", *command[1:]], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "paramiko" not in proc.stderr, proc.stderr
    assert f"port {port} on 127.0.0.1 answers but is not an SSH server" in proc.stdout + proc.stderr


def test_a_silent_port_is_named_too():
    with not_ssh_server("silent") as port:
        proc = subprocess.run([KTDEPLOY, "status", f"root@127.0.0.1:{port}", "--json", "--connect-timeout", "1"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"port {port} on 127.0.0.1 answers but is not an SSH server (it sent no SSH greeting" in proc.stdout


def test_provision_names_a_silent_port_too(runs_dir):
    with not_ssh_server("silent") as port:
        result = CliRunner().invoke(main, ["provision", f"root@127.0.0.1:{port}", "--plain"])
    assert result.exit_code == 3, result.output
    assert (f"127.0.0.1: port {port} on 127.0.0.1 answers but is not an SSH server (it sent no SSH greeting within 3 s)"
            in result.output)


def test_a_real_ssh_refusal_keeps_its_own_words(monkeypatch):
    from ktdeploy import connect

    closed = "kex_exchange_identification: Connection closed by remote host"
    monkeypatch.setattr(remote, "not_ssh_reason", lambda host, port, timeout=3.0: None)  # it greets as SSH does
    assert connect.not_ssh_problem(closed, {"ansible_host": "h", "ansible_port": 22}, "h") is None
    asked = []
    monkeypatch.setattr(remote, "not_ssh_reason", lambda host, port, timeout=3.0: asked.append(port) or "it answered 'x'")
    assert connect.not_ssh_problem(closed, {"ansible_ssh_common_args": "-o ProxyJump=bastion"}, "h") is None
    assert connect.not_ssh_problem("Permission denied (publickey)", {}, "h") is None
    assert asked == []  # through a proxy the port is not ours to ask; other failures are not about the port
    assert connect.not_ssh_problem(closed, {"ansible_port": "2222"}, "h")[0] == (
        "port 2222 on h answers but is not an SSH server (it answered 'x')")
