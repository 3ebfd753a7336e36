"""Filters that hand roles the decisions of ktdeploy.plan (the rules live there, never in YAML).

    plan_raw_facts.stdout | ktdeploy_plan(variant=..., engine=..., kt_version=..., port=..., model_dir=...)
    plan_model_dir | ktdeploy_facts_script(plan_python_env)
    'DeepSeek-V3-Chat-torch-linear.yaml' | ktdeploy_rule_file
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ktdeploy import facts, plan
except ImportError:  # plain ansible-playbook from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ktdeploy import facts, plan


def ktdeploy_facts_script(model_dir, python_env=""):
    """The batched facts script, for ansible.builtin.shell with executable /bin/bash."""
    return facts.facts_script(str(model_dir), str(python_env or ""))


def ktdeploy_plan(stdout, variant=None, engine=None, kt_version=None, port=None, host=None, model_dir=None):
    """The plan (docs/plan.md) made from the facts script's output (gathered for model_dir)."""
    raw, errors = facts.parse_stream(str(stdout))
    return plan.make_plan(
        facts.parse(raw, errors),
        variant or None,
        engine=engine or plan.ENGINES[0],
        kt_version=kt_version or None,
        port=int(port) if port else None,
        host=host,
        model_dir=str(model_dir) if model_dir else None,
    ).to_dict()


def ktdeploy_rule_file(name):
    """Controller path of an optimize rule ktdeploy ships (plan serve.optimize_rule_shipped)."""
    return str(plan.shipped_rule_path(str(name)))


class FilterModule:
    def filters(self):
        return {
            "ktdeploy_plan": ktdeploy_plan,
            "ktdeploy_facts_script": ktdeploy_facts_script,
            "ktdeploy_rule_file": ktdeploy_rule_file,
        }
