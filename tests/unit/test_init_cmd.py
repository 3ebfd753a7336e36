"""`ktdeploy init DIR` copies the sample inventory and never overwrites a file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ktdeploy.cli import init_cmd, main


@pytest.fixture
def sample(tmp_path, monkeypatch):
    root = tmp_path / "sample"
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text("all:\n  hosts: {}\n")
    (root / "group_vars" / "all" / "main.yml").write_text("# documented settings\n")
    monkeypatch.setattr(init_cmd, "sample_inventory", lambda: root)
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
    monkeypatch.setattr(init_cmd, "sample_inventory", lambda: tmp_path / "absent")
    result = CliRunner().invoke(main, ["init", str(tmp_path / "x")])
    assert result.exit_code == 1 and "sample inventory" in result.output
