"""ktdeploy.attention_route: the one rule for the flash-attn KTransformers 0.2.x gets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ktdeploy import attention_route as ar

REPO = Path(__file__).resolve().parents[2]
H200 = {"python": "3.12", "torch": "2.11.0+cu130", "cuda": "13.0", "cxx11abi": True, "flash_attn": "", "shim": ""}


def test_no_release_wheel_for_the_h200_torch_gives_sdpa():
    r = ar.choose("auto", H200)
    assert r.route == "sdpa" and not r.wheel
    assert "torch 2.11.0+cu130, CUDA 13.0, Python 3.12" in r.reason


@pytest.mark.parametrize("torch,cuda,py,abi,name", [
    ("2.8.0+cu128", "12.8", "3.11", True, "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"),
    ("2.4.1", "12.1", "3.10", False, "flash_attn-2.8.3+cu12torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
])
def test_release_wheel_when_torch_cuda_python_and_abi_match(torch, cuda, py, abi, name):
    r = ar.choose("auto", dict(H200, torch=torch, cuda=cuda, python=py, cxx11abi=abi))
    assert r.route == "wheel"
    assert r.wheel == "https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/" + name.replace("+", "%2B")


@pytest.mark.parametrize("change", [dict(torch="2.9.0"), dict(cuda="11.8"), dict(python="3.8"), dict(torch="2.6.0", cuda="")])
def test_anything_off_the_release_matrix_gets_no_wheel(change):
    env = dict(H200, torch="2.6.0", cuda="12.4", python="3.11") | change
    assert ar.choose("auto", env).route == "sdpa"


def test_installed_flash_attn_and_named_wheel_win():
    assert ar.choose("auto", dict(H200, flash_attn="2.7.4.post1")).route == "present"
    r = ar.choose("auto", H200, wheel="/srv/wheels/flash_attn-2.8.3+cu13torch2.11-cp312-cp312-linux_x86_64.whl")
    assert r.route == "wheel" and r.wheel.startswith("/srv/wheels/")


def test_modes():
    assert ar.choose(False, H200).route == "none"
    assert ar.choose("true", None).route == "undecided"
    assert ar.choose("sdpa", dict(H200, torch="2.6.0", cuda="12.4")).route == "sdpa"
    assert ar.choose("source", H200).route == "source"
    with pytest.raises(ar.RouteError, match="torch_flash_attn_wheel"):
        ar.choose("wheel", H200)
    with pytest.raises(ar.RouteError, match="one of auto, wheel, sdpa, source, off"):
        ar.choose("fast", H200)


def test_probe_prints_the_env_as_choose_reads_it():
    out = subprocess.run([sys.executable, "-c", ar.PROBE], capture_output=True, text=True, check=True, timeout=120).stdout
    env = json.loads(out)
    assert set(env) == {"python", "torch", "cuda", "cxx11abi", "flash_attn", "shim"}
    assert env["python"] == "%d.%d" % sys.version_info[:2]


def test_shim_version_is_the_shipped_package_version():
    text = (REPO / "roles" / "torch" / "files" / "flash_attn_sdpa" / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == ar.SHIM_VERSION
    assert f'name = "{ar.SHIM_DIST}"' in text
