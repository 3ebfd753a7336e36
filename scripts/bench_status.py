"""Benchmark: `ktdeploy status` and `ktdeploy provision --check` on 1 vs N lab hosts (docs/benchmarks.md).

Boots N lab hosts (default 16; needs root and the lab: scripts/setup.sh), puts each in the serving
state with the test stand-in units (tests/support/lab_serving.py), then times:

- the real CLI, `ktdeploy status -i INV HOSTS...`, a fresh process each run as a user runs it, for
  1, 4 and N hosts interleaved (so a change in the machine's load hits every size alike), with the
  CPU time of the CLI process, the CPU time the lab hosts spent meanwhile (sshd, the probe, the
  stand-in servers: on real hosts that work runs on their own CPUs, here on the controller's) and
  the busy fraction of the whole machine during the run;
- apart, the SSH + probe part in-process (`ktdeploy.status.collect`);
- `ktdeploy provision -i INV --check --plain` (connection check, preflight, the site.yml dry run)
  for 1 and N hosts, unless --provision-runs 0. The lab hosts have no GPU, so the check runs the roles
  a lab host can take (`--only base,python_env`, with `plan_force`, as tests/bench/converge_rerun.py);
  each run gets an empty fact cache, so facts are gathered as on a first run. It runs first, on the
  fresh hosts (the stand-in serving state leaves /var/lib/ktdeploy without the service group, which
  check mode refuses);
- the probe script alone on one host (no SSH), its CPU time as bash's `time` counts it.

Runs where a host was not ok are kept in the figures and listed. Prints Markdown table rows. Takes
every host down at the end, even on failure or Ctrl-C.

    python scripts/bench_status.py [--hosts 16] [--runs 7] [--provision-runs 3] [--probe-runs 15]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ktdeploy import status as st  # noqa: E402
from ktdeploy.lab import Lab  # noqa: E402
from ktdeploy.lab.hosts import proc_stats  # noqa: E402
from tests.converge import role_vars  # noqa: E402
from tests.support import lab_serving as ls  # noqa: E402

CLI, COLLECT, PROVISION = "ktdeploy status (CLI process)", "collect() in-process (SSH + probe)", "ktdeploy provision --check"
EXE = Path(sys.executable).parent / "ktdeploy"


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def lab_namespaces(lab, hosts) -> set[str]:
    """The PID namespaces of these lab hosts: those of the children of their systemd-nspawn."""
    groups = {(lab.paths.host_dir(h.index) / "pid").read_text().split()[0] for h in hosts}
    nspawn = {p.name for p, f in proc_stats() if f[2] in groups and (p / "comm").read_text().strip() == "systemd-nspawn"}
    out = set()
    for p, f in proc_stats():
        if f[1] in nspawn:
            out.add(os.readlink(p / "ns/pid"))
    if len(out) != len(hosts):
        raise SystemExit(f"found {len(out)} lab PID namespaces for {len(hosts)} hosts")
    return out


def lab_cpu(namespaces: set[str]) -> float:
    """CPU seconds used so far by the lab hosts' processes (user + sys, with their reaped children)."""
    total = 0
    for p, f in proc_stats():
        try:
            if os.readlink(p / "ns/pid") in namespaces:
                total += sum(int(x) for x in f[11:15])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def settle(namespaces: set[str], timeout: float = 15.0) -> None:
    """Wait until no SSH session is left on the lab hosts (one sshd per host: its listener).

    A process that exits while /proc is read is counted twice or not at all; reading only while the
    hosts are quiet keeps the CPU figures exact (the wall time is measured apart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sshd = 0
        for p, _ in proc_stats():
            try:
                if os.readlink(p / "ns/pid") in namespaces and (p / "comm").read_text().strip() == "sshd":
                    sshd += 1
            except OSError:
                continue
        if sshd <= len(namespaces):
            return
        time.sleep(0.05)


NAMESPACES: set[str] = set()


class Timed:
    """Wall time, CPU time of child processes (user + sys), the lab hosts' CPU and the machine's busy fraction."""

    def __enter__(self):
        settle(NAMESPACES)
        self.lab0 = lab_cpu(NAMESPACES)
        self.ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.busy = machine_busy()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = ru.ru_utime - self.ru.ru_utime + ru.ru_stime - self.ru.ru_stime
        busy = machine_busy()
        span = busy[1] - self.busy[1]
        self.machine = (busy[0] - self.busy[0]) / span if span else 0.0
        settle(NAMESPACES)  # the sessions' last CPU (closing) belongs to this run
        self.lab = lab_cpu(NAMESPACES) - self.lab0


FAILURES: list[str] = []  # runs where a host was not ok: kept in the figures, counted and shown


def time_cli(inv: Path, names: list[str]) -> Timed:
    with Timed() as t:  # the table, as a user sees it (wide, so that a host's row stays on one line)
        r = subprocess.run([str(EXE), "status", "-i", str(inv), *names], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "400"})
    if r.returncode != 0:
        rows = [" ".join(c.strip() for c in line.split("│")[1:4]) for line in r.stdout.splitlines()
                if line.startswith("│") and " ok " not in line]
        FAILURES.append(f"status over {len(names)} host(s) exited {r.returncode}: {'; '.join(rows) or r.stderr[-300:]}")
    return t


def time_collect(targets) -> float:
    t0 = time.perf_counter()
    statuses = st.collect(targets)
    took = time.perf_counter() - t0
    bad = [f"{s.name}: {s.summary()}" for s in statuses if s.verdict != "ok"]
    if bad:
        FAILURES.append(f"collect() over {len(targets)} host(s): {'; '.join(bad)}")
    return took


def time_provision_check(inv: Path, names: list[str], tmp: Path, i: int) -> Timed:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "KTDEPLOY_RUNS_DIR": str(tmp / "runs"),
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp / f"facts-{len(names)}-{i}")}
    argv = [str(EXE), "provision", "-i", str(inv), "--check", "--plain", "--only", "base,python_env",
            "--limit", ",".join(names)]
    with Timed() as t:
        r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"provision --check exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}")
    return t


def probe_cpu(host, runs: int) -> list[float]:
    """CPU seconds (user + sys, as bash's `time` counts them) of the probe script alone, run on the host
    as `ktdeploy status` runs it (login user deploy, python3 through sudo -n), no SSH."""
    script = st.probe_script(st.probe_config(host.target()))
    host.run("cat > /tmp/ktdeploy-probe.sh", user="deploy", input=script, check=True)
    out = []
    for _ in range(runs):
        r = host.run("TIMEFORMAT='%U %S'; time (bash /tmp/ktdeploy-probe.sh >/dev/null)", user="deploy", check=True)
        out.append(sum(float(x) for x in r.stderr.strip().splitlines()[-1].split()))
    return out


def row(what: str, k: int, times: list[float], extra: str = "") -> str:
    return f"| {what} | {k} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |{extra}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=16, help="lab hosts to boot (the largest size timed)")
    ap.add_argument("--runs", type=int, default=7, help="status runs per size")
    ap.add_argument("--provision-runs", type=int, default=3, help="provision --check runs per size (0: skip)")
    ap.add_argument("--probe-runs", type=int, default=15, help="runs of the probe alone on one host (CPU)")
    args = ap.parse_args()
    sizes = sorted({1, min(4, args.hosts), args.hosts})
    lab = Lab()
    lab.ensure_ready()
    hosts = []
    try:
        t0 = time.perf_counter()
        for _ in range(args.hosts):
            hosts.append(lab.up())
        print(f"{args.hosts} hosts booted in {time.perf_counter() - t0:.1f} s", flush=True)
        NAMESPACES.update(lab_namespaces(lab, hosts))
        names = [h.name for h in hosts]
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            # provision --check first, on the fresh hosts: the dry run before a first provision (with the
            # stand-in state below, /var/lib/ktdeploy exists without the service group, which check mode refuses)
            prov = {k: [] for k in (1, args.hosts)}
            pcpu = {k: [] for k in prov}
            plab = {k: [] for k in prov}
            if args.provision_runs:
                pinv = tmp / "provision.yml"
                data = {"all": {"hosts": {h.name: h.hostvars() for h in hosts}, "vars": role_vars(lab.wheelhouse)}}
                pinv.write_text(yaml.safe_dump(data, sort_keys=False))
                for i in range(args.provision_runs):
                    for k in prov:
                        t = time_provision_check(pinv, names[:k], tmp, i)
                        prov[k].append(t.wall)
                        pcpu[k].append(t.cpu)
                        plab[k].append(t.lab)
                        print(f"provision --check, {k} host(s), run {i + 1}: {t.wall:.1f} s "
                              f"(CPU {t.cpu:.1f} s, lab hosts {t.lab:.1f} s)", flush=True)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(ls.make_serving, hosts))
            inv = ls.inventory(tmp / "inv.yml", hosts)
            targets = [h.target() for h in hosts]
            time.sleep(5)  # let the hosts settle after starting their units
            time_cli(inv, names)  # warm-up: page cache, host-side python, inventory cache
            FAILURES.clear()
            cli = {k: [] for k in sizes}
            cpu = {k: [] for k in sizes}
            hcpu = {k: [] for k in sizes}
            busy = {k: [] for k in sizes}
            coll = {k: [] for k in sizes}
            for _ in range(args.runs):
                for k in sizes:
                    t = time_cli(inv, names[:k])
                    cli[k].append(t.wall)
                    cpu[k].append(t.cpu)
                    hcpu[k].append(t.lab)
                    busy[k].append(t.machine)
                    coll[k].append(time_collect(targets[:k]))
        print(f"\nload average (1 min) after: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs; "
              f"status runs per size: {args.runs}; provision --check runs: {args.provision_runs}\n")
        print("| what | hosts | median s | min s | max s | CPU s of ktdeploy (median) | CPU s of the lab hosts (median) | machine busy (median) |")
        print("|---|---|---|---|---|---|---|---|")
        for k in sizes:
            med = statistics.median
            print(row(CLI, k, cli[k], f" {med(cpu[k]):.2f} | {med(hcpu[k]):.2f} | {med(busy[k]):.0%} |"))
        for k in sizes:
            print(row(COLLECT, k, coll[k], " | | |"))
        for k, times in prov.items():
            if times:
                print(row(PROVISION, k, times, f" {statistics.median(pcpu[k]):.1f} | {statistics.median(plab[k]):.1f} | |"))
        if args.probe_runs:
            took = probe_cpu(hosts[0], args.probe_runs)
            print(f"\nthe probe alone on {hosts[0].name} (no SSH), CPU ms of {args.probe_runs} runs: median "
                  f"{statistics.median(took) * 1000:.0f}, min {min(took) * 1000:.0f}, max {max(took) * 1000:.0f}")
        if FAILURES:
            print(f"\n{len(FAILURES)} timed run(s) had a host that was not ok (their times are in the figures):")
            for line in FAILURES:
                print("  " + line)
        n = args.hosts
        for what, series in ((CLI, cli), (COLLECT, coll), (PROVISION, prov)):
            if series[n] and series[1]:
                print(f"\n{what}: {n} hosts / 1 host = {statistics.median(series[n]) / statistics.median(series[1]):.2f}x")
    finally:
        for h in hosts:
            try:
                lab.down(h.index)
            except Exception as exc:  # take every host down before giving up
                print(f"down {h.name}: {exc}", file=sys.stderr)
        lab.close()


if __name__ == "__main__":
    main()
