"""Local preview of the files the serve role writes: the same templates, rendered with Jinja2.

Variables are layered as Ansible layers them for a play: role defaults (base, python_env, serve),
the serve role's vars, then inventory host vars, profile extra-vars and `-e` values, which win.
Values are resolved lazily, like Ansible's, so `{{ base_data_dir }}/models` follows an override.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping

import jinja2
import yaml
from jinja2.nativetypes import NativeEnvironment, native_concat

from ktdeploy import resources, serving
from ktdeploy.errors import BadInput

ROLE_LAYERS = (("base", "defaults"), ("python_env", "defaults"), ("serve", "defaults"), ("serve", "vars"))


def _combine(*dicts: Mapping, recursive: bool = False) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            if recursive and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
                out[k] = _combine(out[k], v, recursive=True)
            else:
                out[k] = v
    return out


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def _regex_replace(value, pattern: str = "", replacement: str = "") -> str:
    return re.sub(pattern, re.sub(r"\\(\d)", r"\\\1", replacement), str(value), flags=re.M)


ANSIBLE_LIKE_FILTERS = {
    "combine": _combine,
    "bool": _bool,
    "regex_replace": _regex_replace,
    "dirname": os.path.dirname,
    "basename": os.path.basename,
    "b64decode": lambda s: base64.b64decode(s).decode(),
    "difference": lambda a, b: [x for x in a if x not in b],
    "unique": lambda a: list(dict.fromkeys(a)),
}


def _filters() -> dict:
    import importlib.util

    path = resources.playbooks_dir() / "filter_plugins" / "ktdeploy_serve.py"
    spec = importlib.util.spec_from_file_location("ktdeploy_serve_filters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {**ANSIBLE_LIKE_FILTERS, **module.filters()}


def _env(cls):
    env = cls(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
    env.filters.update(_filters())
    env.tests["match"] = lambda value, pattern: re.match(pattern, str(value)) is not None
    return env


class LazyVars(Mapping):
    """Variables whose string values are templates, rendered on first access (cycles reported)."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.done: dict = {}
        self.busy: set[str] = set()
        self.native = _env(NativeEnvironment)

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
                tmpl = self.native.from_string(value)
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
    merged: dict = {}
    for role, kind in ROLE_LAYERS:
        path = resources.roles_dir() / role / kind / "main.yml"
        if path.is_file():
            merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def host_vars(hostname: str, overrides: dict) -> LazyVars:
    raw = role_layers()
    raw.update(
        {
            "inventory_hostname": hostname,
            "playbook_dir": str(resources.playbooks_dir()),
            "ansible_facts": {},
            "ansible_check_mode": False,
            # No host facts here: the serve defaults fall back to their values without a plan.
            "ktdeploy_plan": {"serve": {}, "build": {}},
        }
    )
    raw.update(overrides)
    return LazyVars(raw)


def rendered_files(hostname: str, overrides: dict) -> dict[str, str]:
    """Destination path on the host → content, for every unit, program and environment file."""
    v = host_vars(hostname, overrides)
    env = _env(jinja2.Environment)
    env.loader = jinja2.FileSystemLoader(str(resources.templates_dir()))

    def render(name: str, **extra) -> str:
        tmpl = env.get_template(name)
        return "".join(tmpl.root_render_func(tmpl.new_context(_Overlay(extra, v), shared=True)))

    manager = v["serve_service_manager"]
    manager = "systemd" if manager == "auto" else manager
    services = [_api_item(v)]
    if _bool(v["serve_webui_enabled"]):
        services.append(_webui_item(v))
    files: dict[str, str] = {}
    for item in services:
        env_text = render("service.env.j2", item=item)
        files[f"{v['serve_config_dir']}/{item['name']}.env"] = _mask_secrets(env_text, v)
        if manager == "supervisord":
            files[f"/etc/supervisor/conf.d/{item['name']}.conf"] = render("supervisor-program.conf.j2", item=item)
        else:
            files[f"/etc/systemd/system/{item['name']}.service"] = render(item["unit_template"])
    return files


def _api_item(v: LazyVars) -> dict:
    return {
        "name": v["serve_api_service"],
        "unit_template": "ktransformers.service.j2" if v["serve_engine"] == "ktransformers" else "llama-server.service.j2",
        "argv": v["serve_api_argv"],
        "env": v["serve_api_env_all"],
        "env_files": v["serve_api_env_files"],
        "home": v["serve_api_home"],
        "stop_timeout": 120,
    }


def _webui_item(v: LazyVars) -> dict:
    return {
        "name": v["serve_webui_service"],
        "unit_template": "open-webui.service.j2",
        "argv": v["serve_webui_argv"],
        "env": v["serve_webui_env_all"],
        "env_files": v["serve_webui_env_files"],
        "home": v["serve_webui_data_dir"],
        "stop_timeout": 30,
    }


def _mask_secrets(text: str, v: LazyVars) -> str:
    secrets = [s for s in (v["serve_api_key"], v["serve_webui_admin_password"]) if s]
    for s in secrets:
        text = text.replace(serving.env_file_value(s), "'********'")
    return text


class _Overlay(Mapping):
    def __init__(self, top: dict, base: Mapping):
        self.top, self.base = top, base

    def __getitem__(self, key):
        return self.top[key] if key in self.top else self.base[key]

    def __iter__(self):
        return iter({**dict.fromkeys(self.base), **self.top})

    def __len__(self):
        return len(set(self.base) | set(self.top))
