"""The GPU check (tests/gpu/run.sh) rehearsed on a lab host that looks like the team's GPU machine
except for the GPU: no systemd, no sudo, an existing Python env standing in for the torch env,
wheels carried in (tests/gpu/gather.sh), and apt never needed. Everything up to the GPU runs for real:
ktdeploy installed offline into that env, the tiny DeepSeek-V3 model written, preflight --deep,
provision through a local connection (plan, base, python_env with the existing backend); then the
cuda role must stop with its clear "no NVIDIA driver" message, having installed nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ENV = "/opt/torch/.venv"
# What the GPU machine's torch env already has and ktdeploy or the generator need from it.
ENV_PACKAGES = ["click", "jinja2", "pyyaml", "rich", "packaging", "pathspec", "pluggy", "numpy", "setuptools", "requests", "tqdm"]
LAB_PYTHON = "3.11.2"  # Debian 12's, on the lab hosts


@pytest.fixture(scope="module")
def carry(tmp_path_factory):
    """The wheels of tests/gpu/wheels.txt for the lab host's Python (no KTransformers archive: the
    rehearsal stops before the build)."""
    folder = tmp_path_factory.mktemp("carry")
    env = {**os.environ, "KTD_CARRY_DIR": str(folder), "KTD_CARRY_PYTHON": LAB_PYTHON[:4], "KTD_CARRY_ARCHIVE": "skip",
           "KTD_CARRY_SDIST": "skip"}
    proc = subprocess.run(["bash", "tests/gpu/gather.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def gpu_like(lab, carry):
    host = lab.up(systemd=False)
    try:
        lab.wheelhouse.add(ENV_PACKAGES, python_version=LAB_PYTHON)
        pip = " ".join(lab.wheelhouse.pip_args)
        prepare = (
            "set -e; mv /usr/bin/sudo /usr/bin/sudo.away; "  # the GPU image has no sudo
            "apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; "
            f"python3 -m venv {ENV} && {ENV}/bin/pip install -q {pip} {' '.join(ENV_PACKAGES)}"
        )
        r = host.run(prepare, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        _copy_tree(host, ROOT, "/root/ktdeploy")
        _copy_tree(host, carry, "/root/ktdeploy/.gpucarry")
        yield host
    finally:
        lab.down(host.index)


def _copy_tree(host, src: Path, dest: str) -> None:
    """The checkout's files (tracked and untracked, not ignored) or a whole folder, over ssh."""
    if (src / ".git").exists():
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src,
                               capture_output=True, check=True).stdout.split(b"\0")
        listing = b"\0".join(n for n in names if n and (src / n.decode()).is_file())
        tar = subprocess.run(["tar", "-C", str(src), "--null", "-T", "-", "-czf", "-"], input=listing,
                             capture_output=True, check=True).stdout
    else:
        tar = subprocess.run(["tar", "-C", str(src), "-czf", "-", "."], capture_output=True, check=True).stdout
    r = subprocess.run(host.ssh_argv("root") + [f"mkdir -p {dest} && tar -C {dest} -xzf -"], input=tar,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]


def test_run_gets_to_the_gpu_and_stops_there_clearly(gpu_like):
    host = gpu_like
    r = host.run(
        f"cd /root/ktdeploy && KTD_GPU_PYTHON={ENV}/bin/python3 KTD_GPU_FORCE=1 KTD_GPU_BASE_PACKAGES=python3-venv "
        "bash tests/gpu/run.sh; cat /tmp/ktd-gpu/done",
        timeout=1800,
    )
    summary = host.run("cat /tmp/ktd-gpu/out/summary.txt", timeout=30).stdout
    log = host.run("cat /tmp/ktd-gpu/out/run.log", timeout=60).stdout
    why = summary + "\n--- run.log (end) ---\n" + log[-6000:]
    steps = {line.split("done:  ", 1)[1].rsplit(" (exit", 1)[0]: line for line in summary.splitlines() if "done:  " in line}
    for name in ("install ktdeploy into the torch env (offline)", "write the tiny DeepSeek-V3 model (tiny-dsv3-iq1s)",
                 "preflight --deep"):
        assert "(exit 0," in steps.get(name, ""), why
    # the plan names what is missing here; --force goes on, as the rehearsal asks
    assert "needs an NVIDIA GPU" in log, why
    provision = steps.get("provision (first converge: build and serve)", "")
    assert "(exit 1," in provision and r.stdout.strip().endswith("1"), why
    assert "no NVIDIA driver: nvidia-smi does not run" in log, why
    # what ran before the GPU did its work: local connection, su instead of sudo, the existing env
    base, env = (json.loads(host.run(f"cat /var/lib/ktdeploy/stages/{name}.json", timeout=30, check=True).stdout)
                 for name in ("base", "python_env"))
    assert base["complete"] and env["settings"]["backend"] == "existing" and env["settings"]["path"] == ENV
    assert host.run("id ktdeploy", timeout=30).returncode == 0
    # every package was there: apt was never asked (the GPU machine reaches no mirror)
    assert host.run("test -e /var/lib/apt/periodic/update-success-stamp", timeout=30).returncode == 1
    assert "cuda" not in host.run("ls /var/lib/ktdeploy/stages", timeout=30).stdout
