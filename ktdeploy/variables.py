"""The variables a run of site.yml reads: the roles' documented defaults (`roles/*/defaults/main.yml`,
the contract of each role) and Ansible's connection variables."""

from __future__ import annotations

from functools import cache

import yaml

from ktdeploy.resources import roles_dir


@cache
def role_defaults(role: str) -> dict:
    """One role's defaults/main.yml as data (values untemplated)."""
    return yaml.safe_load((roles_dir() / role / "defaults" / "main.yml").read_text()) or {}
