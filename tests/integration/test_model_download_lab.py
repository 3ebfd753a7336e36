"""The model_download role on a lab host: real SSH, real ansible-playbook, the real modelscope client
installed from the lab wheelhouse, and the fake hub/mirror on the controller address 10.203.0.1.

One host per module (base + python_env take a while); each test uses its own download items and
directories so the checks stay independent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ktdeploy import engine
from ktdeploy.resources import roles_dir
from tests.support.fake_hub import CONFIG_REPO, GGUF_REPO, serving_repos, shard_paths

pytestmark = pytest.mark.lab

CONTROLLER = "10.203.0.1"
CHUNK = 1 << 20
LIB = "/usr/local/lib/ktdeploy"
JOBS = "/var/lib/ktdeploy/downloads"
MODELS = "/srv/ktdeploy/models"
SOURCES = ["modelscope", "mirror"]


def client_pins() -> list[str]:
    defaults = yaml.safe_load((roles_dir() / "model_download" / "defaults" / "main.yml").read_text())
    return defaults["model_download_client_packages"]["modelscope"]


@pytest.fixture(scope="module")
def hub(lab, tmp_path_factory):
    with serving_repos(tmp_path_factory.mktemp("hub"), CONTROLLER) as h:
        yield h


@pytest.fixture(scope="module")
def host(lab):
    """A host with base and python_env converged once; the tests then run only model_download."""
    lab.wheelhouse.add(client_pins())
    h = lab.up()
    try:
        ready = engine.run_playbook("site.yml", h.inventory_path(), extravars=base_vars(lab),
                                    tags=["base", "python_env"])
        assert ready.exit_code == 0, failure_text(ready)
        yield h
    finally:
        lab.down(h.index)


@pytest.fixture(autouse=True)
def fresh_log(hub):
    hub.throttle_bps = None
    hub.clear_log()
    yield
    hub.throttle_bps = None


def base_vars(lab) -> dict:
    return {
        "base_packages": ["tmux", "screen", "python3-venv", "python3-packaging", "acl"],
        "python_env_pip_index_url": lab.wheelhouse.index_url,
        "python_env_pip_trusted_hosts": [lab.wheelhouse.trusted_host],
        "model_download_env": {"MODELSCOPE_DOWNLOAD_INTRA_CLOUD": "false", "TQDM_DISABLE": "1"},
        "plan_force": True,  # lab hosts have no GPU and little RAM; the plan would refuse them
    }


def item(name: str, source: str, repo: str = GGUF_REPO, includes=("DeepSeek-R1-UD-IQ1_S/*",), excludes=()) -> dict:
    return {"name": f"{name}-{source}", "source": source, "repo": repo, "includes": list(includes),
            "excludes": list(excludes), "dest": f"{MODELS}/{name}-{source}"}


def both(name: str, **kw) -> list[dict]:
    """The same download from the fake hub (modelscope client) and from the mirror."""
    return [item(name, source, **kw) for source in SOURCES]


def converge(lab, host, hub, items: list[dict], **extra) -> engine.RunResult:
    extravars = {**base_vars(lab), "model_download_items": items,
                 "model_download_modelscope_endpoint": hub.url, "model_download_mirror_url": hub.mirror_url,
                 **extra}
    return engine.run_playbook("site.yml", host.inventory_path(), extravars=extravars, tags=["model_download"])


def status(host, name: str) -> dict:
    r = host.run(f"python3 {LIB}/download_state.py --json {JOBS} {name}", check=True, timeout=60)
    docs = json.loads(r.stdout)
    assert len(docs) == 1, r.stdout
    return docs[0]


def wait_stopped(host, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(host, name)
        if not s["running"] and s["phase"] not in ("planned", "downloading", "verifying"):
            return s
        time.sleep(0.5)
    raise AssertionError(f"{name} still running after {timeout}s: {s}\n" + log(host, name))


def log(host, name: str) -> str:
    return host.run(f"tail -c 3000 {JOBS}/{name}/log", timeout=30).stdout


def files_at(host, path: str) -> list[str]:
    r = host.run(f"cd {path} 2>/dev/null && find . -type f | sed 's|^./||' | sort", timeout=30)
    return r.stdout.split()


def failure_text(result: engine.RunResult) -> str:
    return "\n".join(result.errors + result.failure_lines())


def test_happy_path_then_rerun_changes_nothing(lab, host, hub):
    items = both("happy") + both("cfg", repo=CONFIG_REPO, includes=(), excludes=("*.safetensors",))
    first = converge(lab, host, hub, items)
    assert first.exit_code == 0, failure_text(first)
    for it in items:
        s = wait_stopped(host, it["name"])
        assert s["phase"] == "complete" and s["rc"] == 0 and s["files_verified"] == s["files"], log(host, it["name"])
    for it in items[:2]:
        assert files_at(host, it["dest"]) == shard_paths()
    for it in items[2:]:
        got = files_at(host, it["dest"])
        assert "config.json" in got and "tokenizer.json" in got and not [p for p in got if p.endswith(".safetensors")]
    owner = host.run(f"stat -c %U {items[0]['dest']}/{shard_paths()[0]}", check=True).stdout.strip()
    assert owner == "ktdeploy"
    hub.clear_log()
    again = converge(lab, host, hub, items)
    assert again.exit_code == 0 and sum(h.changed for h in again.hosts.values()) == 0, again.hosts
    assert hub.requests == []  # no listing, no file, and no client re-hashing 140 GB


def test_kill_9_mid_file_then_rerun_resumes(lab, host, hub):
    items = both("kill")
    hub.throttle_bps = 150_000  # 20 s for the 3 shards: time to see it run and kill it, on a loaded machine too
    assert converge(lab, host, hub, items).exit_code == 0
    deadline = time.monotonic() + 60
    while min(status(host, it["name"])["done_bytes"] for it in items) < 1_500_000:
        assert time.monotonic() < deadline, [log(host, it["name"]) for it in items]
        time.sleep(0.2)
    sessions = host.run("runuser -u ktdeploy -- tmux ls 2>&1", timeout=30).stdout
    for it in items:
        assert f"ktd-dl-{it['name']}" in sessions, sessions
        host.run(f"kill -9 -- -$(ps -o pgid= -p $(cat {JOBS}/{it['name']}/pid) | tr -d ' ')", check=True, timeout=30)
    time.sleep(0.5)
    for it in items:
        s = status(host, it["name"])
        assert s["phase"] == "interrupted" and 0 < s["done_bytes"] < s["total_bytes"], s
    hub.throttle_bps = None
    resumed = converge(lab, host, hub, items)
    assert resumed.exit_code == 0 and sum(h.changed for h in resumed.hosts.values()) >= 1
    for it in items:
        assert wait_stopped(host, it["name"])["phase"] == "complete", log(host, it["name"])
    for rel in shard_paths():  # both sources fetched each shard: twice its size, plus what was lost
        size = int(host.run(f"stat -c %s {items[0]['dest']}/{rel}", check=True).stdout)
        assert hub.bytes_sent(rel) - 2 * size <= 2 * CHUNK, f"{rel} fetched again: {hub.file_requests(rel)}"
    assert len([r for r in hub.file_requests() if r.start > 0]) >= 2  # resumed with Range


def test_rerun_while_running_starts_no_second(lab, host, hub):
    items = both("busy")
    hub.throttle_bps = 50_000  # a minute for the 3 shards; lifted below
    assert converge(lab, host, hub, items).exit_code == 0
    again = converge(lab, host, hub, items)
    assert again.exit_code == 0 and sum(h.changed for h in again.hosts.values()) == 0
    assert all(status(host, it["name"])["running"] for it in items)
    hub.throttle_bps = None
    for it in items:
        assert wait_stopped(host, it["name"])["phase"] == "complete"
    assert len([r for r in hub.file_requests() if r.method == "GET"]) == 6


def test_corrupt_bytes_detected_and_nothing_at_the_final_path(lab, host, hub):
    items = both("corrupt")
    bad = shard_paths()[1]
    hub.corrupt(GGUF_REPO, bad)
    try:
        assert converge(lab, host, hub, items).exit_code == 0
        done = [wait_stopped(host, it["name"], timeout=180) for it in items]
    finally:
        hub.corrupt(GGUF_REPO, bad, on=False)
    for it, s in zip(items, done):
        assert s["phase"] == "failed" and s["error"], log(host, it["name"])
        got = files_at(host, it["dest"])
        assert bad not in got and shard_paths()[0] in got


def test_bad_repo_or_pattern_fails_clearly_before_fetching(lab, host, hub):
    items = both("unknown", repo="unsloth/No-Such-Repo") + both("nomatch", includes=("*UD-IQ9_XX*",))
    result = converge(lab, host, hub, items)
    assert result.exit_code == 1
    for it in items:
        s = status(host, it["name"])
        expect = "unsloth/No-Such-Repo" if it["name"].startswith("unknown") else "no file of unsloth/DeepSeek-R1-GGUF"
        assert s["phase"] == "refused" and expect in s["error"], s
    assert hub.bytes_sent() == 0


def test_not_enough_disk_refused_before_fetching(lab, host, hub):
    items = both("disk")
    free = int(host.run(f"df -B1 --output=avail {MODELS} | tail -1", check=True).stdout)
    # a reserve 1 GB beyond what df reports: refused whatever else writes to this shared disk meanwhile
    result = converge(lab, host, hub, items, model_download_disk_reserve_bytes=free + 1_000_000_000)
    assert result.exit_code == 1
    for it in items:
        s = status(host, it["name"])
        assert s["phase"] == "refused" and "9.0 MB left to fetch" in s["error"] and "free" in s["error"], s
        assert files_at(host, it["dest"]) == []
    assert hub.bytes_sent() == 0


def test_cli_download_wait_json_with_the_catalog_default(lab, host, hub, tmp_path):
    """`ktdeploy download -i INV --source mirror --endpoint URL --wait --json`: the role's default items
    (the catalog's UD-IQ1_S shards and the R1 config files) land where the serving roles expect them."""
    hostvars = {**host.hostvars(), **base_vars(lab)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {host.name: hostvars}}}))
    cmd = [str(Path(sys.executable).with_name("ktdeploy")), "download", "-i", str(inventory), "--source", "mirror",
           "--endpoint", hub.mirror_url, "--wait", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    docs = {d["name"]: d for d in report[0]["downloads"]}
    assert set(docs) == {"DeepSeek-R1-UD-IQ1_S", "DeepSeek-R1-config"}
    assert all(d["phase"] == "complete" and d["percent"] == 100.0 for d in docs.values())
    assert files_at(host, f"{MODELS}/DeepSeek-R1-GGUF") == shard_paths()
    assert "config.json" in files_at(host, f"{MODELS}/DeepSeek-R1")
