"""`ansible-playbook playbooks/site.yml --check` from the checkout, with a Python environment that holds
only ansible-core (what README's "Plain ansible-playbook" section says a CI job needs), against a fresh
lab host: the filter plugins load without ktdeploy's CLI libraries or an installed ktdeploy, every role
runs in check mode, and nothing on the host changes.
"""

from __future__ import annotations

import os
import subprocess
import time
from importlib import metadata

import pytest

from converge import REPO, SITE, Run, role_vars, write_inventory

pytestmark = pytest.mark.lab

# The profile CI serves (llama.cpp: the GPU roles are skipped on a host without a GPU).
PROFILE = REPO / "ktdeploy" / "profiles" / "tiny-dsv3-cpu.yml"
# What a check-mode run must leave as it found it: packages, users, the files ktdeploy would write.
SNAPSHOT = ("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' | sha256sum; getent passwd | sha256sum; "
            "getent group | sha256sum; "
            "find /etc /srv /usr/local /var/lib/ktdeploy /var/log/ktdeploy -xdev 2>/dev/null | sort | sha256sum; "
            "ls /var/lib /var/log /var/lib/apt/lists 2>&1 | sha256sum")


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """A venv with ansible-core alone (the version ktdeploy pins), made with the system's python3."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"ansible-core=={metadata.version('ansible-core')}"], check=True, timeout=900)
    return venv


def bare_env(venv, tmp_path) -> dict:
    """Only what a CI job sets: PATH with the venv first, HOME, locale, the checkout's ansible.cfg."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "SSH_AUTH_SOCK") if k in os.environ}
    return {**keep, "PATH": f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts")}


def test_the_venv_holds_ansible_core_and_its_requirements_only(bare_venv, tmp_path):
    py = bare_venv / "bin" / "python"
    probe = ("import importlib.util as u; "
             "print([m for m in ('ktdeploy', 'click', 'rich', 'fabric', 'ansible_runner', 'ansible') if u.find_spec(m)])")
    r = subprocess.run([str(py), "-c", probe], cwd="/", capture_output=True, text=True, env=bare_env(bare_venv, tmp_path))
    assert r.stdout.strip() == "['ansible']", r.stderr


def test_site_check_completes_on_a_fresh_host_and_changes_nothing(bare_venv, lab_host, lab, tmp_path):
    inventory = write_inventory(lab_host, tmp_path / "inventory.yml", role_vars(lab.wheelhouse))
    before = lab_host.run(SNAPSHOT, check=True).stdout
    argv = [str(bare_venv / "bin" / "ansible-playbook"), "-i", str(inventory), str(SITE), "--check",
            "-e", f"@{PROFILE}", "--flush-cache"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1500, env=bare_env(bare_venv, tmp_path))
    run = Run(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    assert run.rc == 0, run.explain()
    recap = run.recap(lab_host.name)
    assert (recap["failed"], recap["unreachable"]) == (0, 0), run.explain()
    # every role of the llama.cpp route ran (in check mode), the GPU ones were skipped by site.yml
    for task in ("plan : Make the deployment plan", "base : ", "python_env : ", "serve : Check the engine"):
        assert f"TASK [{task}" in run.stdout, task
    gpu_tasks = [t for t in run.stdout.split("\nTASK [")[1:] if t.startswith(("cuda : ", "torch : ", "ktransformers : "))]
    assert gpu_tasks and all("\nskipping: " in t and "\nok: " not in t and "\nchanged: " not in t for t in gpu_tasks)
    assert lab_host.run(SNAPSHOT, check=True).stdout == before
