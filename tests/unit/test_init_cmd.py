"""`ktdeploy init DIR` copies the sample inventory and never overwrites a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ktdeploy import starter
from ktdeploy.cli import main


@pytest.fixture
def sample(tmp_path, monkeypatch):
    root = tmp_path / "sample"
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text("all:\n  hosts: {}\n")
    (root / "group_vars" / "all" / "main.yml").write_text("# documented settings\n")
    monkeypatch.setattr(starter, "sample_inventory", lambda: root)
    return root


def test_init_writes_the_sample_and_next_steps(sample, tmp_path):
    dest = tmp_path / "site-inv"
    result = CliRunner().invoke(main, ["init", str(dest)])
    assert result.exit_code == 0, result.output
    assert (dest / "hosts.yml").read_text() == "all:\n  hosts: {}\n"
    assert (dest / "group_vars" / "all" / "main.yml").is_file()
    assert f"ktdeploy provision -i {dest}" in result.output and f"{dest / 'hosts.yml'}" in result.output


def test_init_refuses_to_overwrite_and_writes_nothing(sample, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "hosts.yml").write_text("mine\n")
    result = CliRunner().invoke(main, ["init", str(dest)])
    assert result.exit_code == 2
    assert f"{dest / 'hosts.yml'}" in result.output and "nothing was written" in result.output
    assert (dest / "hosts.yml").read_text() == "mine\n"
    assert not (dest / "group_vars").exists()


def test_init_into_a_file_is_bad_input(sample, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert CliRunner().invoke(main, ["init", str(target)]).exit_code == 2


def test_missing_sample_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(starter, "sample_inventory", lambda: tmp_path / "absent")
    result = CliRunner().invoke(main, ["init", str(tmp_path / "x")])
    assert result.exit_code == 1 and "sample inventory" in result.output


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_init_into_an_impossible_path_is_bad_input_and_writes_nothing(sample, tmp_path, where):
    (tmp_path / "file").write_text("x")
    dest = tmp_path / "file" / "inv" if where == "under-a-file" else Path("/proc/ktdeploy-nope/inv")
    result = CliRunner().invoke(main, ["init", str(dest)])
    assert result.exit_code == 2, result.output
    assert f"cannot write the inventory into {dest}" in result.output and "fix: " in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert (tmp_path / "file").read_text() == "x"
