"""Filters that hand roles the decisions of ktdeploy.plan (the rules live there, never in YAML).

    plan_raw_facts.stdout | ktdeploy_plan(variant=..., engine=..., kt_version=..., port=...)
    base_model_dir | ktdeploy_facts_script(python_env_python)
    'DeepSeek-V3-Chat-torch-linear.yaml' | ktdeploy_rule_file
"""

from __future__ import annotations

from ktdeploy import facts, plan


def ktdeploy_facts_script(model_dir, python_env=""):
    """The batched facts script, for ansible.builtin.shell with executable /bin/bash."""
    return facts.facts_script(str(model_dir), str(python_env or ""))


def ktdeploy_plan(stdout, variant=None, engine="ktransformers", kt_version=None, port=None, host=None):
    """The plan (docs/plan.md) made from the facts script's output."""
    raw, errors = facts.parse_stream(str(stdout))
    return plan.make_plan(
        facts.parse(raw, errors),
        variant or None,
        engine=engine or "ktransformers",
        kt_version=kt_version or None,
        port=int(port) if port else None,
        host=host,
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
