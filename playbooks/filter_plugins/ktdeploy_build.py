"""Filters that hand the KTransformers build rules of `ktdeploy.build` to the roles."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ktdeploy import attention_route, build
except ImportError:  # plain ansible-playbook from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ktdeploy import attention_route, build

from ansible.errors import AnsibleFilterError


def _wrap(fn):
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (build.BuildSettingsError, attention_route.RouteError) as exc:
            raise AnsibleFilterError(str(exc)) from exc

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _flash_attn_route(env, mode, wheel=""):
    return attention_route.choose(mode, env, wheel or "").to_dict()


def _stamp(env, source, patches, torch_version):
    return build.stamp(source=source, patches=patches, torch_version=torch_version, env=env)


class FilterModule:
    def filters(self):
        return {
            "ktdeploy_build_settings": _wrap(build.settings),
            "ktdeploy_pip_args_text": build.pip_args_text,
            "ktdeploy_build_env": _wrap(build.build_env),
            "ktdeploy_build_stamp": _wrap(_stamp),
            "ktdeploy_build_steps": _wrap(build.steps),
            "ktdeploy_build_problems": _wrap(build.build_problems),
            "ktdeploy_build_peak_jobs": _wrap(build.peak_jobs),
            "ktdeploy_numa_log_problem": _wrap(build.numa_log_problem),
            "ktdeploy_patch_dir": _wrap(build.version_dir),
            "ktdeploy_sdist_link": _wrap(build.sdist_link),
            "ktdeploy_nvcc_release": _wrap(build.parse_nvcc_release),
            "ktdeploy_driver_toolkit_problem": _wrap(build.driver_toolkit_problem),
            "ktdeploy_patch_series": _wrap(build.load_series),
            "ktdeploy_series_digest": _wrap(build.series_digest),
            "ktdeploy_source_problem": _wrap(build.source_problem),
            "ktdeploy_known_sdist_sha256": lambda version: build.KNOWN_SDIST_SHA256.get(build.version_dir(version), ""),
            "ktdeploy_known_tag_commit": lambda tag: build.KNOWN_TAG_COMMITS.get(tag, ""),
            "ktdeploy_flash_attn_route": _wrap(_flash_attn_route),
            "ktdeploy_attention_probe": lambda _: attention_route.PROBE,
            "ktdeploy_attention_shim_version": lambda _: attention_route.SHIM_VERSION,
        }
