"""`ktdeploy download --fan-out --peer-relay` on three lab hosts: the fake hub (on the controller
address) serves each file once, to the seed; the other two fetch from the seed through an SSH
forward on the controller (lab hosts reach only the controller, not each other). Then a transfer
from the seed killed midway resumes, a file corrupted on the seed is refused by the host that
fetches it, the controller serves as the seed, and hosts joined into a LAN fetch from the seed's own
address with no relay. Real roles, real ansible-playbook, real sshd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ktdeploy import engine
from ktdeploy.lab.paths import CONTROLLER_IP
from tests.support.fake_hub import CONFIG_REPO, GGUF_REPO, FakeHub, serving_repos, shard_paths

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOBS = "/var/lib/ktdeploy/downloads"
GGUF_DIR = "/srv/ktdeploy/models/DeepSeek-R1-GGUF"
SHARDS = "DeepSeek-R1-UD-IQ1_S"
RUN_VARS = {"base_packages": ["tmux", "acl", "python3-packaging"], "plan_force": True,
            "model_download_python": "/usr/bin/python3",  # the mirror source needs no client: no venv
            "model_download_fanout_poll": 1}


@pytest.fixture(scope="module")
def hub(lab, tmp_path_factory):
    with serving_repos(tmp_path_factory.mktemp("hub"), CONTROLLER_IP) as h:
        yield h


@pytest.fixture(scope="module")
def hosts(lab, tmp_path_factory):
    """Three hosts with the base role converged once."""
    made = []
    try:
        for _ in range(3):
            made.append(lab.up())
        inv = write_inventory(tmp_path_factory.mktemp("inv") / "hosts.yml", made)
        ready = engine.run_playbook("site.yml", inv, extravars=RUN_VARS, tags=["base"])
        assert ready.exit_code == 0, "\n".join(ready.errors + ready.failure_lines())
        yield made
    finally:
        for h in made:
            lab.down(h.index)


def write_inventory(path: Path, hosts, **extra) -> Path:
    path.write_text(yaml.safe_dump({"all": {"hosts": {h.name: h.hostvars("deploy") for h in hosts},
                                            "vars": {**RUN_VARS, **extra}}}, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((CONTROLLER_IP, 0))
        return s.getsockname()[1]


def download_argv(inventory: Path, hub: FakeHub, *options: str) -> list[str]:
    """`ktdeploy download --fan-out` from the fake hub's mirror, with the options naming the seed's path."""
    return [str(Path(sys.executable).with_name("ktdeploy")), "download", "-i", str(inventory), "--source", "mirror",
            "--endpoint", hub.mirror_url, "--fan-out", *options, "--plain"]


def run_download(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})


def fan_out(inventory: Path, hub: FakeHub, port: int, seed) -> subprocess.Popen:
    argv = download_argv(inventory, hub, "--seed", seed.name, "--peer-relay", f"{CONTROLLER_IP}:{port}")
    out = tempfile.TemporaryFile("w+")  # not a pipe: nobody reads it while the run goes on
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.out = out
    return proc


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    proc.wait(timeout)
    proc.out.seek(0)
    return proc.returncode, proc.out.read()


def status(host) -> dict:
    r = host.run(f"python3 /usr/local/lib/ktdeploy/download_state.py --json {JOBS}", check=True, timeout=60)
    return {d["name"]: d for d in json.loads(r.stdout)}


def sums(host, paths: list[str]) -> dict:
    r = host.run(f"cd {GGUF_DIR} && sha256sum " + " ".join(paths), timeout=60)
    return dict(reversed(ln.split()) for ln in r.stdout.splitlines())


def seed_requests(seed) -> list[dict]:
    r = seed.run(f"cat {JOBS}/.peer/requests.log", check=True, timeout=30)
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def test_the_hub_serves_each_file_once_and_every_host_ends_verified(hosts, hub, tmp_path):
    port = free_port()
    code, out = finish(fan_out(write_inventory(tmp_path / "hosts.yml", hosts), hub, port, hosts[0]))
    assert code == 0, out[-4000:]
    assert f"fan-out: {CONTROLLER_IP}:{port} on this machine relays to {hosts[0].name}" in out
    wanted = {(GGUF_REPO, f) for f in hub.files(GGUF_REPO) if f.startswith(f"{SHARDS}/")} | \
        {(CONFIG_REPO, f) for f in hub.files(CONFIG_REPO) if not f.endswith(".safetensors")}
    got = [r.file for r in hub.file_requests() if r.method == "GET" and r.sent]
    assert sorted(got) == sorted(f for _, f in wanted)  # each file once, to the seed
    assert hub.bytes_sent() == sum((hub.repo_dir(repo) / f).stat().st_size for repo, f in wanted)
    truth = {p: hub.sha256(hub.repo_dir(GGUF_REPO) / p) for p in shard_paths()}
    for h in hosts:
        docs = status(h)
        assert all(d["phase"] == "complete" and d["files_verified"] == d["files"] for d in docs.values()), docs
        assert sums(h, shard_paths()) == truth
    from_peers = [r for r in seed_requests(hosts[0]) if r["sent"] and not r["path"].endswith("SHA256SUMS")]
    assert len(from_peers) == 2 * len(wanted)  # each of the two other hosts fetched each file once
    assert hosts[0].run("pgrep -f 'peer_serve[.]py'", timeout=30).returncode == 1  # the seed's server stopped
    with pytest.raises(OSError):
        socket.create_connection((CONTROLLER_IP, port), timeout=2).close()  # and the relay


def test_a_killed_transfer_from_the_seed_resumes(hosts, hub, tmp_path):
    hub.clear_log()
    b = hosts[1]
    b.run(f"rm -rf {GGUF_DIR} {JOBS}/{SHARDS}", check=True, timeout=30)
    slow_inventory = write_inventory(tmp_path / "slow.yml", hosts, model_download_peer_max_rate=300_000)
    slow = fan_out(slow_inventory, hub, free_port(), hosts[0])
    try:
        deadline = time.monotonic() + 150
        while ((status(b).get(SHARDS) or {}).get("done_bytes") or 0) < 1_500_000:
            assert time.monotonic() < deadline and slow.poll() is None, "no transfer from the seed under way"
            time.sleep(0.3)
        b.run(f"kill -9 -- -$(ps -o pgid= -p $(cat {JOBS}/{SHARDS}/pid) | tr -d ' ')", check=True, timeout=30)
        code, out = finish(slow)
    finally:
        slow.kill()
    assert code == 1 and f"Downloads from the seed {hosts[0].name} not complete" in out, out[-3000:]
    assert status(b)[SHARDS]["phase"] == "interrupted"
    code, out = finish(fan_out(write_inventory(tmp_path / "hosts.yml", hosts), hub, free_port(), hosts[0]))
    assert code == 0, out[-4000:]
    assert status(b)[SHARDS]["phase"] == "complete"
    resumed = [r for r in seed_requests(hosts[0]) if r["sent"] and r["start"] > 0]
    assert resumed and all(r["status"] == 206 for r in resumed), seed_requests(hosts[0])
    assert sum(r["sent"] for r in seed_requests(hosts[0]) if SHARDS in r["path"]) < sum(
        (hub.repo_dir(GGUF_REPO) / p).stat().st_size for p in shard_paths())  # not fetched again from zero
    assert hub.bytes_sent() == 0  # the seed was complete: the hub was not asked


def test_a_file_corrupted_on_the_seed_is_refused(hosts, hub, tmp_path):
    hub.clear_log()
    seed, b = hosts[0], hosts[1]
    bad = shard_paths()[1]
    # bit rot that keeps size and mtime: the seed's verification record still holds, so it serves it
    seed.run(f"cd {GGUF_DIR} && cp -p {bad} /tmp/ref && printf 'XXXXXXXX' | dd of={bad} bs=1 seek=100 conv=notrunc "
             f"status=none && touch -r /tmp/ref {bad}", check=True, timeout=30)
    b.run(f"rm -f {GGUF_DIR}/{bad}", check=True, timeout=30)
    try:
        code, out = finish(fan_out(write_inventory(tmp_path / "hosts.yml", hosts), hub, free_port(), hosts[0]))
    finally:
        seed.run(f"cd {GGUF_DIR} && cp -p /tmp/ref {bad}", check=True, timeout=30)
    assert code == 1, out[-3000:]
    s = status(b)[SHARDS]
    assert s["phase"] == "failed" and "sha256 does not match" in s["error"], s
    assert b.run(f"test -e {GGUF_DIR}/{bad}", timeout=30).returncode == 1  # nothing at the final path
    assert status(hosts[2])[SHARDS]["phase"] == "complete"
    assert hub.bytes_sent() == 0


def test_the_controller_as_seed(hosts, hub, tmp_path):
    hub.clear_log()
    for h in hosts[1:]:
        h.run(f"rm -rf {GGUF_DIR} {JOBS}/{SHARDS}", check=True, timeout=30)
    port = free_port()
    r = run_download(download_argv(write_inventory(tmp_path / "hosts.yml", hosts), hub, "--controller-seed",
                                   str(tmp_path / "ctl"), "--peer-address", f"{CONTROLLER_IP}:{port}"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert f"fan-out: serving {tmp_path / 'ctl'} at http://{CONTROLLER_IP}:{port} for this run" in r.stderr
    got = sorted(x.file for x in hub.file_requests() if x.method == "GET" and x.sent)
    assert got == sorted(set(got)) and set(shard_paths()) <= set(got)  # each file once, to this machine
    truth = {p: hub.sha256(hub.repo_dir(GGUF_REPO) / p) for p in shard_paths()}
    for h in hosts:
        assert status(h)[SHARDS]["phase"] == "complete" and sums(h, shard_paths()) == truth


def reaches(host, other) -> bool:
    return host.run(f"timeout 3 bash -c '</dev/tcp/{other.address}/22'", timeout=30).returncode == 0


def test_hosts_on_a_lan_fetch_from_the_seed_directly(lab, hosts, hub, tmp_path):
    hub.clear_log()
    seed = hosts[0]
    assert not reaches(hosts[1], seed)  # lab hosts are fenced from each other...
    lab.join_lan(hosts)
    assert reaches(hosts[1], seed) and reaches(hosts[2], seed)  # ...until they share a LAN
    for h in hosts[1:]:
        h.run(f"rm -rf {GGUF_DIR} {JOBS}/{SHARDS}", check=True, timeout=30)
    # no relay: the seed's own address, as on a LAN
    r = run_download(download_argv(write_inventory(tmp_path / "hosts.yml", hosts), hub, "--seed", seed.name))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "relays" not in r.stderr
    truth = {p: hub.sha256(hub.repo_dir(GGUF_REPO) / p) for p in shard_paths()}
    for h in hosts[1:]:
        assert status(h)[SHARDS]["phase"] == "complete" and sums(h, shard_paths()) == truth
    bodies = [x for x in seed_requests(seed) if x["sent"] and SHARDS in x["path"] and not x["path"].endswith("SUMS")]
    assert sorted(x["client"] for x in bodies) == sorted(h.address for h in hosts[1:] for _ in shard_paths())
    assert hub.bytes_sent() == 0  # the seed was complete: the hub was not asked
