"""Static inventories are read by ansible-inventory once per content; dynamic or vaulted ones always."""

import subprocess

import pytest

from ktdeploy import inventory_cache
from ktdeploy.targets import targets_from_inventory

INV = "all:\n  hosts:\n    gpu1: {ansible_host: 10.0.0.5, ansible_user: deploy}\n"


@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    real = subprocess.run

    def run(argv, *a, **kw):
        calls.append(argv)
        return real(argv, *a, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_static_inventory_is_read_once_per_content(tmp_path, counted):
    inv = tmp_path / "hosts.yml"
    inv.write_text(INV)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("ansible_port: 2222\n")
    first = targets_from_inventory(inv)
    assert targets_from_inventory(inv) == first and len(counted) == 1
    assert first[0].port == 2222
    (tmp_path / "group_vars" / "all.yml").write_text("ansible_port: 2200\n")  # a change beside it counts
    assert targets_from_inventory(inv)[0].port == 2200 and len(counted) == 2


def test_cache_file_is_private(tmp_path, counted):
    inv = tmp_path / "hosts.yml"
    inv.write_text(INV)
    targets_from_inventory(inv)
    (cached,) = (tmp_path / "cache" / "ktdeploy" / "inventory").glob("*.json")
    assert cached.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "name, text, mode",
    [
        ("hosts.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n", 0o644),
        ("inv.aws_ec2.yml", "plugin: amazon.aws.aws_ec2\n", 0o644),
        ("hosts.sh", "#!/bin/sh\necho '{}'\n", 0o755),
    ],
)
def test_dynamic_or_vaulted_inventories_are_not_cached(tmp_path, name, text, mode):
    inv = tmp_path / name
    inv.write_text(text)
    inv.chmod(mode)
    assert inventory_cache.key(inv) is None
