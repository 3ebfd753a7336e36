"""The variables a run reads (roles' defaults, Ansible's connection variables) and the checks of
values users set with -e: the same for `provision` and `render`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ktdeploy import variables
from ktdeploy.cli import main
from ktdeploy.errors import BadInput


def test_known_variables_are_the_role_defaults_and_ansible_connection_variables():
    names = variables.known()
    assert {"plan_port", "serve_api_port", "base_model_dir", "model_download_hf_endpoint"} <= names
    assert {"ansible_host", "ansible_port", "ansible_user", "ansible_become_password"} <= names


def test_warnings_name_the_closest_known_variable():
    assert variables.unknown_warnings(["plan_prot", "serve_model_name"]) == [
        "warning: -e plan_prot is not a variable of any role; did you mean plan_port?"]
    assert variables.unknown_warnings(["zzqq"]) == [
        "warning: -e zzqq is not a variable of any role (roles/*/defaults/main.yml lists them)"]


@pytest.mark.parametrize("values", [{"plan_port": "abc"}, {"serve_api_port": "70000"}, {"serve_api_port": ""},
                                    {"serve_webui_port": True}, {"ansible_ssh_port": "-1"}])
def test_port_variables_must_be_ports(values):
    with pytest.raises(BadInput, match="is not a port"):
        variables.check_ports(values)


@pytest.mark.parametrize("values", [{"plan_port": ""}, {"plan_port": "8000"}, {"serve_api_port": 9000},
                                    {"serve_api_port": "{{ base_port + 1 }}"}, {"other": "abc"}])
def test_ports_and_templates_pass(values):
    variables.check_ports(values)


def test_render_checks_and_warns_like_provision():
    r = CliRunner().invoke(main, ["render", "demo", "-e", "serve_api_port=abc"])
    assert r.exit_code == 2 and "-e serve_api_port='abc' is not a port" in r.output
    r = CliRunner().invoke(main, ["render", "demo", "--profile", "cpu-demo", "-e", "serve_api_prot=9000"])
    assert r.exit_code == 0, r.output
    assert "warning: -e serve_api_prot is not a variable of any role; did you mean serve_api_port?" in r.stderr
    assert "warning" not in r.stdout
