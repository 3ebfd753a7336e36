"""The fan-out's host-side parts on this machine: a seed downloads from the fake hub's mirror, then
`peer_serve.py` (a real detached process) serves its verified files and a second host's runner
(`download_job.py run`, mirror source) fetches them from it. The role drives the same scripts on
lab hosts in test_model_fanout_lab.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktdeploy.hostside import download_job as dj
from ktdeploy.hostside import download_state as ds
from ktdeploy.hostside import peer_serve
from tests.support.fake_hub import CONFIG_REPO, GGUF_REPO, serving_repos, shard_paths

SCRIPT = Path(peer_serve.__file__)
ITEMS = {"gguf": (GGUF_REPO, ["DeepSeek-R1-UD-IQ1_S/*"], []), "cfg": (CONFIG_REPO, [], ["*.safetensors"])}


def job(jobs: Path, models: Path, name: str, endpoint: str, max_workers: int = 4) -> Path:
    repo, includes, excludes = ITEMS[name]
    job_dir = jobs / name
    job_dir.mkdir(parents=True, exist_ok=True)
    ds.write_json(job_dir / "job.json", {"name": name, "source": "mirror", "repo": repo, "includes": includes,
                                         "excludes": excludes, "dest": str(models / name), "endpoint": endpoint,
                                         "unset_proxy": True, "sample_interval": 0.2, "max_workers": max_workers})
    return job_dir


def fetch(job_dir: Path) -> dict:
    """List and fetch in this process, as the detached session would."""
    ds.write_json(job_dir / "manifest.json", dj.make_manifest(dj.load_job(job_dir)))
    dj.run(job_dir)
    return ds.status(job_dir)


def serve(jobs: Path, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(SCRIPT), "start", str(jobs), *args, "--bind", "127.0.0.1", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    doc = json.loads(r.stdout)
    return {**doc, "rc": r.returncode}


def stop(jobs: Path) -> dict:
    r = subprocess.run([sys.executable, str(SCRIPT), "stop", str(jobs)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def served(jobs: Path) -> list[dict]:
    return [json.loads(ln) for ln in (jobs / ".peer" / "requests.log").read_text().splitlines()]


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A seed whose two downloads are complete, from the hub once."""
    root = tmp_path_factory.mktemp("fanout")
    with serving_repos(root / "repos") as hub:
        for name in ITEMS:
            assert fetch(job(root / "seed" / "jobs", root / "seed" / "models", name, hub.mirror_url))["phase"] == "complete"
    yield root / "seed"
    stop(root / "seed" / "jobs")


def test_a_host_fetches_the_seeds_verified_files_from_it(seed, tmp_path):
    jobs = seed / "jobs"
    up = serve(jobs, "gguf", "cfg")
    try:
        assert up["rc"] == 0 and up["action"] == "serving", up
        sums = ds.parse_sha256sums(subprocess.run(["curl", "-sf", f"{up['url']}/{GGUF_REPO}/SHA256SUMS"],
                                                  capture_output=True, text=True, check=True).stdout)
        assert sorted(sums) == shard_paths()  # what the seed verified, not the hub's whole repo
        for name in ITEMS:
            s = fetch(job(tmp_path / "jobs", tmp_path / "models", name, up["url"]))
            assert s["phase"] == "complete" and s["files_verified"] == s["files"], s
            for f in ds.read_json(tmp_path / "jobs" / name / "manifest.json")["files"]:
                assert (tmp_path / "models" / name / f["path"]).read_bytes() == \
                    (seed / "models" / name / f["path"]).read_bytes()
    finally:
        done = stop(jobs)
    files = {f"{repo}/{f['path']}": f["size"] for name, (repo, _, _) in ITEMS.items()
             for f in ds.read_json(jobs / name / "manifest.json")["files"]}
    bodies = [r for r in served(jobs) if r["sent"] and not r["path"].endswith("SHA256SUMS")]
    assert sorted(r["path"].lstrip("/") for r in bodies) == sorted(files)  # each file once
    assert {r["client"] for r in served(jobs)} == {"127.0.0.1"}  # who fetched it, for the operator
    assert sum(r["sent"] for r in bodies) == sum(files.values())
    assert done["action"] == "stopped" and done["bytes_sent"] >= sum(files.values())
    assert stop(jobs)["action"] == "none"  # nothing left running


