"""Local preview of the files the serve role writes: the same templates, rendered with Jinja2.

Variables are the role variables a play would see for the host (`ktdeploy.rolevars`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jinja2

from ktdeploy import resources, rolevars, serving


def host_vars(hostname: str, overrides: dict) -> rolevars.LazyVars:
    # No host facts here: the serve defaults fall back to their values without a plan.
    return rolevars.host_vars(hostname, overrides, {"serve": {}, "build": {}})


def rendered_files(hostname: str, overrides: dict) -> dict[str, str]:
    """Destination path on the host → content, for every unit, program and environment file."""
    v = host_vars(hostname, overrides)
    env = rolevars.environment()
    env.loader = jinja2.FileSystemLoader(str(resources.templates_dir()))

    def render(name: str, **extra) -> str:
        tmpl = env.get_template(name)
        return "".join(tmpl.root_render_func(tmpl.new_context(_Overlay(extra, v), shared=True)))

    manager = v["serve_service_manager"]
    manager = "systemd" if manager == "auto" else manager
    services = [_api_item(v)]
    if rolevars.truthy(v["serve_webui_enabled"]):
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


def _api_item(v: rolevars.LazyVars) -> dict:
    return {
        "name": v["serve_api_service"],
        "unit_template": "ktransformers.service.j2" if v["serve_engine"] == "ktransformers" else "llama-server.service.j2",
        "argv": v["serve_api_argv"],
        "env": v["serve_api_env_all"],
        "env_files": v["serve_api_env_files"],
        "home": v["serve_api_home"],
        "stop_timeout": 120,
    }


def _webui_item(v: rolevars.LazyVars) -> dict:
    return {
        "name": v["serve_webui_service"],
        "unit_template": "open-webui.service.j2",
        "argv": v["serve_webui_argv"],
        "env": v["serve_webui_env_all"],
        "env_files": v["serve_webui_env_files"],
        "home": v["serve_webui_data_dir"],
        "stop_timeout": 30,
    }


def _mask_secrets(text: str, v: rolevars.LazyVars) -> str:
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
