"""Benchmark: first converge vs idempotent re-run of base + python_env(venv), fresh lab host each round.

    sudo .venv/bin/python tests/bench/converge_rerun.py [--rounds 3]

Each round boots a fresh lab host, runs plain `ansible-playbook playbooks/site.yml --tags
base,python_env --skip-tags plan` twice with the repo's ansible.cfg (the first with --flush-cache,
so facts are gathered as on a new host), checks the re-run reports changed=0, and takes the host
down. `--site` measures the whole site.yml instead (today: plan + base + python_env). Prints every round, the medians, the
ratio, the machine's load, and the ansible.cfg settings in force. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import configparser
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converge import ENV_PACKAGES, REPO, ansible_playbook, role_vars, write_inventory  # noqa: E402

from ktdeploy.lab import Lab  # noqa: E402

SETTINGS = [("defaults", "forks"), ("defaults", "gathering"), ("defaults", "fact_caching"),
            ("defaults", "fact_caching_timeout"), ("ssh_connection", "pipelining"), ("ssh_connection", "ssh_args")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--site", action="store_true", help="run all of site.yml, not only base + python_env")
    args = parser.parse_args()
    scope = [] if args.site else ["--tags", "base,python_env", "--skip-tags", "plan"]
    print("measuring:", "playbooks/site.yml", *scope)

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    print("ansible.cfg:", "; ".join(f"{k} = {cfg.get(s, k, fallback='(default)')}" for s, k in SETTINGS))

    lab = Lab()
    firsts, reruns = [], []
    try:
        lab.ensure_ready()
        lab.wheelhouse.add(ENV_PACKAGES)
        for n in range(1, args.rounds + 1):
            host = lab.up()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    inventory = write_inventory(host, Path(tmp) / "inventory.yml", role_vars(lab.wheelhouse))
                    first = ansible_playbook(inventory, "--flush-cache", *scope)
                    if first.rc != 0:
                        print(first.explain(), file=sys.stderr)
                        return 1
                    rerun = ansible_playbook(inventory, *scope)
                    changed = rerun.recap(host.name)["changed"]
                    if rerun.rc != 0 or changed != 0:
                        print(rerun.explain(), file=sys.stderr)
                        return 1
            finally:
                lab.down(host.index)
            firsts.append(first.seconds)
            reruns.append(rerun.seconds)
            print(f"round {n}: first {first.seconds:.1f} s, re-run {rerun.seconds:.1f} s (changed=0), "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        lab.close()

    first_med, rerun_med = statistics.median(firsts), statistics.median(reruns)
    ratio = rerun_med / first_med
    print(f"median: first {first_med:.1f} s, re-run {rerun_med:.1f} s, ratio {ratio:.2f} "
          f"(target <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'}); {os.cpu_count()} CPUs")
    return 0 if ratio <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
