"""Filters that hand roles ktdeploy's host layout and names (ktdeploy.layout, their one home).

    'state_dir' | ktdeploy_layout        -> /var/lib/ktdeploy
    base_data_dir | ktdeploy_model_dir   -> <data dir>/models
    serve_log_dir | ktdeploy_service_log(unit) -> <log dir>/<unit>.log (supervisord)
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ktdeploy import layout
except ImportError:  # plain ansible-playbook from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ktdeploy import layout

from ansible.errors import AnsibleFilterError


def ktdeploy_layout(name):
    try:
        return layout.value(name)
    except KeyError as exc:
        raise AnsibleFilterError(str(exc.args[0])) from exc


class FilterModule:
    def filters(self):
        return {
            "ktdeploy_layout": ktdeploy_layout,
            "ktdeploy_model_dir": layout.model_dir,
            "ktdeploy_service_log": layout.service_log,
        }
