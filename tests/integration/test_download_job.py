"""The host-side job runner on this machine: real modelscope client, real tmux, fake hub on loopback.

The same behaviours are checked on a lab host through the role in test_model_download_lab.py;
these run without root and pin down the runner itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktdeploy.hostside import download_job as dj
from ktdeploy.hostside import download_state as ds
from tests.support.fake_hub import CONFIG_REPO, GGUF_REPO, FakeHub, make_config_repo, make_gguf_repo, shard_paths

CLIENTS = {"modelscope": str(Path(sys.executable).with_name("modelscope")), "huggingface": None, "mirror": None}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    make_gguf_repo(root)
    make_config_repo(root)
    return root


@pytest.fixture
def hub(repos):
    with FakeHub(repos) as h:
        yield h


@pytest.fixture
def make_job(tmp_path, monkeypatch, hub):
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))  # a private tmux server, killed below
    made = []

    def make(source="modelscope", repo=GGUF_REPO, includes=("*UD-IQ1_S*",), excludes=(), **extra):
        job_dir = tmp_path / "downloads" / f"job{len(made)}"
        job_dir.mkdir(parents=True)
        job = {"name": f"test-{job_dir.name}", "source": source, "repo": repo, "includes": list(includes),
               "excludes": list(excludes), "dest": str(tmp_path / "models" / repo.split("/")[1]),
               "endpoint": hub.mirror_url if source == "mirror" else hub.url, "client": CLIENTS[source],
               "cache_dir": str(tmp_path / "cache"), "unset_proxy": True, "sample_interval": 0.2,
               "env": {"HOME": str(tmp_path), "MODELSCOPE_DOWNLOAD_INTRA_CLOUD": "false"}, **extra}
        ds.write_json(job_dir / "job.json", job)
        made.append(job_dir)
        return job_dir

    yield make
    for job_dir in made:
        _kill_runner(job_dir)
    subprocess.run(["tmux", "kill-server"], capture_output=True, env={**os.environ, "TMUX_TMPDIR": str(tmp_path)})


def _kill_runner(job_dir: Path) -> None:
    if ds.runner_alive(job_dir):
        pid = int((job_dir / "pid").read_text())
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def wait_done(job_dir: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (job_dir / "rc").is_file() and (job_dir / "rc").read_text().strip():
            time.sleep(0.1)
            return ds.status(job_dir)
        time.sleep(0.1)
    raise AssertionError(f"download did not finish in {timeout}s: {ds.status(job_dir)}\n"
                         + (job_dir / "log").read_text()[-3000:])


def dest_files(job_dir: Path) -> list[str]:
    dest = Path(ds.read_json(job_dir / "job.json")["dest"])
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


SOURCES = ["modelscope", "huggingface", "mirror"]


@pytest.mark.parametrize("source", SOURCES)
def test_happy_path_then_rerun_changes_nothing(make_job, hub, repos, source):
    job = make_job(source)
    first = dj.ensure(job)
    assert first["action"] == "started" and first["files"] == 3
    s = wait_done(job)
    assert s["phase"] == "complete" and s["rc"] == 0 and s["percent"] == 100.0
    assert s["files_verified"] == 3
    assert dest_files(job) == shard_paths()
    for rel in shard_paths():
        src = repos / GGUF_REPO / rel
        assert (Path(s["dest"]) / rel).read_bytes() == src.read_bytes()
    hub.clear_log()
    again = dj.ensure(job)
    assert again["action"] == "complete" and again["changed"] is False
    assert hub.requests == []  # nothing listed, nothing fetched, nothing re-hashed by a client


@pytest.mark.parametrize("source", SOURCES)
def test_config_repo_skips_safetensors(make_job, source):
    job = make_job(source, repo=CONFIG_REPO, includes=(), excludes=("*.safetensors",))
    dj.ensure(job)
    assert wait_done(job)["phase"] == "complete"
    got = dest_files(job)
    assert "config.json" in got and "figures/benchmark.jpg" in got and "tokenizer.json" in got
    assert not [p for p in got if p.endswith(".safetensors")]


@pytest.mark.parametrize("source", SOURCES)
def test_kill_9_mid_file_then_rerun_resumes(make_job, hub, source):
    hub.throttle_bps = 1_000_000
    job = make_job(source)
    assert dj.ensure(job)["action"] == "started"
    dest = Path(ds.read_json(job / "job.json")["dest"])
    deadline = time.monotonic() + 30
    while ds.bytes_on_disk(ds.read_json(job / "manifest.json")["files"], dest) < 1_500_000:
        assert time.monotonic() < deadline, (job / "log").read_text()
        time.sleep(0.05)
    _kill_runner(job)  # kill -9 the runner and the client, as a crash or OOM would
    time.sleep(0.3)
    s = ds.status(job)
    assert s["phase"] == "interrupted" and not s["running"] and 0 < s["done_bytes"] < s["total_bytes"]
    # what the killed client had on disk, and what had left the hub: the bytes between the two were
    # in flight (socket buffers, the client's read buffer) and are lost with it; a machine busy with
    # other work leaves more of them in flight
    files = ds.read_json(job / "manifest.json")["files"]
    on_disk = {m["path"]: m["on_disk"] for m in ds.measure(files, dest)}
    sent_before = {rel: hub.bytes_sent(rel) for rel in shard_paths()}
    hub.throttle_bps = None
    assert dj.ensure(job)["action"] == "started"
    assert wait_done(job)["phase"] == "complete"
    for rel in shard_paths():
        twice = hub.bytes_sent(rel) - (dest / rel).stat().st_size
        lost = sent_before[rel] - on_disk[rel]
        assert twice <= lost, f"{rel}: {twice} bytes fetched twice, {lost} were in flight: {hub.file_requests(rel)}"
    assert any(r.start > 0 for r in hub.file_requests()), "no request resumed with Range"


@pytest.mark.parametrize("source", SOURCES)
def test_corrupt_bytes_are_detected_and_never_land(make_job, hub, source):
    bad = shard_paths()[1]
    hub.corrupt(GGUF_REPO, bad)
    job = make_job(source)
    dj.ensure(job)
    s = wait_done(job, timeout=90)
    assert s["phase"] == "failed" and s["rc"] != 0
    dest = Path(s["dest"])
    assert not (dest / bad).exists()
    assert not Path(f"{dest / bad}.incomplete").exists() or source == "modelscope"
    assert (dest / shard_paths()[0]).is_file()  # good files are kept
    assert s["error"]


@pytest.mark.parametrize("source", SOURCES)
def test_unknown_repo_fails_clearly_before_starting(make_job, hub, source):
    job = make_job(source, repo="unsloth/No-Such-Repo")
    with pytest.raises(dj.JobError) as err:
        dj.ensure(job)
    assert err.value.code == dj.EXIT_BAD_INPUT and "unsloth/No-Such-Repo" in str(err.value)
    assert not (job / "rc").exists() and hub.bytes_sent() == 0
    assert ds.status(job)["phase"] == "refused" and "unsloth/No-Such-Repo" in ds.status(job)["error"]


@pytest.mark.parametrize("source", SOURCES)
def test_pattern_matching_nothing_is_an_error(make_job, hub, source):
    job = make_job(source, includes=("*UD-IQ9_XX*",))
    with pytest.raises(dj.JobError) as err:
        dj.ensure(job)
    assert err.value.code == dj.EXIT_BAD_INPUT and "no file" in str(err.value) and "UD-IQ9_XX" in str(err.value)
    assert hub.bytes_sent() == 0


def test_bare_directory_pattern_matches_nothing_and_says_how_to_fix(make_job, hub):
    job = make_job("modelscope", includes=("DeepSeek-R1-UD-IQ1_S/",))  # the real client takes nothing too
    with pytest.raises(dj.JobError) as err:
        dj.ensure(job)
    assert err.value.code == dj.EXIT_BAD_INPUT and "'DIR/*'" in str(err.value)


@pytest.mark.parametrize("source", SOURCES)
def test_not_enough_disk_is_refused_with_figures(make_job, hub, source, tmp_path):
    # a reserve 2 GB above the free space: other work on the machine (a second test lane taking a lab
    # host down) may free hundreds of MB between this reading and the job's own
    free = ds.free_bytes(tmp_path)
    job = make_job(source, disk_reserve_bytes=free + 2_000_000_000)
    with pytest.raises(dj.JobError) as err:
        dj.ensure(job)
    assert err.value.code == dj.EXIT_NO_DISK
    assert "9.0 MB left to fetch" in str(err.value) and "in reserve); free " in str(err.value)
    assert hub.bytes_sent() == 0 and ds.status(job)["phase"] == "refused"


def test_second_ensure_while_running_starts_nothing(make_job, hub):
    hub.throttle_bps = 2_000_000
    job = make_job()
    assert dj.ensure(job)["action"] == "started"
    assert dj.ensure(job)["action"] == "running"
    hub.throttle_bps = None
    assert wait_done(job)["phase"] == "complete"
    assert len(hub.file_requests()) == 3


def test_verify_rehashes_and_catches_a_changed_file(make_job, hub):
    job = make_job("mirror")
    dj.ensure(job)
    wait_done(job)
    assert dj.ensure(job, rehash=True)["action"] == "started"
    s = wait_done(job)
    assert s["phase"] == "complete" and s["verify_done_bytes"] == s["total_bytes"]
    victim = Path(s["dest"]) / shard_paths()[2]
    data, st = bytearray(victim.read_bytes()), victim.stat()
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # silent corruption: same size and mtime
    assert dj.ensure(job)["action"] == "complete"  # records trusted: no re-hash without --verify
    assert dj.ensure(job, rehash=True)["action"] == "started"
    s = wait_done(job)
    assert s["phase"] == "failed" and "sha256" in s["error"] and not victim.exists()
    assert dj.ensure(job)["action"] == "started"  # the next run fetches it again
    s = wait_done(job)
    assert s["phase"] == "complete" and victim.read_bytes() == (hub.root / GGUF_REPO / shard_paths()[2]).read_bytes()


def test_screen_runs_the_job_when_tmux_is_absent(make_job, monkeypatch, tmp_path):
    screendir = tmp_path / "screens"
    screendir.mkdir(mode=0o700)
    monkeypatch.setenv("SCREENDIR", str(screendir))
    real_which = dj.shutil.which
    monkeypatch.setattr(dj.shutil, "which", lambda name: None if name == "tmux" else real_which(name))
    job = make_job("mirror")
    try:
        started = dj.ensure(job)
        assert started["action"] == "started"
        assert wait_done(job)["phase"] == "complete"
        assert subprocess.run(["tmux", "ls"], capture_output=True).returncode != 0  # no tmux server was used
    finally:
        subprocess.run(["screen", "-S", dj.session_name(ds.read_json(job / "job.json")), "-X", "quit"],
                       capture_output=True)


def test_local_path_mirror(make_job, repos, tmp_path):
    local = tmp_path / "local-mirror"

    shutil.copytree(repos / GGUF_REPO, local / GGUF_REPO)
    sums = subprocess.run("find . -type f | sort | xargs sha256sum", shell=True, cwd=local / GGUF_REPO,
                          capture_output=True, text=True, check=True).stdout
    (local / GGUF_REPO / "SHA256SUMS").write_text(sums)
    job = make_job("mirror", endpoint=str(local))
    assert dj.ensure(job)["files"] == 3
    s = wait_done(job)
    assert s["phase"] == "complete" and dest_files(job) == shard_paths()


@pytest.mark.parametrize("source", SOURCES)
def test_a_refused_run_is_retried_and_verified_files_are_not_fetched_again(make_job, hub, source):
    """One run against an endpoint that answers nothing must not wedge a download: complete files stay
    complete (nothing to ask the endpoint for), and a job it refused starts with the right endpoint."""
    done, todo = make_job(source), make_job(source, repo=CONFIG_REPO, includes=(), excludes=("*.safetensors",))
    dj.ensure(done)
    assert wait_done(done)["phase"] == "complete"
    good = {j: ds.read_json(j / "job.json") for j in (done, todo)}
    hub.clear_log()
    for j in (done, todo):
        ds.write_json(j / "job.json", {**good[j], "endpoint": "http://127.0.0.1:9"})  # nothing listens there
    assert dj.ensure(done)["action"] == "complete"
    with pytest.raises(dj.JobError, match="cannot reach"):
        dj.ensure(todo)
    assert ds.status(todo)["phase"] == "refused"
    for j in (done, todo):
        ds.write_json(j / "job.json", good[j])
    assert dj.ensure(done)["action"] == "complete" and ds.status(done)["phase"] == "complete"
    assert dj.ensure(todo)["action"] == "started" and wait_done(todo)["phase"] == "complete"
    assert hub.file_requests(shard_paths()[0]) == []  # the verified shards were never fetched again


@pytest.mark.parametrize("source", ["mirror"])
def test_a_complete_job_left_refused_is_shown_complete_again(make_job, hub, source):
    """A state left `refused` by an older ktdeploy (or a listing that failed) over verified files:
    the next ensure finds everything verified and says so in the state too."""
    job = make_job(source)
    dj.ensure(job)
    wait_done(job)
    dj.update_state(job, phase="refused", error="cannot reach http://127.0.0.1:9/: refused")
    assert dj.ensure(job) == {"action": "complete", "changed": True, "files": 3,
                              "total_bytes": ds.status(job)["total_bytes"]}
    s = ds.status(job)
    assert s["phase"] == "complete" and s["error"] is None
    assert dj.ensure(job)["changed"] is False
