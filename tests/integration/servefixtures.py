"""Helpers for the serving tests on lab hosts: the cached llama-cpp-python wheel, provisioning,
and HTTP calls to lab-host addresses (bounded)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles/serve/defaults/main.yml").read_text())
LLAMACPP_VERSION = DEFAULTS["serve_llamacpp_version"]
CMAKE_ARGS = DEFAULTS["serve_llamacpp_cmake_args"]
WEBUI_VERSION = DEFAULTS["serve_webui_version"]
DEMO = yaml.safe_load((ROOT / "ktdeploy/profiles/cpu-demo.yml").read_text())
MODEL = DEMO["serve_model_name"]
API = "http://127.0.0.1:10002/v1"  # the API as seen on the lab host itself
ADMIN_EMAIL = "admin@example.org"
ADMIN_PASSWORD = "lab-Admin-pw-1"


def artifact_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ktdeploy" / "artifacts"
    key = hashlib.sha256(CMAKE_ARGS.encode()).hexdigest()[:12]
    return base / f"llama-cpp-python-{LLAMACPP_VERSION}-{key}"


def llamacpp_wheel() -> Path:
    """The pinned llama-cpp-python built once on the controller with the role's CMake flags (about
    11 minutes on 2 cores), kept under ~/.cache/ktdeploy/artifacts keyed by version and flags."""
    out = artifact_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wheels = sorted(out.glob("llama_cpp_python-*.whl"))
        if wheels:
            return wheels[0]
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out),
             f"llama-cpp-python=={LLAMACPP_VERSION}"],
            env=env, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError("building llama-cpp-python failed:\n" + proc.stderr[-3000:])
        (out / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        return sorted(out.glob("llama_cpp_python-*.whl"))[0]


def stock_wheelhouse(lab, host, *, webui: bool) -> None:
    """Everything the cpu-demo installs, in the lab wheelhouse (the prebuilt wheel included),
    resolved for the lab host's Python (Debian 12: 3.11.2; newer releases of some dependencies
    need 3.11.5)."""
    from ktdeploy.lab.locks import file_lock
    from ktdeploy.lab.wheelhouse import build_index

    py = host.run(["python3", "-c", "import platform; print(platform.python_version())"], check=True).stdout.strip()
    lab.wheelhouse.add([f"llama-cpp-python[server]=={LLAMACPP_VERSION}", DEMO["serve_llamacpp_model_package"]])
    if webui:
        # torch pinned to this machine's CPU build: otherwise Open WebUI's deps pull a CUDA build.
        lab.wheelhouse.add([f"open-webui=={WEBUI_VERSION}", "torch==2.13.0"], python_version=py)
        # redis wants async-timeout below Python 3.11.3 (a marker pip download does not follow).
        lab.wheelhouse.add(["async-timeout>=4.0.3"], python_version=py)
    wheel = llamacpp_wheel()
    with file_lock(lab.wheelhouse.base / "lock"):
        if not (lab.wheelhouse.files / wheel.name).exists():
            shutil.copy2(wheel, lab.wheelhouse.files / wheel.name)
            build_index(lab.wheelhouse.files, lab.wheelhouse.simple)


def lab_extravars(lab, **more) -> dict:
    return {
        "python_env_pip_index_url": lab.wheelhouse.index_url,
        "python_env_pip_trusted_hosts": [lab.wheelhouse.trusted_host],
        "serve_webui_admin_email": ADMIN_EMAIL,
        "serve_webui_admin_password": ADMIN_PASSWORD,
        **more,
    }


def provision(host, hostvars: dict, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`ktdeploy provision -i INV --profile cpu-demo` against one lab host; returns the run and its
    recap row ({"ok", "changed", "failed", "unreachable", "skipped"}). extra: `-e KEY=VALUE` pairs."""
    tmp.mkdir(parents=True, exist_ok=True)
    inventory = tmp / "inventory.yml"
    hosts = {host.name: {**host.hostvars(), **hostvars}}
    inventory.write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": hosts}}}}))
    argv = [str(Path(sys.executable).parent / "ktdeploy"), "provision", "-i", str(inventory), "--profile", "cpu-demo", "--plain"]
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
