"""Helpers for the serving tests on lab hosts: the cached llama-cpp-python wheel, provisioning,
and HTTP calls to lab-host addresses (bounded)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from ktdeploy.lab import demo

ROOT = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((ROOT / "ktdeploy/profiles/cpu-demo.yml").read_text())
MODEL = DEMO["serve_model_name"]
API = "http://127.0.0.1:10002/v1"  # the API as seen on the lab host itself
ADMIN_EMAIL = "admin@example.org"
ADMIN_PASSWORD = "lab-Admin-pw-1"


def llamacpp_wheel() -> Path:
    return demo.llamacpp_wheel()


def stock_wheelhouse(lab, host, *, webui: bool) -> None:
    demo.stock_wheelhouse(lab, host, webui=webui)


def lab_extravars(lab, **more) -> dict:
    return {
        **demo.pip_vars(lab),
        "serve_webui_admin_email": ADMIN_EMAIL,
        "serve_webui_admin_password": ADMIN_PASSWORD,
        **more,
    }


def write_inventory(host, hostvars: dict, path: Path) -> Path:
    """An inventory with only host, its lab connection variables and hostvars."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hosts = {host.name: {**host.hostvars(), **hostvars}}
    path.write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": hosts}}}}))
    return path


def provision(host, hostvars: dict, tmp: Path, *extra: str, profile: str = "cpu-demo"
              ) -> tuple[subprocess.CompletedProcess, dict]:
    """`ktdeploy provision -i INV --profile PROFILE` against one lab host; returns the run and its
    recap row ({"ok", "changed", "failed", "unreachable", "skipped"}). extra: `-e KEY=VALUE` pairs."""
    inventory = write_inventory(host, hostvars, tmp / "inventory.yml")
    argv = [str(Path(sys.executable).parent / "ktdeploy"), "provision", "-i", str(inventory), "--profile", profile, "--plain"]
    for pair in extra:
        argv += ["-e", pair]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=3000)
    m = re.search(rf"^\s*{re.escape(host.name)}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", proc.stdout, re.M)
    recap = dict(zip(("ok", "changed", "failed", "unreachable", "skipped"), map(int, m.groups()))) if m else {}
    return proc, recap


def http_json(url: str, body: dict | None = None, token: str | None = None, timeout: float = 120):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
        return json.loads(r.read())


def on_host_json(host, url: str, body: dict | None = None) -> dict:
    """An HTTP call made on the lab host itself (for services bound to its loopback)."""
    script = (
        "import json,sys,urllib.request as u\n"
        "url,body=sys.argv[1],sys.argv[2]\n"
        "req=u.Request(url,data=body.encode() or None,headers={'Content-Type':'application/json'})\n"
        "print(u.urlopen(req,timeout=120).read().decode())\n"
    )
    r = host.run(["python3", "-c", script, url, json.dumps(body) if body is not None else ""], timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the service may still be coming up
            last = exc
        time.sleep(step)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s (last: {last!r})")


def copy_dir(host, local: Path, remote: str) -> None:
    """local's contents into remote on the host, through tar over the lab's SSH (as root)."""
    tar = subprocess.Popen(["tar", "-C", str(local), "-cf", "-", "."], stdout=subprocess.PIPE)
    ssh = subprocess.run(host.ssh_argv("root") + [f"mkdir -p {remote} && tar -C {remote} --no-same-owner -xf -"],
                         stdin=tar.stdout, capture_output=True, timeout=120)
    tar.stdout.close()
    assert tar.wait(timeout=60) == 0 and ssh.returncode == 0, ssh.stderr.decode()
