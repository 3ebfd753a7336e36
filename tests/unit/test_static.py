"""Static checks of the playbooks and roles: syntax, ansible-lint (production), the documented contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ktdeploy.resources import ansible_bin

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").is_file())
# Roles a site.yml play applies (stage_record is included by the others, not applied on its own).
SITE_ROLES = ["base", "python_env", "cuda", "torch", "ktransformers", "serve"]


def _env() -> dict:
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}


def _defaults(role: str) -> list[str]:
    """Top-level variable names of a role's defaults/main.yml, in file order."""
    text = (REPO / "roles" / role / "defaults" / "main.yml").read_text()
    return re.findall(r"^([a-z_][a-z0-9_]*):", text, flags=re.M)


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_playbook_passes_syntax_check(playbook):
    proc = subprocess.run(
        [ansible_bin("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(playbook)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile_passes():
    config = yaml.safe_load((REPO / ".ansible-lint").read_text())
    assert config["profile"] == "production"
    proc = subprocess.run(
        [ansible_bin("ansible-lint"), "--offline", "--nocolor", "-c", str(REPO / ".ansible-lint")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_every_lint_skip_has_a_written_reason():
    lines = (REPO / ".ansible-lint").read_text().splitlines()
    config = yaml.safe_load("\n".join(lines))
    for rule in config.get("skip_list", []) + config.get("warn_list", []):
        line = next(line for line in lines if re.match(rf"\s*-\s*{re.escape(rule)}\b", line))
        assert "#" in line and line.split("#", 1)[1].strip(), f"{rule} is skipped without a reason"


def test_site_yml_applies_each_role_under_its_own_tag():
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    assert len(plays) == 1
    roles = plays[0]["roles"]
    names = [r["role"] for r in roles]
    assert names.index("base") < names.index("python_env")
    for role in roles:
        assert role["tags"][0] == role["role"]


@pytest.mark.parametrize("role", ROLES)
def test_role_ships_readme_meta_and_prefixed_defaults(role):
    base = REPO / "roles" / role
    assert (base / "README.md").is_file()
    meta = yaml.safe_load((base / "meta" / "main.yml").read_text())
    assert meta["galaxy_info"]["role_name"] == role
    names = _defaults(role)
    assert names, f"{role} has no defaults"
    assert all(n.startswith(role + "_") for n in names), names


@pytest.mark.parametrize("role", ROLES)
def test_readme_documents_every_default_in_order(role):
    """The README's variable table (header `| variable |`) lists the defaults in file order."""
    lines = (REPO / "roles" / role / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variable |"))
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append(line)
    rows = [re.match(r"\| `([a-z_0-9]+)` \|", line).group(1) for line in table]
    assert rows == _defaults(role)


@pytest.mark.parametrize("role", SITE_ROLES)
def test_sample_inventory_documents_every_default_in_order(role):
    sample = (REPO / "inventory" / "sample" / "group_vars" / "all" / f"{role}.yml").read_text()
    documented = re.findall(r"^# ([a-z_][a-z0-9_]*):", sample, flags=re.M)
    assert documented == _defaults(role)
    assert yaml.safe_load(sample) is None, "sample settings must stay commented (defaults live in the role)"


def test_sample_inventory_parses_and_has_a_host():
    data = yaml.safe_load((REPO / "inventory" / "sample" / "hosts.yml").read_text())
    hosts = data["all"]["children"]["ktdeploy"]["hosts"]
    assert hosts and all("ansible_host" in v for v in hosts.values())


# Modules the filter plugins may import beside ansible-core's own needs (jinja2, pyyaml, packaging):
# plain `ansible-playbook` on a controller (or a GPU host converging itself) has no Click, rich or Fabric.
_CLI_ONLY = ("click", "rich", "fabric", "paramiko", "ansible_runner", "openai")


@pytest.mark.parametrize("plugin", sorted((REPO / "playbooks" / "filter_plugins").glob("*.py")), ids=lambda p: p.name)
def test_filter_plugin_loads_without_cli_libraries(plugin):
    blocker = (
        "import sys\n"
        f"for name in {_CLI_ONLY!r}:\n"
        "    sys.modules[name] = None\n"
        "import runpy\n"
        f"ns = runpy.run_path({str(plugin)!r})\n"
        "assert ns['FilterModule']().filters()\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocker], cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
