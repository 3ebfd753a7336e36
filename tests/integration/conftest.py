"""Fixtures shared by the lab tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Own run records, and own SSH control sockets: a master left from an earlier host at the
    same address must not answer for this one."""
    monkeypatch.setenv("KTDEPLOY_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(tmp_path / "cp"))
    monkeypatch.setenv("ANSIBLE_CACHE_PLUGIN_CONNECTION", str(tmp_path / "facts"))
    return tmp_path
