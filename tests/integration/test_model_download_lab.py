"""The model_download role on a lab host: real SSH, real ansible-playbook, the real modelscope client
installed from the lab wheelhouse, and the fake hub/mirror on the controller address 10.203.0.1.

One host per module (base + python_env take a while); each test uses its own download items and
directories so the checks stay independent.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from ktdeploy import engine
from ktdeploy.resources import roles_dir
from tests.support.fake_hub import CONFIG_REPO, GGUF_REPO, FakeHub, make_config_repo, make_gguf_repo, shard_paths

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
    root = tmp_path_factory.mktemp("hub")
    make_gguf_repo(root)
    make_config_repo(root)
    with FakeHub(root, host=CONTROLLER) as h:
        yield h


@pytest.fixture(scope="module")
def host(lab):
    lab.wheelhouse.add(client_pins())
    h = lab.up()
    try:
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
    }


def item(name: str, repo: str = GGUF_REPO, includes=("DeepSeek-R1-UD-IQ1_S/*",), excludes=()) -> dict:
    return {"name": name, "repo": repo, "includes": list(includes), "excludes": list(excludes),
            "dest": f"{MODELS}/{name}"}


def converge(lab, host, hub, source: str, items: list[dict], **extra) -> engine.RunResult:
    extravars = {**base_vars(lab), "model_download_source": source, "model_download_items": items,
                 "model_download_modelscope_endpoint": hub.url, "model_download_mirror_url": hub.mirror_url,
                 **extra}
    return engine.run_playbook("site.yml", host.inventory_path(), extravars=extravars,
                               tags=["base", "python_env", "model_download"])


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
    return "\n".join(result.errors)


@pytest.mark.parametrize("source", SOURCES)
def test_happy_path_then_rerun_changes_nothing(lab, host, hub, source):
    name = f"happy-{source}"
    cfg = item(f"cfg-{source}", repo=CONFIG_REPO, includes=(), excludes=("*.safetensors",))
    first = converge(lab, host, hub, source, [item(name), cfg])
    assert first.exit_code == 0, failure_text(first)
    for n in (name, cfg["name"]):
        s = wait_stopped(host, n)
        assert s["phase"] == "complete" and s["rc"] == 0, log(host, n)
    assert files_at(host, f"{MODELS}/{name}") == shard_paths()
    got = files_at(host, f"{MODELS}/{cfg['name']}")
    assert "config.json" in got and "tokenizer.json" in got and not [p for p in got if p.endswith(".safetensors")]
    owner = host.run(f"stat -c %U {MODELS}/{name}/{shard_paths()[0]}", check=True).stdout.strip()
    assert owner == "ktdeploy"
    hub.clear_log()
    again = converge(lab, host, hub, source, [item(name), cfg])
    assert again.exit_code == 0 and sum(h.changed for h in again.hosts.values()) == 0, again.hosts
    assert hub.bytes_sent() == 0 and hub.requests == []


@pytest.mark.parametrize("source", SOURCES)
def test_kill_9_mid_file_then_rerun_resumes(lab, host, hub, source):
    name = f"kill-{source}"
    hub.throttle_bps = 1_000_000
    assert converge(lab, host, hub, source, [item(name)]).exit_code == 0
    deadline = time.monotonic() + 60
    while status(host, name)["done_bytes"] < 1_500_000:
        assert time.monotonic() < deadline, log(host, name)
        time.sleep(0.2)
    session = host.run("runuser -u ktdeploy -- tmux ls", timeout=30).stdout
    assert f"ktd-dl-{name}" in session
    host.run(f"kill -9 -- -$(ps -o pgid= -p $(cat {JOBS}/{name}/pid) | tr -d ' ')", check=True, timeout=30)
    time.sleep(0.5)
    s = status(host, name)
    assert s["phase"] == "interrupted" and 0 < s["done_bytes"] < s["total_bytes"]
    hub.throttle_bps = None
    resumed = converge(lab, host, hub, source, [item(name)])
    assert resumed.exit_code == 0 and sum(h.changed for h in resumed.hosts.values()) >= 1
    assert wait_stopped(host, name)["phase"] == "complete", log(host, name)
    for rel in shard_paths():
        size = int(host.run(f"stat -c %s {MODELS}/{name}/{rel}", check=True).stdout)
        assert hub.bytes_sent(rel) - size <= CHUNK, f"{rel} fetched twice: {hub.file_requests(rel)}"
    assert any(r.start > 0 for r in hub.file_requests())


def test_rerun_while_running_starts_no_second(lab, host, hub):
    name = "busy"
    hub.throttle_bps = 500_000
    assert converge(lab, host, hub, "modelscope", [item(name)]).exit_code == 0
    again = converge(lab, host, hub, "modelscope", [item(name)])
    assert again.exit_code == 0 and sum(h.changed for h in again.hosts.values()) == 0
    hub.throttle_bps = None
    assert wait_stopped(host, name)["phase"] == "complete"
    assert len([r for r in hub.file_requests() if r.method == "GET"]) == 3


@pytest.mark.parametrize("source", SOURCES)
def test_corrupt_bytes_detected_and_nothing_at_the_final_path(lab, host, hub, source):
    name = f"corrupt-{source}"
    bad = shard_paths()[1]
    hub.corrupt(GGUF_REPO, bad)
    try:
        assert converge(lab, host, hub, source, [item(name)]).exit_code == 0
        s = wait_stopped(host, name, timeout=180)
    finally:
        hub.corrupt(GGUF_REPO, bad, on=False)
    assert s["phase"] == "failed" and s["error"], log(host, name)
    assert bad not in files_at(host, f"{MODELS}/{name}")
    assert shard_paths()[0] in files_at(host, f"{MODELS}/{name}")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("what", "spec", "expect"), [
    ("unknown", item("x", repo="unsloth/No-Such-Repo"), "unsloth/No-Such-Repo"),
    ("nomatch", item("x", includes=("*UD-IQ9_XX*",)), "no file of unsloth/DeepSeek-R1-GGUF matches"),
])
def test_bad_repo_or_pattern_fails_clearly(lab, host, hub, source, what, spec, expect):
    spec = {**spec, "name": f"{what}-{source}", "dest": f"{MODELS}/{what}-{source}"}
    result = converge(lab, host, hub, source, [spec])
    assert result.exit_code == 1
    s = status(host, spec["name"])
    assert s["phase"] == "refused" and expect in s["error"]
    assert hub.bytes_sent() == 0


@pytest.mark.parametrize("source", SOURCES)
def test_not_enough_disk_refused_before_fetching(lab, host, hub, source):
    name = f"disk-{source}"
    free = int(host.run(f"df -B1 --output=avail {MODELS} | tail -1", check=True).stdout)
    result = converge(lab, host, hub, source, [item(name)], model_download_disk_reserve_bytes=free - 1_000_000)
    assert result.exit_code == 1
    s = status(host, name)
    assert s["phase"] == "refused" and "left to fetch" in s["error"] and "free" in s["error"]
    assert hub.bytes_sent() == 0 and files_at(host, f"{MODELS}/{name}") == []
