"""What the cpu-demo profile needs on a lab host that reaches no package index: the pinned
llama-cpp-python built once on the controller (GGML_NATIVE=OFF, ~11 min on 2 cores, cached under
~/.cache/ktdeploy/artifacts keyed by version and flags), Open WebUI and the model package, all in
the lab wheelhouse and resolved for the lab host's Python. The serve role's defaults and the
cpu-demo profile are the one source of the versions."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ktdeploy import profiles
from ktdeploy.resources import roles_dir


def serve_defaults() -> dict:
    return yaml.safe_load((roles_dir() / "serve" / "defaults" / "main.yml").read_text())


def artifact_dir() -> Path:
    d = serve_defaults()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ktdeploy" / "artifacts"
    key = hashlib.sha256(d["serve_llamacpp_cmake_args"].encode()).hexdigest()[:12]
    return base / f"llama-cpp-python-{d['serve_llamacpp_version']}-{key}"


def llamacpp_wheel(log=print) -> Path:
    """The pinned llama-cpp-python wheel, built here once with the role's CMake flags."""
    d = serve_defaults()
    out = artifact_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wheels = sorted(out.glob("llama_cpp_python-*.whl"))
        if wheels:
            return wheels[0]
        log(f"building llama-cpp-python {d['serve_llamacpp_version']} (GGML_NATIVE=OFF; ~11 min on 2 cores, once)")
        env = dict(os.environ, CMAKE_ARGS=d["serve_llamacpp_cmake_args"],
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out),
             f"llama-cpp-python=={d['serve_llamacpp_version']}"],
            env=env, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError("building llama-cpp-python failed:\n" + proc.stderr[-3000:])
        (out / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        return sorted(out.glob("llama_cpp_python-*.whl"))[0]


def stock_wheelhouse(lab, host, *, webui: bool = True, log=print) -> None:
    """Everything the cpu-demo installs, in the lab wheelhouse (the prebuilt wheel included)."""
    from ktdeploy.lab.locks import file_lock
    from ktdeploy.lab.wheelhouse import build_index

    d = serve_defaults()
    demo = profiles.load("cpu-demo")
    py = host.run(["python3", "-c", "import platform; print(platform.python_version())"], check=True).stdout.strip()
    log("stocking the lab wheelhouse for the cpu-demo (cached after the first time)")
    lab.wheelhouse.add([f"llama-cpp-python[server]=={d['serve_llamacpp_version']}", demo["serve_llamacpp_model_package"]])
    if webui:
        # torch pinned to a CPU build: otherwise Open WebUI's dependencies pull a CUDA build.
        lab.wheelhouse.add([f"open-webui=={d['serve_webui_version']}", "torch==2.13.0"], python_version=py)
        # redis wants async-timeout below Python 3.11.3 (a marker pip download does not follow).
        lab.wheelhouse.add(["async-timeout>=4.0.3"], python_version=py)
    wheel = llamacpp_wheel(log)
    with file_lock(lab.wheelhouse.base / "lock"):
        if not (lab.wheelhouse.files / wheel.name).exists():
            shutil.copy2(wheel, lab.wheelhouse.files / wheel.name)
            build_index(lab.wheelhouse.files, lab.wheelhouse.simple)


def pip_vars(lab) -> dict:
    """Inventory variables that point a lab host's pip at the lab wheelhouse."""
    return {
        "python_env_pip_index_url": lab.wheelhouse.index_url,
        "python_env_pip_trusted_hosts": [lab.wheelhouse.trusted_host],
    }


def write_inventory(lab, host, path: Path, **more) -> Path:
    hosts = {host.name: {**host.hostvars(), **pip_vars(lab), **more}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": hosts}}}}))
    return path
