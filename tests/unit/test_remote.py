import re
import socket

import pytest

from ktdeploy.remote import _SSH_OWN_FAILURE, on_hosts, openssh_argv, run_script
from ktdeploy.targets import parse_target


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_host_is_reported_and_others_kept():
    bad = parse_target(f"nobody@127.0.0.1:{_closed_port()}")

    def fn(t):
        if t is bad:
            return run_script(t, "true")
        return "fine"

    good = parse_target("good-host")
    results = on_hosts([bad, good], fn)
    assert results[0].unreachable and "refused" in results[0].error
    assert results[1].ok and results[1].value == "fine"


def test_non_connection_error_is_not_unreachable():
    def fn(t):
        raise ValueError("boom")

    (r,) = on_hosts([parse_target("h")], fn)
    assert not r.unreachable and r.error == "ValueError: boom"


def test_openssh_carries_the_ansible_connection_variables():
    t = parse_target("deploy@10.0.0.5:2222")
    t.hostvars.update(ansible_ssh_private_key_file="/k/id", ansible_ssh_common_args="-o ProxyJump=bastion")
    argv = openssh_argv(t, connect_timeout=2.5)
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and "ConnectTimeout=3" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/k/id"
    assert argv[argv.index("-l") + 1] == "deploy" and argv[-2:] == ["--", "10.0.0.5"]
    assert "ProxyJump=bastion" in argv


def test_a_password_goes_through_paramiko():
    t = parse_target("root@10.0.0.5")
    t.hostvars["ansible_password"] = "secret"
    assert openssh_argv(t) is None


@pytest.mark.parametrize(("stderr", "own"), [
    ("ssh: connect to host 10.0.0.9 port 22: No route to host\n", True),
    ("deploy@10.0.0.9: Permission denied (publickey,password).\n", True),
    ("kex_exchange_identification: Connection closed by remote host\n", True),
    ("Connection timed out during banner exchange\n", True),
    ("Host key verification failed.\n", True),
    ("my script failed\n", False),  # a remote command that exits 255 is its own result
])
def test_sshs_own_failures_are_told_from_a_command_that_exits_255(stderr, own):
    assert bool(re.search(_SSH_OWN_FAILURE, stderr, re.M)) is own


def test_openssh_failures_get_cause_and_fix():
    bad = parse_target(f"nobody@127.0.0.1:{_closed_port()}")
    (r,) = on_hosts([bad], lambda t: run_script(t, "true"))
    assert r.unreachable and r.error.startswith(f"SSH refused the connection on port {bad.port} (fix: start sshd")
