"""base + python_env(venv) converged on fresh lab hosts, then the host checked over SSH.

One host per way of running (plain ansible-playbook; `ktdeploy provision`) is converged once per
module and shared by the tests; the failure tests reuse the ansible-playbook host and undo what
they set up. The conda backend cannot be converged here (no conda channel is reachable): it is
covered by its check-mode run and its errors.
"""

from __future__ import annotations

import json
import shlex
import socket
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import pytest
import testinfra
import yaml

from converge import (
    ENV_IMPORTS,
    ENV_PACKAGES,
    REPO,
    Run,
    ansible_playbook,
    ktdeploy_provision,
    role_vars,
    write_inventory,
)

pytestmark = pytest.mark.lab

TOOLS = ["ansible-playbook", "ktdeploy"]
USER = "ktdeploy"
DATA = "/srv/ktdeploy"
ENV = f"{DATA}/venv-env"
BASE_PACKAGES = yaml.safe_load((REPO / "roles/base/defaults/main.yml").read_text())["base_packages"]


@dataclass
class Converged:
    host: object
    inventory: object
    runs: list[Run] = field(default_factory=list)

    def testinfra(self):
        key = self.host.hostvars()["ansible_ssh_private_key_file"]
        return testinfra.get_host(
            f"ssh://deploy@{self.host.address}", ssh_identity_file=key, sudo=True,
            ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    def playbook(self, *args: str, **variables) -> Run:
        """Another ansible-playbook run on this host with extra variables (JSON, so lists stay lists)."""
        extra = ["-e", json.dumps(variables)] if variables else []
        return ansible_playbook(self.inventory, *extra, *args)


# The roles of issue 2; the GPU roles later in site.yml stop on a host without an NVIDIA driver.
ROLES = "base,python_env"


def _converge(lab, tool: str, workdir, made: dict, boot_lock: threading.Lock) -> Converged:
    with boot_lock:  # one Lab object, shared by the threads: boot one host at a time
        host = lab.up()
        made[tool] = conv = Converged(host, write_inventory(host, workdir / "inventory.yml", role_vars(lab.wheelhouse)))
    if tool == "ansible-playbook":
        conv.runs.append(ansible_playbook(conv.inventory, "--tags", ROLES, "--flush-cache"))
        if conv.runs[0].rc == 0:
            conv.runs.append(ansible_playbook(conv.inventory, "--tags", ROLES))
    else:
        conv.runs.append(ktdeploy_provision(conv.inventory, "--only", ROLES, runs_dir=workdir / "runs"))
        if conv.runs[0].rc == 0:
            conv.runs.append(ktdeploy_provision(conv.inventory, "--only", ROLES, runs_dir=workdir / "runs"))
    return conv


@pytest.fixture(scope="module")
def converge(lab, tmp_path_factory):
    """tool -> its converged host. Both hosts converge at once (apt and dpkg wait on I/O much of the time)."""
    lab.wheelhouse.add(ENV_PACKAGES)
    made: dict[str, Converged] = {}
    boot_lock = threading.Lock()
    workdirs = {tool: tmp_path_factory.mktemp(tool.replace("-", "")) for tool in TOOLS}
    with ThreadPoolExecutor(len(TOOLS)) as pool:
        futures = {tool: pool.submit(_converge, lab, tool, workdirs[tool], made, boot_lock) for tool in TOOLS}
        try:
            yield lambda tool: futures[tool].result()
        finally:
            wait(futures.values())
            for conv in made.values():
                lab.down(conv.host.index)


@pytest.fixture(params=TOOLS)
def converged(request, converge) -> Converged:
    return converge(request.param)


@pytest.fixture
def by_playbook(converge) -> Converged:
    conv = converge("ansible-playbook")
    if conv.runs[0].rc != 0:
        pytest.fail("the host did not converge:\n" + conv.runs[0].explain())
    return conv


def test_first_run_converges(converged):
    first = converged.runs[0]
    assert first.rc == 0, first.explain()
    assert first.recap(converged.host.name)["changed"] > 0


def test_second_run_changes_nothing(converged):
    assert len(converged.runs) == 2, converged.runs[0].explain()
    second = converged.runs[1]
    assert second.rc == 0, second.explain()
    assert second.recap(converged.host.name)["changed"] == 0, second.explain()


def test_build_packages_are_installed(converged):
    host = converged.testinfra()
    missing = [p for p in BASE_PACKAGES if not host.package(p).is_installed]
    assert missing == []


def test_service_user_is_an_unprivileged_system_account(converged):
    user = converged.testinfra().user(USER)
    assert user.exists
    assert user.group == USER
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == f"{DATA}/home"


@pytest.mark.parametrize("path,owner,group,mode", [
    (DATA, USER, USER, 0o755),
    (f"{DATA}/home", USER, USER, 0o750),
    (f"{DATA}/models", USER, USER, 0o755),
    ("/var/lib/ktdeploy", "root", USER, 0o755),
    ("/var/lib/ktdeploy/stages", "root", "root", 0o755),
    (ENV, USER, USER, 0o755),
])
def test_directories_have_owner_and_mode(converged, path, owner, group, mode):
    f = converged.testinfra().file(path)
    assert f.is_directory
    assert (f.user, f.group, f.mode) == (owner, group, mode)


def test_service_user_can_write_the_model_dir(converged):
    host = converged.testinfra()
    probe = f"{DATA}/models/.write-probe"
    assert host.run(f"runuser -u {USER} -- touch {probe} && rm {probe}").rc == 0


def test_env_imports_its_packages_as_the_service_user(converged):
    code = "; ".join(f"import {m}" for m in ENV_IMPORTS) + "; print(packaging.__version__)"
    r = converged.testinfra().run(f"runuser -u {USER} -- {ENV}/bin/python -c {shlex.quote(code)}")
    assert r.rc == 0, r.stderr
    assert r.stdout.strip() == ENV_PACKAGES[0].split("==")[1]


def test_env_pip_uses_the_wheelhouse(converged, lab):
    host = converged.testinfra()
    assert f"index-url = {lab.wheelhouse.index_url}" in host.file(f"{ENV}/pip.conf").content_string
    r = host.run(f"runuser -u {USER} -- {ENV}/bin/pip config list")
    assert f"global.index-url='{lab.wheelhouse.index_url}'" in r.stdout


def test_stage_records_are_written(converged):
    host = converged.testinfra()
    base = json.loads(host.file("/var/lib/ktdeploy/stages/base.json").content_string)
    env = json.loads(host.file("/var/lib/ktdeploy/stages/python_env.json").content_string)
    assert (base["stage"], base["complete"], base["settings"]["model_dir"]) == ("base", True, f"{DATA}/models")
    assert (env["stage"], env["settings"]["backend"], env["settings"]["python"]) == (
        "python_env", "venv", f"{ENV}/bin/python")


# -- failures: each names the cause and the fix -------------------------------------------------------


def test_missing_glibcxx_version_fails_naming_it_and_the_fix(by_playbook):
    run = by_playbook.playbook("--tags", "python_env", python_env_required_glibcxx=["3.4.30", "3.4.99"])
    assert run.rc != 0
    assert "lacks GLIBCXX_3.4.99" in run.stdout and "python_env_backend=conda" in run.stdout, run.explain()


def test_apt_fetch_failure_is_detected_and_names_the_source(by_playbook):
    host = by_playbook.testinfra()
    broken = "/etc/apt/sources.list.d/ktdeploy-test-broken.list"
    host.run(f"echo 'deb http://10.203.0.1:9/debian bookworm main' > {broken}")
    try:
        # a missing package makes the role refresh the index; 0 s makes the index stale
        run = by_playbook.playbook("--tags", "base", base_extra_packages=["hello"], base_apt_cache_valid_time=0)
    finally:
        host.run(f"rm -f {broken}")
    assert run.rc != 0
    assert "apt-get update failed" in run.stdout and "10.203.0.1:9" in run.stdout, run.explain()
    assert not host.package("hello").is_installed


def test_apt_update_that_hangs_is_cut_short_tried_again_and_named(by_playbook):
    """A mirror or proxy that takes the request and never answers: apt-get update would wait on it
    (a lab run once hung 15 min in apt-get update). The role kills each try after
    base_apt_update_timeout, tries three times, then stops naming the timeout."""
    from ktdeploy.lab.paths import CONTROLLER_IP

    host = by_playbook.testinfra()
    silent = socket.socket()
    silent.bind((CONTROLLER_IP, 0))
    silent.listen(16)  # connections complete in the kernel's queue; nothing ever reads or answers them
    hanging = "/etc/apt/sources.list.d/ktdeploy-test-silent.list"
    direct = "/etc/apt/apt.conf.d/99ktdeploy-test-silent"  # past the lab's apt proxy, which refuses such ports
    host.run(f"echo 'deb http://{CONTROLLER_IP}:{silent.getsockname()[1]}/debian bookworm main' > {hanging} && "
             f"echo 'Acquire::http::Proxy::{CONTROLLER_IP} \"DIRECT\";' > {direct}")
    try:
        run = by_playbook.playbook("--tags", "base", base_extra_packages=["hello"], base_apt_cache_valid_time=0,
                                   base_apt_update_timeout=3)
    finally:
        host.run(f"rm -f {hanging} {direct}")
        silent.close()
    assert run.rc != 0
    assert "did not finish within 3 s, three times (base_apt_update_timeout)" in run.stdout, run.explain()
    assert run.stdout.count("FAILED - RETRYING: ") == 2, run.explain()  # three tries
    assert not host.package("hello").is_installed
    assert host.run("pgrep -x apt-get").rc == 1  # no apt-get left behind


def test_untraversable_model_dir_fails_naming_the_directory(by_playbook):
    host = by_playbook.testinfra()
    try:
        run = by_playbook.playbook("--tags", "base", base_model_dir="/root/ktmodels")
    finally:
        host.run("rm -rf /root/ktmodels")
    assert run.rc != 0
    assert "cannot enter /root," in run.stdout and "chmod o+x" in run.stdout, run.explain()


def test_conda_without_a_reachable_installer_fails_clearly(by_playbook):
    run = by_playbook.playbook("--check", "--tags", "python_env", python_env_backend="conda")
    assert run.rc != 0
    assert "The installer could not be downloaded from" in run.stdout, run.explain()
    assert "python_env_conda_installer_path" in run.stdout


def test_conda_with_a_missing_local_installer_fails_before_changing_anything(by_playbook):
    run = by_playbook.playbook("--tags", "python_env", python_env_backend="conda",
                               python_env_conda_installer_path="/nonexistent/Miniforge3-Linux-x86_64.sh")
    assert run.rc != 0
    assert "no such file on the controller. Nothing was changed." in run.stdout, run.explain()
    assert not by_playbook.testinfra().file(f"{DATA}/miniforge3").exists


def test_conda_check_mode_shows_the_commands_and_changes_nothing(by_playbook, tmp_path):
    # Only read in check mode (never copied or run), so any file does as the installer.
    installer = tmp_path / "Miniforge3-Linux-x86_64.sh"
    installer.write_text("# placeholder: a --check run only checks that the file exists\n")
    run = by_playbook.playbook("--check", "--tags", "python_env", python_env_backend="conda",
                               python_env_conda_installer_path=str(installer))
    assert run.rc == 0, run.explain()
    conda = f"{DATA}/miniforge3/bin/conda"
    assert f"bash {DATA}/miniforge3-installer.sh -b -p {DATA}/miniforge3" in run.stdout, run.explain()
    assert f"{conda} install --yes --name base conda-libmamba-solver=24.11.0" in run.stdout
    assert f"{conda} create --yes --prefix {DATA}/conda-env python=3.11 pip libstdcxx-ng" in run.stdout
    host = by_playbook.testinfra()
    assert not host.file(f"{DATA}/miniforge3").exists and not host.file(f"{DATA}/conda-env").exists


# -- check mode on a fresh host ----------------------------------------------------------------------

SNAPSHOT = ("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' | sha256sum; getent passwd | sha256sum; "
            "ls /srv /var/lib /var/lib/apt/lists /var/lib/apt/periodic 2>&1 | sha256sum")


def test_check_mode_on_a_fresh_host_changes_nothing(lab_host, lab, tmp_path):
    inventory = write_inventory(lab_host, tmp_path / "inventory.yml", role_vars(lab.wheelhouse))
    before = lab_host.run(SNAPSHOT, check=True).stdout
    run = ansible_playbook(inventory, "--check", "--tags", ROLES, "--flush-cache")
    assert run.rc == 0, run.explain()
    assert run.recap(lab_host.name)["failed"] == 0
    assert "Would refresh the apt index and install:" in run.stdout
    assert lab_host.run(SNAPSHOT, check=True).stdout == before
    assert lab_host.run(f"getent passwd {USER}").returncode == 2


def test_python_env_without_base_fails_before_changing_anything(lab_host, lab, tmp_path):
    inventory = write_inventory(lab_host, tmp_path / "inventory.yml", role_vars(lab.wheelhouse))
    before = lab_host.run(SNAPSHOT, check=True).stdout
    run = ansible_playbook(inventory, "--tags", "python_env", "--flush-cache")
    assert run.rc != 0
    assert f"The service user {USER} does not exist" in run.stdout and "base role first" in run.stdout, run.explain()
    assert lab_host.run(SNAPSHOT, check=True).stdout == before
