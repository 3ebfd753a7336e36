"""A secret passed as an extra var or found in the caller's environment never lands in run records
or in the CLI's output."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from ktdeploy import engine
from ktdeploy.cli import main

SENTINEL = "s3ntinel-7f1c9e"
ENV_SENTINEL = "env-s3ntinel-2b8d"

PLAYBOOK = """
- name: Use a secret
  hosts: all
  gather_facts: false
  tasks:
    - name: Store the token where the service would read it
      ansible.builtin.copy:
        dest: "{{ out_dir }}/token"
        content: "{{ api_token }}"
        mode: "0600"
      no_log: true
"""


def grep_tree(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_secret_extravar_reaches_the_host_but_not_the_run_record(tmp_path, runs_dir, local_host, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SENTINEL)
    monkeypatch.setenv("ANSIBLE_BECOME_PASS", ENV_SENTINEL)
    play = tmp_path / "play.yml"
    play.write_text(PLAYBOOK)
    out = tmp_path / "out"
    out.mkdir()
    inventory = {"all": {"hosts": {"here": local_host}, "vars": {"out_dir": str(out)}}}
    events: list[dict] = []
    result = engine.run_playbook(play, inventory, extravars={"api_token": SENTINEL}, on_event=events.append)
    assert result.exit_code == 0
    assert (out / "token").read_text() == SENTINEL  # the secret was really used
    assert (result.artifact_dir / "command").is_file() and events
    assert grep_tree(runs_dir, SENTINEL) == []
    assert grep_tree(runs_dir, ENV_SENTINEL) == []
    assert SENTINEL not in repr(events)


def test_provision_keeps_e_values_out_of_output_and_records(tmp_path, runs_dir, local_host):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"here": local_host}}}))
    result = CliRunner().invoke(main, ["provision", "-i", str(inventory), "--plain", "--only", "plan", "-e", "plan_force=true",
                                         "-e", f"hf_token={SENTINEL}"])
    assert result.exit_code == 0, result.output
    assert "Run record:" in result.output
    assert SENTINEL not in result.output
    assert len(list(runs_dir.iterdir())) == 2  # the connection check and site.yml
    assert grep_tree(runs_dir, SENTINEL) == []
