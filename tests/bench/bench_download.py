"""Download and verification benchmark (docs/benchmarks.md, "Downloads").

    .venv/bin/python tests/bench/bench_download.py [--gb 1.0] [--throttle-mbps 0] [--rounds 2]

Serves a generated 3-shard GGUF repo from the fake hub on loopback and, in the same run, fetches
the same files with plain `curl` (3 in parallel, like the client's workers) and with the
host-side job runner (`download_job.py` in tmux, the real pinned modelscope client, then our
verification), and with the mirror fetcher. Then times `sha256sum` against our verifier on the
same files (page cache warm for both). Prints a Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ktdeploy.hostside import download_job as dj  # noqa: E402
from ktdeploy.hostside import download_state as ds  # noqa: E402
from tests.support.fake_hub import GGUF_REPO, FakeHub, make_gguf_repo, shard_paths  # noqa: E402


def curl_all(hub: FakeHub, dest: Path) -> float:
    dest.mkdir(parents=True)
    argv = ["curl", "-sS", "--fail", "-Z", "--parallel-immediate", "--parallel-max", "4", "--noproxy", "*"]
    for rel in shard_paths():
        argv += ["-o", str(dest / Path(rel).name), f"{hub.mirror_url}/{GGUF_REPO}/{rel}"]
    t = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t


def runner(hub: FakeHub, work: Path, source: str) -> tuple[float, float]:
    """(seconds from start to all files fetched, seconds in total including our verification)."""
    job_dir = work / "jobs" / source
    job_dir.mkdir(parents=True)
    ds.write_json(job_dir / "job.json", {
        "name": f"bench-{source}", "source": source, "repo": GGUF_REPO, "includes": ["DeepSeek-R1-UD-IQ1_S/*"],
        "dest": str(work / source), "endpoint": hub.mirror_url if source == "mirror" else hub.url,
        "client": str(Path(sys.executable).with_name("modelscope")), "cache_dir": str(work / "cache"),
        "unset_proxy": True, "sample_interval": 1,
        "env": {"HOME": str(work), "MODELSCOPE_DOWNLOAD_INTRA_CLOUD": "false", "TQDM_DISABLE": "1"}})
    t = time.time()
    assert dj.ensure(job_dir)["action"] == "started"
    fetched = None
    deadline = time.monotonic() + 1800
    while not (job_dir / "rc").is_file() or not (job_dir / "rc").read_text().strip():
        if fetched is None and ds.read_json(job_dir / "state.json", {}).get("phase") == "verifying":
            fetched = time.time() - t
        assert time.monotonic() < deadline, "runner did not finish"
        time.sleep(0.02)
    total = time.time() - t
    state = ds.read_json(job_dir / "state.json")
    assert state["phase"] == "complete", (job_dir / "log").read_text()[-2000:]
    return (fetched or total), total


def time_it(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="total size of the three shards (decimal GB)")
    ap.add_argument("--throttle-mbps", type=float, default=0, help="per-connection limit of the fake hub, MB/s")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ["TMUX_TMPDIR"] = tempfile.mkdtemp(prefix="ktd-bench-tmux-")
    base = Path(tempfile.mkdtemp(prefix="ktd-bench-"))
    try:
        make_gguf_repo(base / "repos", shard_size=int(args.gb * 1e9 / 3), other_variants=())
        files = [{"path": rel, "size": (base / "repos" / GGUF_REPO / rel).stat().st_size} for rel in shard_paths()]
        total = sum(f["size"] for f in files)
        rows = []
        with FakeHub(base / "repos", throttle_bps=int(args.throttle_mbps * 1e6) or None) as hub:
            for rel in shard_paths():  # hash once up front so listing time is not measured
                hub.sha256(base / "repos" / GGUF_REPO / rel)
            for rnd in range(args.rounds):
                work = base / f"round{rnd}"
                t_curl = curl_all(hub, work / "curl")
                ms_fetch, ms_total = runner(hub, work, "modelscope")
                mi_fetch, mi_total = runner(hub, work, "mirror")
                rows.append((t_curl, ms_fetch, ms_total, mi_fetch, mi_total))
                shutil.rmtree(work)
        gb = total / 1e9
        print(f"\n{gb:.2f} GB in 3 shards, throttle {args.throttle_mbps or 'none'} MB/s per connection\n")
        print("| round | curl GB/s | modelscope fetch GB/s (ratio) | modelscope incl. verify (ratio) |"
              " mirror GB/s (ratio) |")
        print("|---|---|---|---|---|")
        for i, (c, mf, mt, xf, xt) in enumerate(rows):
            print(f"| {i + 1} | {gb / c:.3f} | {gb / mf:.3f} ({c / mf:.2f}) | {gb / mt:.3f} ({c / mt:.2f}) |"
                  f" {gb / xt:.3f} ({c / xt:.2f}) |")
        # verification vs sha256sum on the same files (the last round's repo files, page cache warm)
        repo = base / "repos" / GGUF_REPO
        for f in files:
            f["sha256"] = hub.sha256(repo / f["path"])
        paths = [str(repo / f["path"]) for f in files]
        t_sum = min(time_it(lambda: subprocess.run(["sha256sum", *paths], check=True, capture_output=True))
                    for _ in range(2))
        t_ours = min(time_it(lambda: ds.verify(files, repo, {}, rehash=True)) for _ in range(2))
        print(f"\n| verify {gb:.2f} GB | seconds | GB/s |\n|---|---|---|")
        print(f"| sha256sum | {t_sum:.2f} | {gb / t_sum:.3f} |")
        print(f"| download_state.verify | {t_ours:.2f} | {gb / t_ours:.3f} (ratio {t_sum / t_ours:.2f}) |")
    finally:
        subprocess.run(["tmux", "kill-server"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(os.environ["TMUX_TMPDIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
