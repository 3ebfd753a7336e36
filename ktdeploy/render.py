"""Local preview of the files the serve role writes: the same templates, rendered with Jinja2.

The variables are the role variables a play would see for the host (`ktdeploy.rolevars`), with
`ktdeploy_plan` the plan provision would make: from the host's facts when it answers (the CLI
gathers them), else `preview_plan`, the plan's facts-free part with placeholders where the plan
needs the hardware. The serve role's setting checks (`serving.settings_problems`) run first.
"""

from __future__ import annotations

from collections.abc import Mapping

import jinja2

from ktdeploy import plan as planning
from ktdeploy import resources, rolevars, serving
from ktdeploy.errors import BadInput

PLACEHOLDER = "FROM-THE-HOSTS-FACTS"  # plain characters: quoted the same way by systemd and shlex


def preview_plan(settings: dict, host: str | None = None) -> dict:
    """The plan for a host that did not answer: `planning.offline_plan` from the plan role's settings
    (`rolevars.plan_settings`), with PLACEHOLDER for what only the host's facts decide."""
    p = planning.offline_plan(settings.get("variant"), engine=settings.get("engine") or planning.ENGINES[0],
                              kt_version=settings.get("kt_version"), port=settings.get("port"), host=host,
                              model_dir=settings.get("model_dir"))
    for part, keys in planning.FROM_FACTS.items():
        for key in keys:
            p[part][key] = PLACEHOLDER
    p["serve"]["supervisor"] = "systemd"  # the preview's default; --manager picks the other
    return p


def host_vars(hostname: str, overrides: dict, plan: dict | None = None) -> rolevars.LazyVars:
    if plan is None:
        plan = preview_plan(rolevars.plan_settings(hostname, overrides), hostname)
    return rolevars.host_vars(hostname, overrides, plan)


def rendered_files(hostname: str, overrides: dict, plan: dict | None = None) -> dict[str, str]:
    """Destination path on the host → content, for every unit, program and environment file.

    plan: the host's plan (`Plan.to_dict()`); None previews with `preview_plan`. Raises BadInput with
    the serve role's own messages when its preflight would refuse these settings."""
    v = host_vars(hostname, overrides, plan)
    problems = serving.settings_problems(v["serve_settings"])
    if problems:
        raise BadInput(" ".join(problems), hint="the serve role refuses these settings too; fix them before provisioning")
    env = rolevars.environment()
    env.loader = jinja2.FileSystemLoader(str(resources.templates_dir()))

    def render(name: str, **extra) -> str:
        tmpl = env.get_template(name)
        return "".join(tmpl.root_render_func(tmpl.new_context(_Overlay(extra, v), shared=True)))

    manager = v["serve_service_manager"]
    manager = v["ktdeploy_plan"]["serve"]["supervisor"] if manager == "auto" else manager
    items = [v["serve_api_item"]] + ([v["serve_webui_item"]] if rolevars.truthy(v["serve_webui_enabled"]) else [])
    files: dict[str, str] = {}
    for item in items:
        files[item["env_file"]] = _mask_secrets(render("service.env.j2", item=item), v)
        if manager == "supervisord":
            files[item["program_file"]] = render("supervisor-program.conf.j2", item=item)
        else:
            files[item["unit_file"]] = render(item["unit_template"])
    return files


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
