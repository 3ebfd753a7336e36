"""Helpers to run the status probe locally, exactly as shipped, against fake state dirs."""

import json
import signal
import subprocess
from pathlib import Path

from ktdeploy import status as st
from ktdeploy.chat import free_local_port

free_port = free_local_port


def ctrl_c(proc: subprocess.Popen, timeout: float = 15) -> int:
    """Interrupt proc as Ctrl-C does and wait for it (killed if it does not stop in time)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def write_stage(state_dir: Path, role: str, record: dict) -> None:
    (state_dir / "stages").mkdir(parents=True, exist_ok=True)
    (state_dir / "stages" / f"{role}.json").write_text(json.dumps(record))


def serve_record(api_port: int, webui_port: int | None = None, model: str = "test-model") -> dict:
    """stages/serve.json as the serve role writes it (docs/architecture.md, "Serving")."""
    services = {"api": {"unit": "ktdeploy-api", "host": "127.0.0.1", "port": api_port, "model": model}}
    if webui_port:
        services["webui"] = {"unit": "ktdeploy-webui", "host": "127.0.0.1", "port": webui_port}
    return {"settings": {"engine": "test-stand-in", "service_manager": "systemd", "api_key_required": False,
                         "services": services}}


def run_probe_locally(cfg: dict, env: dict | None = None, timeout: float = 60) -> dict:
    """Run the same shell script `ktdeploy status` sends over SSH, here through bash."""
    proc = subprocess.run(
        ["bash", "-c", st.probe_script(cfg)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
