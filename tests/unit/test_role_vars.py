"""The role variables other roles and the conda backend rely on, rendered by real Ansible templating."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ktdeploy.resources import ansible_bin

REPO = Path(__file__).resolve().parents[2]


def render(tmp_path: Path, names: list[str], playbook: str = "render_role_vars.yml", **overrides) -> dict:
    out = tmp_path / "vars.json"
    extra = {"names": names, "out": str(out), **overrides}
    proc = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", "localhost,", str(REPO / "tests/unit/playbooks" / playbook),
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


# -- the later roles read where the model lives, the port and the engine from the plan -----------------------

SITE_VARS = ["ktdeploy_plan", "serve_engine", "serve_api_port", "serve_ktransformers_model_path",
             "serve_ktransformers_gguf_path", "serve_ktransformers_cpu_infer", "serve_llamacpp_model",
             "model_download_items", "model_download_cache_dir", "base_model_dir", "base_state_dir",
             "serve_webui_port", "serve_api_service", "serve_log_dir"]


def test_served_paths_are_where_the_plan_puts_the_downloaded_variant(tmp_path):
    got = render(tmp_path, SITE_VARS, "render_site_vars.yml", plan_force=True, plan_model_variant="UD-IQ2_XXS",
                 base_data_dir=str(tmp_path / "data"))
    plan, models = got["ktdeploy_plan"], str(tmp_path / "data" / "models")
    assert got["base_model_dir"] == plan["model"]["dir"] == models
    gguf = f"{models}/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ2_XXS"
    assert got["serve_ktransformers_gguf_path"] == plan["model"]["gguf_dir"] == gguf
    assert got["serve_ktransformers_model_path"] == plan["model"]["config_dir"] == f"{models}/DeepSeek-R1"
    shards, config = got["model_download_items"]
    assert f"{shards['dest']}/{plan['model']['files'][0]}".startswith(gguf + "/") and config["dest"] == f"{models}/DeepSeek-R1"
    assert got["model_download_cache_dir"] == f"{models}/.cache"
    assert int(got["serve_ktransformers_cpu_infer"]) == plan["serve"]["cpu_infer"]
    assert (got["serve_engine"], int(got["serve_api_port"]), int(got["serve_webui_port"])) == ("ktransformers", 10002, 8080)
    assert (got["base_state_dir"], got["serve_api_service"], got["serve_log_dir"]) == (
        "/var/lib/ktdeploy", "ktdeploy-api", "/var/log/ktdeploy")


def test_llama_cpp_serves_the_plans_file_on_the_plans_port(tmp_path):
    got = render(tmp_path, SITE_VARS, "render_site_vars.yml", plan_force=True, plan_engine="llama.cpp",
                 plan_model_variant="tiny-dsv3-k", plan_model_dir="/nvme/m", plan_port=9000)
    assert got["serve_engine"] == "llama.cpp" and int(got["serve_api_port"]) == 9000
    assert got["serve_llamacpp_model"] == "/nvme/m/tiny-dsv3-k/gguf/tiny-dsv3-k.gguf"
