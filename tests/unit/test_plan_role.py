"""The plan role run by the real ansible-playbook against this machine (local connection, no GPU here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def playbook(*extra: str, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO / "roles"),
        ANSIBLE_FILTER_PLUGINS=str(REPO / "playbooks" / "filter_plugins"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FACT_CACHING="memory",
        ANSIBLE_LOCAL_TEMP=str(REPO / ".ansible" / "tmp"),
    )
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", "localhost,", "-c", "local",
        "-e", f"ansible_python_interpreter={sys.executable}",
        str(REPO / "roles" / "plan" / "tests" / "test.yml"), *extra,
    ]  # fmt: skip
    if check:
        cmd.append("--check")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def task_result(proc, task: str, marker: str) -> dict:
    """The JSON result the default callback printed for task (marker: 'ok: [localhost] => ' or the fatal one)."""
    after = proc.stdout.split(f"TASK [{task}]", 1)[1]
    return json.JSONDecoder().raw_decode(after.split(marker, 1)[1])[0]


def changed(proc) -> int:
    recap = proc.stdout.rsplit("PLAY RECAP", 1)[1]
    return int(recap.split("changed=", 1)[1].split()[0])


def test_role_stops_with_the_problems_of_this_gpu_less_machine():
    proc = playbook()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    failed = task_result(proc, "plan : Stop when the plan cannot work", "fatal: [localhost]: FAILED! => ")
    assert any("NVIDIA GPU with at least 14 GiB" in line for line in failed["msg"])


def test_forced_role_sets_the_plan_without_changing_anything():
    for check in (False, True):
        proc = playbook("-e", "plan_force=true", "-e", "plan_model_variant=Q4_K_M", check=check)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
        assert changed(proc) == 0
        shown = task_result(proc, "Show the plan", "ok: [localhost] => ")["ktdeploy_plan"]
        assert shown["model"]["variant"] == "Q4_K_M"
        assert shown["host"] == "localhost"
        assert shown["serve"]["cpu_infer"] == shown["cpu"]["effective_cpus"] + 1
        assert "no_gpu" in [p["code"] for p in shown["problems"]]
