"""Collects, as JSON, the raw facts the KTransformers build depends on (parsed by ktdeploy.build)."""

import json
import os
import re
import shutil
import subprocess
import sys

cuda_home = sys.argv[1]


def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def glibcxx(path):
    return " ".join(sorted({m.decode() for m in re.findall(rb"GLIBCXX_[0-9.]+[0-9]", read(path))}))


try:
    import torch

    torch_info = {"version": torch.__version__, "cuda": torch.version.cuda or ""}
except Exception:
    torch_info = None
try:
    import cpufeature  # noqa: F401

    has_cpufeature = True
except Exception:
    has_cpufeature = False

runtime = os.path.join(sys.prefix, "lib", "libstdc++.so.6")
if not os.path.exists(runtime):
    found = re.search(r"libstdc\+\+\.so\.6 \(libc6,x86-64\) => (\S+)", run("/sbin/ldconfig", "-p"))
    runtime = found.group(1) if found else ""
compiler = run("g++", "-print-file-name=libstdc++.so").strip()
# The build script puts the env's bin first on PATH, as an activated env would.
build_path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
cmake = shutil.which("cmake", path=build_path)

print(json.dumps({
    "driver": read("/proc/driver/nvidia/version").decode(errors="replace") or run("nvidia-smi", "-L"),
    "nvcc": run(os.path.join(cuda_home, "bin", "nvcc"), "-V"),
    "cuda_home": cuda_home,
    "torch": torch_info,
    "cpufeature": has_cpufeature,
    "runtime_libstdcxx": runtime,
    "glibcxx_runtime": glibcxx(runtime) if runtime else "",
    "glibcxx_compiler": glibcxx(os.path.realpath(compiler)) if compiler.startswith("/") else "",
    "meminfo": read("/proc/meminfo").decode(),
    "cmake": run(cmake, "--version") if cmake else "",
}))
