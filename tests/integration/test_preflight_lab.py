"""`ktdeploy facts` and `ktdeploy preflight` against a real lab host over real SSH (no GPU there)."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from ktdeploy import exitcodes, facts
from ktdeploy.cli import main
from ktdeploy.preflight import PlanOptions, preflight_or_raise
from ktdeploy.errors import PlanProblem

pytestmark = pytest.mark.lab
pytest.importorskip("ktdeploy.lab", reason="needs the lab (ktdeploy.lab and the lab_host fixture)")


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_facts_saved_from_a_lab_host_plan_like_the_live_host(lab_host, tmp_path):
    inv = str(lab_host.inventory_path())
    saved = tmp_path / "facts"
    r = invoke("facts", "-i", inv, lab_host.name, "--save", str(saved))
    assert r.exit_code == 0, r.output
    raw = facts.load_dir(saved)
    assert "systemd" in raw and "nvidia-smi.csv" not in raw
    f = facts.parse(raw)
    nproc = int(lab_host.run("nproc --all", check=True).stdout)
    assert f.cpu.logical_cpus == nproc
    assert f.os["ID"] == "debian" and f.os["VERSION_ID"] == "12"
    assert f.disk_mount  # df ran on the nearest existing parent of the absent model directory

    live = invoke("preflight", "-i", inv, lab_host.name, "--json")
    assert live.exit_code == exitcodes.PLAN_PROBLEM, live.output
    doc = json.loads(live.output)
    assert doc["host"] == lab_host.name and doc["fits"] is False
    assert "no_gpu" in [p["code"] for p in doc["problems"]]
    assert doc["serve"]["supervisor"] == "systemd"
    offline = json.loads(invoke("preflight", "--facts", str(saved), "--json", "--force").output)
    for key in ("cpu", "build", "serve", "gpus"):
        assert offline[key] == doc[key], key


def test_force_and_deep_on_a_lab_host(lab_host, tmp_path):
    from unit.gguf_files import write_variant  # tests/ is on sys.path through tests/conftest.py

    inv = str(lab_host.inventory_path())
    forced = invoke("preflight", "-i", inv, lab_host.name, "--force")
    assert forced.exit_code == 0, forced.output
    assert "problem no_gpu" in forced.output

    # real shards on the host: the stdlib reader runs there and finds the one that is missing
    local = write_variant(tmp_path, skip=(2,))
    models = "/srv/ktdeploy/models"
    gdir = f"{models}/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S"
    lab_host.run(f"mkdir -p {gdir} && chown -R deploy {models}", check=True)
    for shard in local.iterdir():
        data = base64.b64encode(shard.read_bytes()).decode()
        lab_host.run(f"base64 -d > {gdir}/{shard.name}", user="deploy", input=data, check=True)
    deep = invoke("preflight", "-i", inv, lab_host.name, "--deep", "--json", "--force")
    assert deep.exit_code == 0, deep.output
    codes = [p["code"] for p in json.loads(deep.output)["problems"]]
    assert "gguf_missing_shard" in codes and "gguf_tensor_type" not in codes

    with pytest.raises(PlanProblem, match="NVIDIA GPU"):
        preflight_or_raise([lab_host.target()], PlanOptions())
    plans = preflight_or_raise([lab_host.target()], PlanOptions(), force=True)
    assert not plans[lab_host.name].fits


def test_plain_ansible_playbook_gets_the_plan_on_a_lab_host(lab_host):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, ANSIBLE_CONFIG=str(repo / "ansible.cfg"), ANSIBLE_FACT_CACHING="memory", ANSIBLE_NOCOLOR="1")
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab_host.inventory_path()),
           str(repo / "playbooks" / "site.yml"), "--tags", "plan"]  # fmt: skip
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2, refused.stdout[-3000:]
    assert "Preflight found problems" in refused.stdout and "NVIDIA GPU with at least 14 GiB" in refused.stdout
    forced = subprocess.run([*cmd, "-e", "plan_force=true"], capture_output=True, text=True, env=env, timeout=300)
    assert forced.returncode == 0, forced.stdout[-3000:]
    assert "changed=0" in forced.stdout.rsplit("PLAY RECAP", 1)[1]
