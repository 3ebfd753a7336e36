"""Daemon pid records and leases (real processes, no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ktdeploy.lab import daemons


def test_start_and_stop_a_daemon(tmp_path):
    pidfile = tmp_path / "pid"
    marker = tmp_path / "ready"
    argv = [sys.executable, "-c", f"import time, pathlib; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"]
    pid = daemons.start(argv, pidfile, tmp_path / "log", ready=marker.exists)
    assert daemons.running(pidfile) == pid
    assert os.getpgid(pid) == pid  # its own session: survives the process that started it
    assert daemons.stop(pidfile) is True
    assert daemons.running(pidfile) is None and not pidfile.exists()
    assert daemons.stop(pidfile) is False


def test_start_reports_a_daemon_that_dies(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="bad config"):
        daemons.start(argv, tmp_path / "pid", tmp_path / "log", ready=lambda: False, timeout=5)
    assert not (tmp_path / "pid").exists()


def test_a_recycled_pid_is_not_our_daemon(tmp_path):
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{os.getpid()} 1")  # right pid, wrong start time
    assert daemons.running(pidfile) is None


def test_leases_of_dead_processes_are_dropped(tmp_path):
    leases = tmp_path / "leases"
    daemons.take_lease(leases)
    assert daemons.other_live_leases(leases) == []  # our own lease does not count
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (leases / str(child.pid)).write_text(daemons.record_of(child.pid))
        assert daemons.other_live_leases(leases) == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert daemons.other_live_leases(leases) == []
    assert not (leases / str(child.pid)).exists()
    daemons.drop_lease(leases)
    assert list(leases.iterdir()) == []


class _Daemon:
    def __init__(self):
        self.stopped = False

    def stop(self):
        self.stopped = True


def _lab_with_fake_daemons(tmp_path, monkeypatch):
    from ktdeploy.lab import Lab, net

    lab = Lab(state_dir=tmp_path)
    lab.proxy, lab.wheelhouse = _Daemon(), _Daemon()
    removed = []
    monkeypatch.setattr(net, "remove_controller_ip", lambda: removed.append(True))
    daemons.take_lease(lab.paths.leases)
    return lab, removed


def test_last_user_out_stops_the_daemons_and_removes_the_address_it_added(tmp_path, monkeypatch):
    lab, removed = _lab_with_fake_daemons(tmp_path, monkeypatch)
    lab.paths.lo_address_marker.write_text("")
    assert lab.down_all() == []
    assert lab.proxy.stopped and lab.wheelhouse.stopped and removed == [True]
    assert not lab.paths.lo_address_marker.exists()
    assert list(lab.paths.leases.iterdir()) == []


def test_daemons_stay_while_another_process_uses_the_lab(tmp_path, monkeypatch):
    lab, removed = _lab_with_fake_daemons(tmp_path, monkeypatch)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (lab.paths.leases / str(other.pid)).write_text(daemons.record_of(other.pid))
        lab.close()
        assert not lab.proxy.stopped and not lab.wheelhouse.stopped and removed == []
    finally:
        other.kill()
        other.wait()


def test_daemons_stay_while_a_host_is_up(tmp_path, monkeypatch):
    lab, removed = _lab_with_fake_daemons(tmp_path, monkeypatch)
    lab.paths.host_dir(5).mkdir(parents=True)  # a kept host (`ktdeploy lab up`) of this state dir
    lab.close()
    assert not lab.proxy.stopped and removed == []


def test_without_the_marker_the_address_is_left_alone(tmp_path, monkeypatch):
    lab, removed = _lab_with_fake_daemons(tmp_path, monkeypatch)
    lab.close()
    assert lab.proxy.stopped and removed == []
