"""Serving filters for the roles: the command lines and quoting rules live in ktdeploy.serving."""

from __future__ import annotations


import sys
from pathlib import Path

try:
    from ktdeploy import serving
except ImportError:  # plain ansible-playbook from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ktdeploy import serving


class FilterModule:
    def filters(self):
        return filters()


def filters() -> dict:
    return {
        "ktdeploy_api_argv": serving.api_argv,
        "ktdeploy_systemd_exec": serving.systemd_exec,
        "ktdeploy_supervisor_command": serving.supervisor_command,
        "ktdeploy_env_value": serving.env_file_value,
        "ktdeploy_env_parse": serving.env_file_parse,
        "ktdeploy_serve_problems": serving.settings_problems,
        "ktdeploy_llamacpp_build_key": serving.llamacpp_build_key,
    }
