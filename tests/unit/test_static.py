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


# -- one home for each host-layout decision (ktdeploy/layout.py) ----------------------------------------

import ast  # noqa: E402

from ktdeploy import layout  # noqa: E402

LAYOUT_HOME = REPO / "ktdeploy" / "layout.py"
# The decisions of ktdeploy.layout the roles, templates and modules once spelled each on their own.
SPELLED_ONCE = [layout.DATA_DIR, layout.STATE_DIR, layout.CONFIG_DIR, layout.LOG_DIR, layout.LIBEXEC_DIR,
                layout.LIB_DIR, layout.SUPERVISOR_CONF, layout.SUPERVISOR_PROGRAM_DIR, layout.SUPERVISOR_LOG,
                layout.API_SERVICE, layout.WEBUI_SERVICE, str(layout.API_PORT), str(layout.WEBUI_PORT)]
# Engine names: layout.ENGINES only, never another spelling of the same engine (as a word of its own:
# the task file llamacpp.yml, a venv directory or llama-cpp-python's module `llama_cpp` are names).
OTHER_ENGINE_SPELLINGS = ["llamacpp", "llama-cpp", "llama_cpp"]
CODE_TREES = ["ktdeploy", "playbooks", "roles", "templates", "scripts", "inventory", "ansible.cfg"]


def _literal(text: str):
    left = r"(?<![\w.-])" if text[0].isalnum() else ""
    right = r"(?![\w-])" if text[-1].isalnum() else ""
    return re.compile(left + re.escape(text) + right)


def _word(text: str):
    return re.compile(r"(?<![\w./-])" + re.escape(text) + r"(?![\w./-])")


def _python_strings(source: str) -> list[str]:
    """String and number constants of Python code, docstrings left out."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            docstrings.add(id(body[0].value))
    return [str(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, (str, int)) and id(n) not in docstrings]


def _yaml_strings(data) -> list[str]:
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in _yaml_strings(k) + _yaml_strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in _yaml_strings(v)]
    return [] if data is None else [str(data)]


def _code_strings(path: Path) -> list[str]:
    """What a file says as code: Python constants, YAML values and keys, template text; no comments."""
    text = path.read_text(errors="replace")
    if path.suffix == ".py" or text.startswith("#!/usr/bin/env python") or text.startswith("#!/usr/bin/python"):
        return _python_strings(text)
    if path.suffix in (".yml", ".yaml"):
        return _yaml_strings(yaml.safe_load(text))
    text = re.sub(r"\{#.*?#\}", "", text, flags=re.S)
    return [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]


def _code_files() -> list[Path]:
    out = []
    for name in CODE_TREES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out += [p for p in files if p.suffix not in (".md", ".pyc", ".patch", ".json", ".gguf", ".txt")
                and "__pycache__" not in p.parts and p.name != "series"]
    return out


def _spellings(literals: list[str], pattern=_literal) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {lit: [] for lit in literals}
    patterns = {lit: pattern(lit) for lit in literals}
    for path in _code_files():
        strings = _code_strings(path)
        for lit, pattern in patterns.items():
            if any(pattern.search(s) for s in strings):
                found[lit].append(str(path.relative_to(REPO)))
    return found


def test_each_layout_decision_is_spelled_only_in_its_home():
    found = _spellings(SPELLED_ONCE)
    assert {lit: where for lit, where in found.items() if where != ["ktdeploy/layout.py"]} == {}


def test_engines_have_one_spelling():
    assert layout.ENGINES == ("ktransformers", "llama.cpp")
    assert {lit: where for lit, where in _spellings(OTHER_ENGINE_SPELLINGS, _word).items() if where} == {}


def test_the_spelling_check_finds_a_second_spelling(tmp_path, monkeypatch):
    """The two checks above would catch a literal creeping back into a role, a template or a module."""
    for name, text in {"roles/x/defaults/main.yml": "x_dir: /var/lib/ktdeploy/x\nx_engine: llamacpp\n",
                       "templates/x.j2": "# /var/log/ktdeploy is fine in a comment\nport={{ 8080 }}\n",
                       "ktdeploy/x.py": '"""ktdeploy-api in a docstring is fine."""\nUNIT = "ktdeploy-api.service"\n'}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = _spellings([layout.STATE_DIR, layout.LOG_DIR, str(layout.WEBUI_PORT), layout.API_SERVICE])
    assert found == {layout.STATE_DIR: ["roles/x/defaults/main.yml"], layout.LOG_DIR: [], "8080": ["templates/x.j2"],
                     layout.API_SERVICE: ["ktdeploy/x.py"]}
    assert _spellings(["llamacpp"], _word) == {"llamacpp": ["roles/x/defaults/main.yml"]}


def test_the_longest_first_list_names_lab_modules_that_exist():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_root_conftest", REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    assert conftest.LONGEST_FIRST
    missing = [name for name in conftest.LONGEST_FIRST if not (REPO / "tests" / "integration" / name).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names modules that are gone: {missing}"
