"""The role variables a play would see for one host, resolved here without Ansible.

Variables are layered as Ansible layers them for `playbooks/site.yml`: the role defaults, the roles'
vars, then the host's inventory vars, profile extra-vars and `-e` values, which win (in Ansible a
role's vars/main.yml beats inventory vars; those are internals nobody sets). Values are resolved
lazily, like Ansible's, so `{{ base_data_dir }}/models` follows an inventory that sets only
`base_data_dir`, with the same filter plugins the roles use.

`ktdeploy provision` plans from these (the plan role's variables), and `ktdeploy render` renders the
serve role's templates from them: what a role computes is computed in one place, its defaults.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
from collections.abc import Mapping
from functools import cache

import jinja2
import yaml
from jinja2.nativetypes import NativeEnvironment, native_concat

from ktdeploy import layout, resources
from ktdeploy.errors import BadInput

# Later layers win, as in a play that applies these roles in site.yml's order.
ROLE_LAYERS = (
    ("plan", "defaults"),
    ("base", "defaults"),
    ("python_env", "defaults"),
    ("python_env", "vars"),
    ("model_download", "defaults"),
    ("serve", "defaults"),
    ("serve", "vars"),
)


def _combine(*dicts: Mapping, recursive: bool = False) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            if recursive and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
                out[k] = _combine(out[k], v, recursive=True)
            else:
                out[k] = v
    return out


def truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def _regex_replace(value, pattern: str = "", replacement: str = "") -> str:
    return re.sub(pattern, re.sub(r"\\(\d)", r"\\\1", replacement), str(value), flags=re.M)


ANSIBLE_LIKE_FILTERS = {
    "combine": _combine,
    "bool": truthy,
    "regex_replace": _regex_replace,
    "dirname": os.path.dirname,
    "basename": os.path.basename,
    "b64decode": lambda s: base64.b64decode(s).decode(),
    "difference": lambda a, b: [x for x in a if x not in b],
    "unique": lambda a: list(dict.fromkeys(a)),
}


@cache
def plugin_filters() -> dict:
    """Every filter of playbooks/filter_plugins/, as the roles get them."""
    found: dict = {}
    for path in sorted((resources.playbooks_dir() / "filter_plugins").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"ktdeploy_filters_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.update(module.FilterModule().filters())
    return found


def environment(cls=jinja2.Environment):
    env = cls(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
    env.filters.update({**ANSIBLE_LIKE_FILTERS, **plugin_filters()})
    env.tests["match"] = lambda value, pattern: re.match(pattern, str(value)) is not None
    return env


@cache
def _native_environment():
    return environment(NativeEnvironment)


@cache
def _compiled(source: str):
    return _native_environment().from_string(source)


class LazyVars(Mapping):
    """Variables whose string values are templates, rendered on first access (cycles reported)."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.done: dict = {}
        self.busy: set[str] = set()

    def __getitem__(self, key):
        if key in self.done:
            return self.done[key]
        if key not in self.raw:
            raise KeyError(key)
        if key in self.busy:
            raise BadInput(f"variable {key} refers to itself", hint="break the loop in your variables")
        self.busy.add(key)
        try:
            value = self._resolve(self.raw[key], key)
        finally:
            self.busy.discard(key)
        self.done[key] = value
        return value

    def _resolve(self, value, key):
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            try:
                tmpl = _compiled(value)
                out = native_concat(tmpl.root_render_func(tmpl.new_context(self, shared=True)))
            except jinja2.UndefinedError as e:
                raise BadInput(f"variable {key}: {e}", hint="define it in the inventory, a profile or with -e KEY=VALUE") from e
            return self._resolve(out, key) if isinstance(out, str) and "{{" in out else out
        if isinstance(value, dict):
            return {k: self._resolve(v, key) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, key) for v in value]
        return value

    def __iter__(self):
        return iter(self.raw)

    def __len__(self):
        return len(self.raw)


def role_layers() -> dict:
    paths = [resources.roles_dir() / role / kind / "main.yml" for role, kind in ROLE_LAYERS]
    return dict(_parsed_layers(tuple((p, p.stat().st_mtime_ns) for p in paths if p.is_file())))


@cache
def _parsed_layers(files: tuple) -> dict:
    """Parsed once per process (per file version): a fleet asks for every host's variables."""
    merged: dict = {}
    for path, _mtime in files:
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def host_vars(hostname: str, overrides: Mapping, plan: dict | None = None) -> LazyVars:
    """The variables of `hostname` with `overrides` (inventory vars, profile, -e) and, for the roles
    after `plan`, `ktdeploy_plan` (the plan's dict; without one, variables that read it fail)."""
    raw = role_layers()
    raw.update(
        {
            "inventory_hostname": hostname,
            "playbook_dir": str(resources.playbooks_dir()),
            "ansible_facts": {},
            "ansible_check_mode": False,
        }
    )
    if plan is not None:
        raw["ktdeploy_plan"] = plan
    raw.update(overrides)
    return LazyVars(raw)


def plan_settings(hostname: str, overrides: Mapping) -> dict:
    """The plan role's settings for this host, as the role resolves them (roles/plan/defaults):
    variant, engine, kt_version, port, model_dir, python_env, force."""
    v = host_vars(hostname, overrides)
    port = v["plan_port"]
    return {
        "variant": v["plan_model_variant"] or None,
        "engine": v["plan_engine"] or layout.KTRANSFORMERS,
        "kt_version": v["plan_kt_version"] or None,
        "port": int(port) if port not in (None, "") else None,
        "model_dir": str(v["plan_model_dir"]),
        "python_env": str(v["plan_python_env"] or ""),
        "force": truthy(v["plan_force"]),
    }
