"""Model fan-out against every host fetching from the hub (docs/benchmarks.md, "Model fan-out").

    .venv/bin/python tests/bench/bench_fanout.py [--hosts 4 8] [--mb 60] [--hub-mbps 0]

Boots the largest number of lab hosts asked for, converges the base role on them once, then for
each host count runs `ktdeploy download --source mirror` against the fake hub on the controller
address twice: every host from the hub, and `--fan-out --peer-relay` (the seed from the hub, the
others from the seed through an SSH forward on the controller: lab hosts reach nothing else). The
model is the catalog's default items with generated shards of --mb MB each; the hosts' copies are
wiped between runs. Prints a Markdown table of wall time (the whole command: checks, play, waits)
and the bytes the hub sent; asserts only that every run ended with exit 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from ktdeploy import engine  # noqa: E402
from ktdeploy.lab import Lab  # noqa: E402
from ktdeploy.lab.paths import CONTROLLER_IP  # noqa: E402
from tests.support.fake_hub import FakeHub, serving_repos  # noqa: E402

RUN_VARS = {"base_packages": ["tmux", "acl", "python3-packaging"], "plan_force": True,
            "model_download_python": "/usr/bin/python3", "model_download_fanout_poll": 1}
WIPE = "rm -rf /srv/ktdeploy/models/DeepSeek-R1-GGUF /srv/ktdeploy/models/DeepSeek-R1 /var/lib/ktdeploy/downloads"


def inventory(path: Path, hosts) -> Path:
    path.write_text(yaml.safe_dump({"all": {"hosts": {h.name: h.hostvars("deploy") for h in hosts}, "vars": RUN_VARS}}))
    return path


def one_run(inv: Path, hub: FakeHub, hosts, fan_out: bool) -> tuple[float, int]:
    for h in hosts:
        h.run(WIPE, check=True, timeout=60)
    hub.clear_log()
    argv = [str(Path(sys.executable).with_name("ktdeploy")), "download", "-i", str(inv), "--source", "mirror",
            "--endpoint", hub.mirror_url, "--wait", "--plain"]
    if fan_out:
        with socket.socket() as s:
            s.bind((CONTROLLER_IP, 0))
            port = s.getsockname()[1]
        argv += ["--fan-out", "--peer-relay", f"{CONTROLLER_IP}:{port}"]
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{(r.stdout + r.stderr)[-4000:]}")
    return took, hub.bytes_sent()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--mb", type=float, default=60, help="size of each of the 3 shards, MB")
    ap.add_argument("--hub-mbps", type=float, default=0, help="the fake hub's limit per connection, MB/s (0: none)")
    args = ap.parse_args()
    lab = Lab()
    lab.ensure_ready()
    base = Path(tempfile.mkdtemp(prefix="ktd-bench-fanout-"))
    hosts = []
    rows = []
    try:
        for _ in range(max(args.hosts)):
            hosts.append(lab.up())
        again = None
        for _ in range(2):  # once more for the hosts a transient apt failure left out
            ready = engine.run_playbook("site.yml", inventory(base / "all.yml", hosts), extravars=RUN_VARS,
                                        tags=["base"], limit=again)
            if ready.exit_code == 0:
                break
            again = ready.failed_hosts + ready.unreachable_hosts
        else:
            raise SystemExit("\n".join(ready.errors + ready.failure_lines()))
        with serving_repos(base / "repos", CONTROLLER_IP, int(args.hub_mbps * 1e6) or None,
                           shard_size=int(args.mb * 1e6), other_variants=()) as hub:
            for n in args.hosts:
                inv = inventory(base / f"hosts{n}.yml", hosts[:n])
                t_hub, b_hub = one_run(inv, hub, hosts[:n], fan_out=False)
                t_fan, b_fan = one_run(inv, hub, hosts[:n], fan_out=True)
                rows.append((n, t_hub, b_hub, t_fan, b_fan))
                print(f"{n} hosts: hub {t_hub:.1f} s {b_hub} B; fan-out {t_fan:.1f} s {b_fan} B", flush=True)
        print(f"\nmodel {rows[0][4] / 1e6:.1f} MB (3 shards + config files: what the seed fetches), hub limit "
              f"{args.hub_mbps or 'none'} MB/s per connection\n")
        print("| hosts | every host from the hub: s | hub MB | fan-out via relay: s | hub MB | hub bytes ratio |")
        print("|---|---|---|---|---|---|")
        for n, th, bh, tf, bf in rows:
            print(f"| {n} | {th:.1f} | {bh / 1e6:.1f} | {tf:.1f} | {bf / 1e6:.1f} | {bh / bf:.2f} |")
    finally:
        lab.close()  # takes down the hosts it booted
        subprocess.run(["rm", "-rf", str(base)])


if __name__ == "__main__":
    main()
