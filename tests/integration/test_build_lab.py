"""The ktransformers role on a lab host: no GPU, no nvcc, no torch.

The sdist comes through the lab wheelhouse, the patch series applies and a re-run skips it, the
rendered build environment follows the plan (USE_NUMA absent for one NUMA node, present for
several), and the build stops with "CUDA toolkit not found" before anything is installed.

torch is not installed on the lab host: its CPU wheel alone is ~200 MB per host and the build
stops before needing it; the checks that involve torch run in the unit tests and on the H200.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ktdeploy import build, facts, plan
from ktdeploy.resources import ansible_bin, ansible_cfg, share_dir

pytestmark = pytest.mark.lab

SDIST = "ktransformers==0.2.1.post1"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"


def fixture_build(machine: str) -> dict:
    """The build section the plan makes for a recorded machine, for the sdist version."""
    return {**plan.make_plan(facts.parse(facts.load_dir(FIXTURES / machine))).to_dict()["build"], "kt_version": "0.2.1.post1"}


PLAN_SINGLE = fixture_build("autodl-8352v-vgpu32")  # the tutorial's container: one NUMA node
PLAN_MULTI = fixture_build("dual-gold6430-64vcpu-4090")  # two sockets, two nodes, RAM for two copies
ROOT = "/srv/ktbuild"

PLAY = """
- name: Converge the ktransformers role
  hosts: all
  become: true
  gather_facts: false
  pre_tasks:
    - name: Refresh the apt lists, as the base role does
      ansible.builtin.apt:
        update_cache: true
    - name: Create the stage record directory, as the base role does
      ansible.builtin.file:
        path: "{{ base_state_dir }}/stages"
        state: directory
        mode: "0755"
  roles:
    - role: ktransformers
