"""ktdeploy.engine against this machine through the local connection: real ansible-playbook runs."""

from __future__ import annotations

import socket
import stat
import tempfile

import pytest

from ktdeploy import engine, exitcodes

PLAYBOOK = """
- name: Engine test play
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the first file
      ansible.builtin.copy:
        dest: "{{ out_dir }}/first.txt"
        content: "first {{ word | default('none') }}\\n"
        mode: "0600"
      tags: [first]
    - name: Write the second file
      ansible.builtin.copy:
        dest: "{{ out_dir }}/second.txt"
        content: "second\\n"
        mode: "0644"
      tags: [second]
    - name: Fail when asked to
      ansible.builtin.fail:
        msg: asked to fail
      when: fail_now | default(false) | bool
    - name: Fail one loop item when asked to
      ansible.builtin.fail:
        msg: "item {{ item }} failed"
      loop: [a, b]
      when: fail_item | default('') == item
"""


@pytest.fixture
def play(tmp_path):
    path = tmp_path / "play.yml"
    path.write_text(PLAYBOOK)
    return path


@pytest.fixture
def inventory(tmp_path, local_host):
    out = tmp_path / "out"
    out.mkdir()
    return {"all": {"hosts": {"here": local_host}, "vars": {"out_dir": str(out)}}}, out


def test_first_run_changes_and_second_run_is_idempotent(play, inventory, runs_dir):
    inv, out = inventory
    first = engine.run_playbook(play, inv)
    assert first.status == "successful" and first.rc == 0
    assert (first.hosts["here"].ok, first.hosts["here"].changed, first.hosts["here"].skipped) == (2, 2, 2)
    assert first.exit_code == exitcodes.OK
    assert (out / "first.txt").read_text() == "first none\n"
    second = engine.run_playbook(play, inv)
    assert second.hosts["here"].changed == 0 and second.hosts["here"].ok == 2
    assert first.artifact_dir.parent == runs_dir and (first.artifact_dir / "job_events").is_dir()


def test_check_mode_changes_nothing(play, inventory, runs_dir):
    inv, out = inventory
    result = engine.run_playbook(play, inv, check=True, diff=True)
    assert result.hosts["here"].changed == 2  # what would change
    assert list(out.iterdir()) == []


def test_tags_and_skip_tags_select_tasks(play, inventory, runs_dir):
    inv, out = inventory
    engine.run_playbook(play, inv, tags=["second"])
    assert [p.name for p in out.iterdir()] == ["second.txt"]
    (out / "second.txt").unlink()
    engine.run_playbook(play, inv, skip_tags=["second"])
    assert [p.name for p in out.iterdir()] == ["first.txt"]


def test_extravars_reach_the_play_and_events_reach_the_handler(play, inventory, runs_dir, tmp_path, monkeypatch):
    inv, out = inventory
    scratch = tmp_path / "scratch"  # where the private dir with the vars file goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen: list[str] = []
    result = engine.run_playbook(play, inv, extravars={"word": "hello", "fail_now": True},
                                 on_event=lambda e: seen.append(e["event"]))
    assert (out / "first.txt").read_text() == "first hello\n"
    assert result.failed_hosts == ["here"] and result.exit_code == exitcodes.FAILED
    assert seen[0] == "playbook_on_start" and seen[-1] == "playbook_on_stats"
    assert "runner_on_failed" in seen
    assert result.failure_lines() == ["here: Fail when asked to: asked to fail"]
    assert list(scratch.iterdir()) == []


def test_failure_lines_name_the_failed_loop_item(play, inventory, runs_dir):
    inv, _ = inventory
    result = engine.run_playbook(play, inv, extravars={"fail_item": "b"})
    assert result.failure_lines() == ["here: Fail one loop item when asked to: item b failed"]
    ok = engine.run_playbook(play, inv)
    assert ok.exit_code == exitcodes.OK and ok.failure_lines() == []


def test_unreachable_host_gives_exit_code_3(play, inventory, runs_dir):
    inv, _ = inventory
    inv["all"]["hosts"] = {"gone": {"ansible_host": "127.0.0.1", "ansible_port": closed_port()}}
    result = engine.run_playbook(play, inv)
    assert result.unreachable_hosts == ["gone"] and result.exit_code == exitcodes.UNREACHABLE


def test_missing_playbook_is_a_failure_with_its_error(inventory, runs_dir, tmp_path):
    result = engine.run_playbook(tmp_path / "nope.yml", inventory[0])
    assert result.exit_code == exitcodes.FAILED and result.hosts == {}
    assert any("nope.yml" in e for e in result.errors)


def test_old_run_records_are_rotated(play, inventory, runs_dir):
    for _ in range(3):
        engine.run_playbook(play, inventory[0], tags=["none"], keep=2)
    assert len(list(runs_dir.iterdir())) == 2


def test_a_record_in_use_by_another_run_is_not_pruned(tmp_path):
    """Two ktdeploy processes share the runs directory: one's pruning must not remove the record
    the other is still writing (it did, with ansible-runner's own rotation, and both failed)."""
    import os

    records = []
    for i, name in enumerate(["a-oldest", "b", "c", "d-newest"]):
        d = tmp_path / name
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
        records.append(d)
    running = engine._hold_run_lock(records[0])
    os.utime(records[0], (1000, 1000))
    try:
        engine.prune_runs(tmp_path, keep=2)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-oldest", "c", "d-newest"]
    finally:
        running.close()
    engine.prune_runs(tmp_path, keep=2)  # its run ended: now it goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d-newest"]
    engine.prune_runs(tmp_path / "never-made", keep=2)


def test_extravars_file_is_private_and_removed(tmp_path):
    cmd = engine._cmdline(tmp_path, {"k": "v"}, check=True, diff=False)
    vars_file = tmp_path / "extravars.json"
    assert cmd == f"-e @{vars_file} --check"
    assert stat.S_IMODE(vars_file.stat().st_mode) == 0o600


def test_child_env_drops_callers_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "t")
    monkeypatch.setenv("ANSIBLE_BECOME_PASS", "p")
    monkeypatch.setenv("https_proxy", "http://user:pw@proxy:3128")
    monkeypatch.setenv("ANSIBLE_TIMEOUT", "5")
    env = {"HF_TOKEN": "t", "ANSIBLE_BECOME_PASS": "p", "https_proxy": "http://user:pw@proxy:3128",
           "ANSIBLE_TIMEOUT": "5", "ANSIBLE_STDOUT_CALLBACK": "awx_display"}
    assert engine._child_env(env) == {"ANSIBLE_TIMEOUT": "5", "ANSIBLE_STDOUT_CALLBACK": "awx_display"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
