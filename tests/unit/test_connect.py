"""Connection-check messages: Ansible's failure text turned into one cause and fix per host."""

from __future__ import annotations

import pytest

from ktdeploy.connect import explain

# Messages as Ansible 2.19 reports them. Recorded from real runs (connection check against lab
# hosts and this machine), except NO_ROUTE and NO_SUDO, which follow ssh's and sh's wording.
_SENT = 'Task failed: Data could not be sent to remote host "10.203.1.2". Make sure this host can be reached over ssh: '
REFUSED = _SENT + "ssh: connect to host 10.203.1.2 port 2: Connection refused"
NO_DNS = ("Task failed: Failed to connect to the host via ssh: ssh: Could not resolve hostname "
          "nosuch.invalid: Name or service not known")
TIMEOUT = _SENT + "Connection timed out during banner exchange\r\nConnection to 10.203.1.2 port 22 timed out"
AUTH = (_SENT + "Warning: Permanently added '10.203.1.2' (ED25519) to the list of known hosts.\r\n"
        "deploy@10.203.1.2: Permission denied (publickey,password).")
SUDO_PASSWORD = "Task failed: Missing sudo password"
NO_ROUTE = "Task failed: Failed to connect to the host via ssh: ssh: connect to host 10.0.0.9 port 22: No route to host"
NO_SUDO = "MODULE FAILURE\nSee stdout/stderr for the exact error\n/bin/sh: 1: sudo: not found"


@pytest.mark.parametrize(("message", "cause", "fix_part"), [
    (REFUSED, "SSH refused the connection on port 2222", "start sshd"),
    (NO_DNS, "the host name does not resolve", "IP address"),
    (TIMEOUT, "SSH connection timed out", "host is up"),
    (AUTH, "SSH login as deploy was refused (authentication failed)", "ssh-copy-id deploy@10.203.1.2"),
    (NO_ROUTE, "no network route to the host", "host is up"),
    (SUDO_PASSWORD, "deploy cannot use sudo without a password", "NOPASSWD"),
    (NO_SUDO, "sudo is not installed on the host", "apt-get install sudo"),
])
def test_known_failures_name_cause_and_fix(message, cause, fix_part):
    got_cause, got_fix = explain(message, user="deploy", port=2222, host="10.203.1.2")
    assert got_cause == cause
    assert fix_part in got_fix


def test_unknown_failure_keeps_ansibles_first_line():
    cause, _ = explain("\nsomething odd happened\nmore detail")
    assert cause == "something odd happened"


def test_defaults_when_user_and_port_are_not_known():
    assert explain(REFUSED)[0] == "SSH refused the connection on port 22"
    assert "the SSH user" in explain(SUDO_PASSWORD)[0]
