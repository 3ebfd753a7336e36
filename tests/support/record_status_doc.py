"""Record a real `ktdeploy status --json --deep` document from four lab hosts in mixed states.

Writes tests/unit/recorded/status_fleet.json (what tests/unit/test_metrics.py renders): a serving
host whose API was killed once (restarted by systemd), a host half way through a download, a host
whose API unit failed, and a host that is powered off. Needs root and the lab (scripts/setup.sh):

    sudo .venv/bin/python -m tests.support.record_status_doc
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ktdeploy.lab import Lab
from tests.support import lab_serving as ls

OUT = Path(__file__).resolve().parents[1] / "unit" / "recorded" / "status_fleet.json"


def main() -> None:
    lab = Lab()
    lab.ensure_ready()
    hosts = []
    try:
        for _ in range(4):
            hosts.append(lab.up())
        serving, downloading, failed, down = hosts
        ls.make_serving(serving)
        pid = ls.main_pid(serving, "ktdeploy-api")
        serving.run(f"kill -9 {pid}", timeout=30)
        ls.make_mid_download(downloading)
        ls.make_failed_unit(failed)
        down.run("systemctl poweroff", timeout=30)
        time.sleep(3)
        with tempfile.TemporaryDirectory() as tmp:
            inv = ls.inventory(Path(tmp) / "inv.yml", hosts)
            exe = Path(sys.executable).parent / "ktdeploy"
            for _ in range(60):  # until systemd has restarted the killed API and it answers again
                r = subprocess.run([str(exe), "status", "-i", str(inv), "--json", "--deep", "--connect-timeout", "3"],
                                   capture_output=True, text=True, timeout=300)
                doc = json.loads(r.stdout)
                if next(h for h in doc["hosts"] if h["name"] == serving.name)["verdict"] == "ok":
                    break
                time.sleep(1)
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {OUT} (verdicts: {[h['verdict'] for h in doc['hosts']]})")
    finally:
        for h in hosts:
            lab.down(h.index)
        lab.close()


if __name__ == "__main__":
    main()
