"""Filters for the rollout gate: the probe `ktdeploy status` runs, and its judgement (ktdeploy.status)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ktdeploy import status
except ImportError:  # plain ansible-playbook from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ktdeploy import status


def hostside(name: str) -> str:
    """Path of a host-side script shipped with ktdeploy (e.g. status_probe.py), for ansible.builtin.script."""
    from importlib.resources import files

    return str(files("ktdeploy.hostside").joinpath(name))


def probe_config(hostvars: dict, deep: bool = True) -> dict:
    return status.probe_config_from(dict(hostvars or {}), deep=bool(deep))


def judge(stdout: str, stderr: str = "", name: str = "host") -> dict:
    """{verdict, summary, checks} for the probe's output: what `ktdeploy status` would say."""
    s = status.judge_output(name, stdout or "", stderr or "")
    return {"verdict": s.verdict, "summary": s.summary(), "checks": [c.__dict__ for c in s.checks]}


class FilterModule:
    def filters(self):
        return {
            "ktdeploy_hostside": hostside,
            "ktdeploy_probe_config": probe_config,
            "ktdeploy_status_judge": judge,
        }
