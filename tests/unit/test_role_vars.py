"""The role variables other roles and the conda backend rely on, rendered by real Ansible templating."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ktdeploy.resources import ansible_bin

REPO = Path(__file__).resolve().parents[2]


def render(tmp_path: Path, names: list[str], **overrides) -> dict:
    out = tmp_path / "vars.json"
    extra = {"names": names, "out": str(out), **overrides}
    proc = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", "localhost,", str(REPO / "tests/unit/playbooks/render_role_vars.yml"),
         "-e", json.dumps(extra)],
        cwd=REPO, env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_conda_commands_follow_the_tutorial(tmp_path):
    got = render(tmp_path, ["_python_env_conda_install_argv", "_python_env_conda_solver_argv",
                            "_python_env_conda_create_argv", "_python_env_conda_libstdcxx_argv"],
                 python_env_backend="conda")
    conda = "/srv/ktdeploy/miniforge3/bin/conda"
    assert got["_python_env_conda_install_argv"] == [
        "bash", "/srv/ktdeploy/miniforge3-installer.sh", "-b", "-p", "/srv/ktdeploy/miniforge3"]
    assert got["_python_env_conda_solver_argv"] == [
        conda, "install", "--yes", "--name", "base", "conda-libmamba-solver=24.11.0"]
    assert got["_python_env_conda_create_argv"] == [
        conda, "create", "--yes", "--prefix", "/srv/ktdeploy/conda-env", "python=3.11", "pip", "libstdcxx-ng"]
    assert got["_python_env_conda_libstdcxx_argv"] == [
        conda, "install", "--yes", "--prefix", "/srv/ktdeploy/conda-env", "--channel", "conda-forge", "libstdcxx-ng"]


def test_env_paths_follow_the_data_dir_and_backend(tmp_path):
    got = render(tmp_path, ["python_env_path", "python_env_python"], base_data_dir="/data/kt")
    assert got == {"python_env_path": "/data/kt/venv-env", "python_env_python": "/data/kt/venv-env/bin/python"}


def test_pip_args_mirror_every_pip_setting(tmp_path):
    got = render(tmp_path, ["python_env_pip_args"],
                 python_env_pip_index_url="http://mirror.invalid/simple/",
                 python_env_pip_extra_index_urls=["http://extra.invalid/simple/"],
                 python_env_pip_find_links=["/srv/wheels", "http://wheels.invalid/"],
                 python_env_pip_no_index=True,
                 python_env_pip_trusted_hosts=["mirror.invalid"])
    assert got["python_env_pip_args"].split() == [
        "--index-url", "http://mirror.invalid/simple/",
        "--extra-index-url=http://extra.invalid/simple/",
        "--find-links=/srv/wheels", "--find-links=http://wheels.invalid/",
        "--no-index", "--trusted-host=mirror.invalid"]


def test_pip_args_are_empty_by_default(tmp_path):
    assert render(tmp_path, ["python_env_pip_args"])["python_env_pip_args"] == ""