"""


@pytest.fixture(scope="module")
def index_url(lab):
    lab.wheelhouse.add([SDIST], no_deps=True, sdist=True)
    return lab.wheelhouse.index_url


def converge(host, tmp_path: Path, plan: dict, index_url: str) -> tuple[int, dict, str]:
    """Run the role through ansible-runner; returns (rc, last result per task name, stdout)."""
    import ansible_runner

    (tmp_path / "runner" / "project").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runner" / "project" / "play.yml").write_text(PLAY)
    extravars = {
        "base_data_dir": f"{ROOT}/data",
        "base_state_dir": f"{ROOT}/state",
        "base_service_user": "root",
        "python_env_python": "/usr/bin/python3",
        "cuda_home": "/usr/local/cuda",
        "ktransformers_source": "sdist",
        "ktransformers_pip_index_url": index_url,
        "ktdeploy_plan": {"build": plan},
    }
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook="play.yml",
        inventory=str(host.inventory_path()),
        extravars=extravars,
        envvars={
            "ANSIBLE_CONFIG": str(ansible_cfg()),
            "ANSIBLE_ROLES_PATH": str(share_dir() / "roles"),
            "PATH": f"{Path(ansible_bin('ansible-playbook')).parent}{os.pathsep}{os.environ['PATH']}",
        },
        quiet=True,
        timeout=900,
    )
    results = {}
    for event in runner.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_skipped"):
            results[data["task"]] = {**data.get("res", {}), "event": event["event"]}
    return runner.rc, results, runner.stdout.read()


def task_result(results: dict, name_start: str) -> dict:
    for name, res in results.items():
        if name.startswith(name_start):
            return res
    raise AssertionError(f"no task named {name_start!r} ran; ran: {', '.join(results)}")


def tree_of(plan: dict) -> str:
    series = build.load_series(str(share_dir() / "patches" / "ktransformers"), plan["kt_version"])
    return f"{ROOT}/data/build/ktransformers-{build.version_dir(plan['kt_version'])}-{build.series_digest(series)}"


def test_sdist_patched_once_env_from_plan_and_no_toolkit_stops_the_build(lab_host, tmp_path, index_url):
    # one host for the whole story (a boot costs more than the checks): bad input first
    rc, report, out = converge(lab_host, tmp_path / "bad", {**PLAN_SINGLE, "use_numa": "0"}, index_url)
    assert rc != 0 and "use_numa must be true or false" in out
    assert lab_host.run(f"ls -d {ROOT}/data {ROOT}/state/build 2>/dev/null; true", check=True).stdout.strip() == ""

    tree = tree_of(PLAN_SINGLE)
    rc, report, out = converge(lab_host, tmp_path / "first", PLAN_SINGLE, index_url)

    assert rc != 0, out
    stop = task_result(report, "Stop before building when the host cannot build")
    assert stop["event"] == "runner_on_failed" and "CUDA toolkit not found: no working /usr/local/cuda/bin/nvcc" in stop["msg"]
    patched = task_result(report, "Apply the patch series")
    assert patched["changed"] and [p.split("-", 1)[0] for p in patched["applied"]] == ["0001", "0002", "0003", "0004"]
    assert lab_host.run(f"grep -c moe_probe_sgemm {tree}/ktransformers/ktransformers_ext/operators/llamafile/moe.cpp", check=True).stdout.strip() != "0"
    # 0003: the IQ1_S kernel of v0.2.3post2 (mul_mat_iq1_s_q8_K is absent from the plain sdist)
    assert lab_host.run(f"grep -c mul_mat_iq1_s_q8_K {tree}/third_party/llamafile/iqk_mul_mat.inc", check=True).stdout.strip() != "0"
    # and a FANCY build compiles them with VPOPCNTDQ, as the tag's does (not the #847 popcount fallback)
    assert lab_host.run(f"grep -c -- -mavx512vpopcntdq {tree}/ktransformers/ktransformers_ext/CMakeLists.txt", check=True).stdout.strip() == "1"

    script = lab_host.run(f"cat {tree}.build.sh", check=True).stdout
    assert "export USE_NUMA" not in script and "unset USE_NUMA" in script
    # the build makes a wheel, kept in a directory of its stamp once it is whole (a rollback reinstalls it)
    stamp = re.search(r"stamp ([0-9a-f]{64})\"?$", script, re.M).group(1)
    assert f"wheels={ROOT}/data/build/wheels/{stamp}\n" in script
    assert re.search(r"-m pip wheel -v --no-build-isolation --no-deps .*--wheel-dir \"\$wheels\.tmp\" \.$", script, re.M)
    assert script.rstrip().endswith('mv "$wheels.tmp" "$wheels"')
    for line in ("export KTRANSFORMERS_FORCE_BUILD=TRUE", "export CPU_INSTRUCT=FANCY", "export TORCH_CUDA_ARCH_LIST=8.9",
                 "export MAX_JOBS=14", "export CMAKE_BUILD_PARALLEL_LEVEL=14", "export CUDA_HOME=/usr/local/cuda",
                 "export CMAKE_ARGS=-DCMAKE_MODULE_LINKER_FLAGS=-flto=14", "export NINJA_STATUS='[%f/%t %es] '",
                 "export NVCC_APPEND_FLAGS=--split-compile=14",
                 'if ! "$CUDA_HOME/bin/nvcc" $NVCC_APPEND_FLAGS -dryrun -x cu -c /dev/null -o /dev/null >/dev/null 2>&1; then'):
        assert line in script
    # 90 GiB for 14 jobs: no room for nvcc's beside CMake's, so the two extensions build one after the other
    assert "export DIST_EXTRA_CONFIG" not in script and "printf" not in script

    # nothing half-installed: no build started, no package, no stamp, no build output
    left = lab_host.run(
        f"python3 -c 'import ktransformers' 2>/dev/null && echo imported; ls {ROOT}/state/build; "
        f"ls -d {tree}/build {tree}.log {tree}.lock {ROOT}/data/build/wheels 2>/dev/null; true", check=True,
    ).stdout.split()
    assert left == []

    rc, report, out = converge(lab_host, tmp_path / "second", PLAN_MULTI, index_url)
    assert rc != 0, out
    again = task_result(report, "Apply the patch series")
    assert not again.get("changed") and again["applied"] == [] and len(again["already_applied"]) == 4
    assert not task_result(report, "Unpack the sdist").get("changed")
    script = lab_host.run(f"cat {tree}.build.sh", check=True).stdout
    assert "export USE_NUMA=1" in script and "export MAX_JOBS=64" in script
    # 480 GiB: KTransformersOps builds beside cpuinfer_ext, through setuptools' extra config file in the tree
    assert f"export DIST_EXTRA_CONFIG={build.EXTRA_CONFIG_NAME}" in script
    written = script.index("\nprintf '[build_ext]\\nparallel = 2\\n' >\"$DIST_EXTRA_CONFIG\"\n")
    assert script.index(f"\ncd {tree}\n") < written < script.index(" -m pip wheel ")
    assert "CUDA toolkit not found" in task_result(report, "Stop before building")["msg"]
