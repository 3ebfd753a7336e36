"""`ktdeploy provision`: bad input is refused with exit 2 before anything runs; real runs on this
machine (local connection) and a refused SSH port on loopback."""

from __future__ import annotations

import socket

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy import engine, provisioning
from ktdeploy.cli import main

SITE = """
- name: Provision
  hosts: all
  roles:
    - role: plan
      tags: [plan, always]
    - role: base
      tags: [base]
    - {role: python_env, tags: python_env}
"""


@pytest.fixture
def site_tags(tmp_path, monkeypatch):
    (tmp_path / "site.yml").write_text(SITE)
    monkeypatch.setattr(provisioning, "playbooks_dir", lambda: tmp_path)


def run(*args):
    return CliRunner().invoke(main, ["provision", *args])


def test_role_tags_are_read_from_site_yml(site_tags):
    assert provisioning.site_role_tags() == ["base", "plan", "python_env"]  # Ansible's `always` is no role


@pytest.mark.parametrize(("args", "message"), [
    ([], "no target given"),
    (["-i", "inv.yml", "host1"], "not both"),
    (["bad host!"], "cannot read target 'bad host!'"),
    (["a", "--limit", "b"], "--limit names host(s) not given: b"),
    (["a", "--only", "base,gpu"], "--only: unknown role(s) gpu"),
    (["a", "--skip", "nope"], "--skip: unknown role(s) nope"),
    (["a", "-e", "novalue"], "-e 'novalue' is not KEY=VALUE"),
    (["a", "--profile", "gpu-turbo"], "unknown profile 'gpu-turbo'"),
    (["a", "--only", "base,python_env", "--skip", "base"], "base is named by both --only and --skip"),
    (["a", "--skip", "plan"], "--skip plan: the plan role cannot be skipped"),
    (["a", "--only", "always"], "--only: unknown role(s) always"),
    (["a", "--skip", "always"], "--skip: unknown role(s) always"),
])
def test_bad_input_exits_2_before_anything_runs(args, message, site_tags, engine_calls):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert engine_calls == []


def test_unknown_role_lists_the_valid_ones(site_tags, engine_calls):
    assert "use roles from playbooks/site.yml: base, plan, python_env" in run("a", "--only", "gpu").output


def test_malformed_inventory_exits_2(tmp_path, engine_calls):
    bad = tmp_path / "hosts.yml"
    bad.write_text("all:\n  hosts: [unclosed\n")
    result = run("-i", str(bad))
    assert result.exit_code == 2 and f"inventory {bad} cannot be read" in result.output
    assert engine_calls == []


def test_limit_naming_a_host_not_in_the_inventory_exits_2(tmp_path, engine_calls):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"gpu1": {}, "gpu2": {}}}}))
    result = run("-i", str(inv), "--limit", "gpu3")
    assert result.exit_code == 2 and "gpu3 not in inventory" in result.output and "gpu1, gpu2" in result.output
    assert engine_calls == []


def test_valid_request_maps_roles_to_tags_and_check_to_check_with_diff(site_tags, engine_calls, monkeypatch):
    captured = {}
    monkeypatch.setattr(engine, "run_playbook", lambda pb, inv, **kw: captured.update(kw, pb=pb) or stop())
    result = run("root@10.0.0.1:2222", "admin@gpu2", "--limit", "10.0.0.1:2222", "--only", "base",
                 "--skip", "python_env", "-e", "a=1", "--check", "--plain")
    assert result.exit_code == 99, result.output
    assert captured["pb"] == "site.yml" and captured["tags"] == ["base"] and captured["skip_tags"] == ["python_env"]
    assert captured["check"] and captured["diff"] and captured["extravars"] == {"a": "1"}
    assert list(engine_calls[0][0]["all"]["children"]["ktdeploy"]["hosts"]) == ["10.0.0.1:2222"]


def stop():
    raise SystemExit(99)


def test_refused_ssh_exits_3_with_one_line_and_runs_nothing_else(runs_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(f"root@127.0.0.1:{port}", "--plain")
    assert result.exit_code == 3, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("127.0.0.1")]
    assert lines == [f"127.0.0.1: SSH refused the connection on port {port} (fix: start sshd on the host, "
                     "or name the right port as USER@HOST:PORT)"]
    assert [p.name.split("-", 1)[1] for p in runs_dir.iterdir()][0].startswith("connect-check")
    assert len(list(runs_dir.iterdir())) == 1


def test_reachable_host_is_provisioned_with_recap(tmp_path, runs_dir, local_host):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"here": local_host}}}))
    result = run("-i", str(inv), "--plain", "--check", "--only", "plan", "-e", "plan_force=true")
    assert result.exit_code == 0, result.output
    assert "PLAY Provision ktdeploy hosts" in result.output and "Recap" in result.output
    site_run = next(p for p in runs_dir.iterdir() if "-site-" in p.name)
    assert f"Run record: {site_run}" in result.output
    assert "--check" in (site_run / "command").read_text()


