"""Fixtures for unit tests that run real playbooks against this machine (local connection)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """Run records (and Ansible's fact cache) go to a temp dir instead of ~/.cache/ktdeploy."""
    path = tmp_path / "runs"
    monkeypatch.setenv("KTDEPLOY_RUNS_DIR", str(path))
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN_CONNECTION", str(tmp_path / "facts"))
    return path


@pytest.fixture
def local_host() -> dict:
    """Ansible variables for a host that is this machine, reached without SSH."""
    return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """The tiny DeepSeek-V3 of ktdeploy/lab/tiny_dsv3.py, both expert profiles, written once per session."""
    from ktdeploy.lab import tiny_dsv3

    root = tmp_path_factory.mktemp("tiny-dsv3")
    return {p: tiny_dsv3.write(root / p, p) for p in tiny_dsv3.PROFILES}


@pytest.fixture
def engine_calls(monkeypatch):
    """Fails the test if bad input let anything reach a host or Ansible."""
    from ktdeploy import engine, provisioning

    calls = []
    monkeypatch.setattr(provisioning.connect, "check_hosts", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(provisioning, "preflight_or_raise", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(engine, "run_playbook", lambda *a, **k: calls.append(a))
    return calls
