"""Benchmark: `ktdeploy status` wall time for 1 vs 4 lab hosts (docs/benchmarks.md, "Status").

Boots 4 lab hosts (needs root and the lab: scripts/setup.sh), puts each in the serving state with
the test stand-in units, then times the real CLI (`ktdeploy status -i INV HOSTS...`, a fresh process
each run, as a user runs it) and, apart, the SSH + probe part in-process (`ktdeploy.status.collect`).
Prints a Markdown table row per measurement. Takes the hosts down at the end, even on failure.

    python scripts/bench_status.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ktdeploy import status as st  # noqa: E402
from ktdeploy.lab import Lab  # noqa: E402
from tests.support import lab_serving as ls  # noqa: E402


CLI, COLLECT = "ktdeploy status (CLI process)", "collect() in-process (SSH + probe)"
CPU: list[float] = []  # CPU seconds (user + sys) of each CLI run: what contention does not change


def time_cli(inv: Path, names: list[str], runs: int) -> list[float]:
    exe = Path(sys.executable).parent / "ktdeploy"
    out = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run([str(exe), "status", "-i", str(inv), *names], capture_output=True, text=True)
        out.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise SystemExit(f"status exited {r.returncode}: {r.stdout}{r.stderr}")
    return out


def time_collect(targets, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        statuses = st.collect(targets)
        out.append(time.perf_counter() - t0)
        bad = [s.name for s in statuses if s.verdict != "ok"]
        if bad:
            raise SystemExit(f"not ok: {bad}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    lab = Lab()
    lab.ensure_ready()
    hosts = []
    try:
        for _ in range(4):
            hosts.append(lab.up())
        for h in hosts:
            ls.make_serving(h)
        with tempfile.TemporaryDirectory() as tmp:
            inv = ls.inventory(Path(tmp) / "inv.yml", hosts)
            names = [h.name for h in hosts]
            targets = [h.target() for h in hosts]
            time_cli(inv, names, 1)  # warm-up: page cache, host-side python
            # 1 and 4 hosts interleaved, so a change in the machine's load hits both alike
            rows = {(what, k): [] for what in (CLI, COLLECT) for k in (1, 4)}
            cpu = {1: [], 4: []}
            for _ in range(args.runs):
                for k in (1, 4):
                    CPU.clear()
                    rows[(CLI, k)] += time_cli(inv, names[:k], 1)
                    cpu[k] += CPU
                    rows[(COLLECT, k)] += time_collect(targets[:k], 1)
            cpu = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"load average (1 min) after: {os.getloadavg()[0]:.1f}; runs per row: {args.runs}\n")
        print("| what | hosts | median s | min s | max s |")
        print("|---|---|---|---|---|")
        for (what, k), times in rows.items():
            print(f"| {what} | {k} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
        for what in (CLI, COLLECT):
            ratio = statistics.median(rows[(what, 4)]) / statistics.median(rows[(what, 1)])
            print(f"\n{what}: 4 hosts / 1 host = {ratio:.2f}x")
        print("\nCPU time of one CLI run (user+sys, median): " + ", ".join(f"{k} host(s) {v:.2f} s" for k, v in cpu.items()))
    finally:
        for h in hosts:
            lab.down(h.index)
        lab.close()


if __name__ == "__main__":
    main()