def test_an_interrupted_transfer_resumes_with_a_range(seed, tmp_path):
    jobs = seed / "jobs"
    up = serve(jobs, "gguf")
    try:
        job_dir = job(tmp_path / "jobs", tmp_path / "models", "gguf", up["url"])
        first = shard_paths()[0]
        have = 1_000_000
        part = tmp_path / "models" / "gguf" / (first + ".incomplete")
        part.parent.mkdir(parents=True)
        part.write_bytes((seed / "models" / "gguf" / first).read_bytes()[:have])
        assert fetch(job_dir)["phase"] == "complete"
    finally:
        stop(jobs)
    got = [r for r in served(jobs) if r["path"].endswith(first) and r["sent"]]  # not the listing's HEAD
    assert [(r["status"], r["start"]) for r in got] == [(206, have)], got
    assert got[0]["sent"] == (seed / "models" / "gguf" / first).stat().st_size - have


def test_a_corrupt_file_on_the_seed_is_refused(seed, tmp_path):
    jobs = seed / "jobs"
    bad = seed / "models" / "gguf" / shard_paths()[1]
    original = bad.read_bytes()
    up = serve(jobs, "gguf")  # published while verified; corrupted afterwards, in place
    try:
        with bad.open("r+b") as f:
            f.write(bytes(b ^ 0xFF for b in original[:16]))
        s = fetch(job(tmp_path / "jobs", tmp_path / "models", "gguf", up["url"], max_workers=1))
    finally:
        stop(jobs)
        bad.write_bytes(original)
        rec = ds.read_json(jobs / "gguf" / "state.json")
        rec["verified"][shard_paths()[1]].update(ds._stamp(bad))  # as verified before the test
        ds.write_json(jobs / "gguf" / "state.json", rec)
    assert s["phase"] == "failed" and "sha256 does not match" in s["error"], s
    assert not (tmp_path / "models" / "gguf" / shard_paths()[1]).exists()


def test_the_seed_refuses_to_publish_what_it_has_not_verified(seed, tmp_path):
    jobs = seed / "jobs"
    f = seed / "models" / "cfg" / "config.json"
    before = f.stat().st_mtime_ns
    f.touch()  # changed since it was hashed: its record no longer holds
    try:
        up = serve(jobs, "cfg")
        assert up["rc"] == 2 and "not complete and verified" in up["error"], up
        missing = serve(jobs, "nothing")
        assert missing["rc"] == 2 and "no download of that name" in missing["error"]
    finally:
        import os

        os.utime(f, ns=(before, before))


def test_the_server_exits_by_itself_when_idle(seed):
    jobs = seed / "jobs"
    r = subprocess.run([sys.executable, str(SCRIPT), "start", str(jobs), "cfg", "--bind", "127.0.0.1", "--port", "0",
                        "--idle-exit", "1"], capture_output=True, text=True, timeout=60)
    pid = json.loads(r.stdout)["pid"]
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the idle server did not exit"
        time.sleep(0.2)
    assert stop(jobs)["action"] == "none"


def test_the_controller_as_seed_downloads_once_then_serves(tmp_path):
    from ktdeploy import controller_seed

    lines: list[str] = []
    with serving_repos(tmp_path / "repos") as hub:
        names = controller_seed.download(tmp_path / "ctl", None, "mirror", hub.mirror_url, lines.append)
        fetched = hub.bytes_sent()
        hub.clear_log()
        assert controller_seed.download(tmp_path / "ctl", None, "mirror", hub.mirror_url, lines.append) == names
        assert hub.requests == [] and len(lines) == 2 and all("is complete" in ln for ln in lines)
    assert fetched > 9_000_000  # the three shards and the config files, once
    with controller_seed.serve(tmp_path / "ctl", names, "127.0.0.1", 0) as server:
        s = fetch(job(tmp_path / "host" / "jobs", tmp_path / "host" / "models", "gguf", server.url))
    assert s["phase"] == "complete" and s["files_verified"] == 3, s
