"""Put lab hosts into the states `ktdeploy status` must tell apart, with real systemd units.

Until the serving roles and the CPU demo can run in tests, the API and Open WebUI are stood in for by
tests/support/fake_openai.py (stdlib only) run by real units named as docs/architecture.md says; the
serving stage record is written as the serving role writes it.
"""

from __future__ import annotations

import json
import subprocess
from importlib.resources import files
from pathlib import Path

import yaml

from tests.support.probe_env import serve_record

FAKE = Path(__file__).with_name("fake_openai.py")
STATE_DIR = "/var/lib/ktdeploy"
MODEL = "test-model"
HOST_FAKE = "/opt/ktdeploy-test/fake_openai.py"


def sh(host, script: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    r = host.run(script, timeout=timeout, input=input)
    assert r.returncode == 0, f"{host.name}: {script!r} failed: {r.stderr}"
    return r


def write_stage(host, role: str, record: dict) -> None:
    path = f"{STATE_DIR}/stages/{role}.json"
    sh(host, f"mkdir -p {STATE_DIR}/stages && cat > {path}", input=json.dumps(record))


def unit_text(description: str, exec_start: str, ready_url: str | None = None) -> str:
    lines = ["[Unit]", f"Description={description}", "StartLimitIntervalSec=60", "StartLimitBurst=3", "",
             "[Service]", "Type=exec", f"ExecStart={exec_start}"]
    if ready_url:  # ready only once the port answers, like the real API unit's readiness wait
        lines.append(f"ExecStartPost=/usr/bin/python3 {HOST_FAKE} --wait-for {ready_url}")
    lines += ["Restart=on-failure", "RestartSec=1", "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def install_unit(host, name: str, text: str, start: bool = True) -> None:
    sh(host, f"cat > /etc/systemd/system/{name}.service", input=text)
    sh(host, "systemctl daemon-reload" + (f" && systemctl enable --now {name}" if start else ""), timeout=60)


def make_serving(host, api_port: int = 10002, webui_port: int = 8080) -> None:
    """Fake API (ktdeploy-api) and fake Open WebUI health (ktdeploy-webui) under real systemd units."""
    sh(host, f"mkdir -p /opt/ktdeploy-test && cat > {HOST_FAKE}", input=FAKE.read_text())
    for unit, port in (("ktdeploy-api", api_port), ("ktdeploy-webui", webui_port)):
        cmd = f"/usr/bin/python3 {HOST_FAKE} --port {port} --model {MODEL} --token-delay 0.005"
        install_unit(host, unit, unit_text(f"test stand-in for {unit}", cmd, f"http://127.0.0.1:{port}/v1/models"))
    write_stage(host, "base", {"base_data_dir": "/srv/ktdeploy"})
    write_stage(host, "serve", serve_record(api_port, webui_port, MODEL))


def make_failed_unit(host) -> None:
    """The API unit exists but its program exits 1 at once: systemd retries, then gives up (failed)."""
    install_unit(host, "ktdeploy-api", unit_text("test API that cannot start", "/bin/false"), start=False)
    host.run("systemctl start ktdeploy-api", timeout=60)
    # systemd restarts it a few times before giving up: wait (bounded) until it has.
    host.run("for _ in $(seq 120); do systemctl is-failed -q ktdeploy-api && exit 0; sleep 0.5; done; exit 1",
             timeout=90, check=True)
    write_stage(host, "base", {"base_data_dir": "/srv/ktdeploy"})
    write_stage(host, "serve", serve_record(10002, None, MODEL))


def make_mid_download(host) -> None:
    """Base stages done, a download job half way (as the model_download role lays it out), no services.

    The download state module is installed where the role puts it when this ktdeploy ships it.
    """
    write_stage(host, "base", {"base_data_dir": "/srv/ktdeploy"})
    write_stage(host, "python_env", {"python_env_backend": "venv"})
    module = files("ktdeploy.hostside").joinpath("download_state.py")
    if module.is_file():
        sh(host, "mkdir -p /usr/local/lib/ktdeploy && cat > /usr/local/lib/ktdeploy/download_state.py",
           input=module.read_text())
    dest, job = "/srv/ktdeploy/models/DeepSeek-R1-GGUF", f"{STATE_DIR}/downloads/r1-gguf"
    shards = [f"DeepSeek-R1-UD-IQ1_S-0000{i}-of-00002.gguf" for i in (1, 2)]
    docs = {
        "job.json": {"source": "modelscope", "repo": "unsloth/DeepSeek-R1-GGUF", "dest": dest},
        "manifest.json": {"files": [{"path": p, "size": 2_000_000, "sha256": "0" * 64} for p in shards]},
        "state.json": {"phase": "downloading"},
    }
    sh(host, f"mkdir -p {job} {dest}")
    for name, doc in docs.items():
        sh(host, f"cat > {job}/{name}", input=json.dumps(doc))
    sh(host, f"head -c 2000000 /dev/zero > {dest}/{shards[0]} && head -c 1000000 /dev/zero > {dest}/{shards[1]}.incomplete")


def main_pid(host, unit: str) -> int:
    return int(sh(host, f"systemctl show -p MainPID --value {unit}").stdout.strip())


def inventory(path: Path, hosts) -> Path:
    data = {"all": {"children": {"lab": {"hosts": {h.name: h.hostvars() for h in hosts}}}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