def test_profile_settings_reach_the_playbook_and_e_wins(site_tags):
    request = provisioning.build_request(("a",), None, (), (), (), ("serve_api_port=9000",), False, "cpu-demo")
    assert request.extravars["plan_engine"] == "llama.cpp"
    assert request.extravars["serve_llamacpp_chat_format"] == "gemma"
    assert request.extravars["serve_api_port"] == "9000"


def test_plan_problems_stop_before_anything_changes(tmp_path, runs_dir, local_host):
    """This machine has no NVIDIA GPU: the live preflight refuses (exit 4) and site.yml never runs."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"here": local_host}}}))
    result = run("-i", str(inv), "--plain")
    assert result.exit_code == 4, result.output
    assert "here: the KTransformers engine needs an NVIDIA GPU" in result.output
    assert "--force" in result.output
    assert not any("-site-" in p.name for p in runs_dir.iterdir())


def test_force_goes_on_and_tells_the_play(tmp_path, runs_dir, local_host, monkeypatch):
    captured = {}
    monkeypatch.setattr(provisioning.connect, "check_hosts", lambda *a, **k: [])
    monkeypatch.setattr(engine, "run_playbook", lambda pb, inv, **kw: captured.update(kw) or stop())
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"here": local_host}}}))
    result = run("-i", str(inv), "--plain", "--force")
    assert result.exit_code == 99, result.output
    assert "problem (forced past)" in result.output
    assert captured["extravars"]["plan_force"] is True


@pytest.mark.parametrize("command", ["provision", "status", "preflight", "download"])
@pytest.mark.parametrize("port", ["abc", 99999])
def test_inventory_port_that_is_no_port_exits_2_before_anything_runs(tmp_path, engine_calls, command, port):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"gpu1": {"ansible_host": "127.0.0.1", "ansible_port": port}}}}))
    result = CliRunner().invoke(main, [command, "-i", str(inv)])
    assert result.exit_code == 2, result.output
    assert f"gpu1: ansible_port {str(port)!r} in inventory {inv} is not a port" in result.output
    assert engine_calls == []


@pytest.mark.parametrize(("pair", "message"), [
    ("plan_port=abc", "-e plan_port='abc' is not a port"),
    ("plan_port=70000", "-e plan_port='70000' is not a port"),
    ("serve_api_port=abc", "-e serve_api_port='abc' is not a port"),
    ("serve_webui_port=0", "-e serve_webui_port='0' is not a port"),
    ("ansible_port=22x", "-e ansible_port='22x' is not a port"),
])
def test_a_port_variable_that_is_no_port_exits_2_before_anything_runs(pair, message, site_tags, engine_calls):
    result = run("a", "-e", pair)
    assert result.exit_code == 2, result.output
    assert message in result.output and "fix: use a number from 1 to 65535" in result.output
    assert engine_calls == []


def test_an_inventory_port_variable_that_is_no_port_exits_2(tmp_path, site_tags, engine_calls):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"gpu1": {"plan_port": "abc"}}}}))
    result = run("-i", str(inv))
    assert result.exit_code == 2, result.output
    assert f"gpu1: plan_port 'abc' in inventory {inv} is not a port" in result.output
    assert engine_calls == []


def test_empty_plan_port_means_the_default(site_tags, engine_calls, monkeypatch):
    monkeypatch.setattr(engine, "run_playbook", lambda *a, **k: stop())
    assert run("a", "-e", "plan_port=", "-e", "serve_api_port=9000").exit_code == 99


def test_unknown_variable_warns_naming_the_closest_known_one_and_goes_on(site_tags, engine_calls, monkeypatch):
    monkeypatch.setattr(engine, "run_playbook", lambda *a, **k: stop())
    result = run("a", "-e", "serve_api_prot=9000", "-e", "zzqq=1", "-e", "ansible_user=admin", "-e", "plan_force=true")
    assert result.exit_code == 99, result.output
    assert "warning: -e serve_api_prot is not a variable of any role; did you mean serve_api_port?" in result.output
    assert "warning: -e zzqq is not a variable of any role" in result.output
    assert "ansible_user" not in result.output and "plan_force" not in result.output


@pytest.mark.parametrize(("hostvars", "model_dir", "python"), [
    ({}, "/srv/ktdeploy/models", "/srv/ktdeploy/venv-env/bin/python"),
    ({"base_data_dir": "/data"}, "/data/models", "/data/venv-env/bin/python"),
    ({"base_data_dir": "/data", "base_model_dir": "{{ base_data_dir }}/big"}, "/data/big", "/data/venv-env/bin/python"),
    ({"plan_model_dir": "/nvme/m", "python_env_backend": "conda"}, "/nvme/m", "/srv/ktdeploy/conda-env/bin/python"),
])
def test_preflight_measures_the_model_dir_the_roles_compute(tmp_path, hostvars, model_dir, python):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"gpu1": hostvars}}}))
    request = provisioning.build_request((), str(inv), (), (), (), (), False)
    options = provisioning.plan_options(request, request.targets[0])
    assert (options.model_dir, options.python_env) == (model_dir, python)
