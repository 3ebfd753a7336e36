"""The DeepSeek path on every CI run: the tiny DeepSeek-V3 (ktdeploy/lab/tiny_dsv3.py, IQ1_S experts)
served by llama-cpp-python (arch deepseek2) through the real roles on a fresh lab host.

The model is written here and copied to the host over SSH as a user would (profile tiny-dsv3-cpu);
Open WebUI is off to keep the converge short. One host and one converge for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servefixtures import API, ROOT, copy_dir, lab_extravars, on_host_json, provision, stock_wheelhouse, write_inventory

from ktdeploy.lab import tiny_dsv3

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MODEL = "tiny-dsv3-iq1s"
HOST_DIR = f"/srv/ktdeploy/models/{MODEL}"  # base_model_dir/<name>, where the profile looks
PROMPT = "Name three colours of the rainbow and one animal that lives in the sea, please."  # >= 10 tokens


@pytest.fixture(scope="module")
def tiny(lab, tmp_path_factory):
    written = tiny_dsv3.write(tmp_path_factory.mktemp("model") / MODEL, "iq1s")
    host = lab.up()
    try:
        stock_wheelhouse(lab, host, webui=False)
        copy_dir(host, written.config_dir.parent, HOST_DIR)
        extravars = lab_extravars(lab, serve_webui_enabled=False)
        tmp = tmp_path_factory.mktemp("converge")
        started = time.monotonic()
        proc, recap = provision(host, extravars, tmp, profile="tiny-dsv3-cpu")
        assert proc.returncode == 0 and recap.get("failed") == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        print(f"\ntiny-dsv3 (llama.cpp) converge on a fresh lab host: {time.monotonic() - started:.0f} s")
        yield host, write_inventory(host, extravars, tmp / "status-inventory.yml"), written
    finally:
        lab.down(host.index)


def test_the_host_has_exactly_the_generated_files(tiny):
    host, _, written = tiny
    sums = host.run(f"cd {HOST_DIR} && sha256sum gguf/* config/*", check=True).stdout.split("\n")
    local = subprocess.run(["sha256sum", *(str(p.relative_to(written.config_dir.parent)) for p in
                                           sorted([*written.gguf_dir.iterdir(), *written.config_dir.iterdir()]))],
                           cwd=written.config_dir.parent, capture_output=True, text=True, check=True).stdout
    assert sorted(filter(None, sums)) == sorted(filter(None, local.split("\n")))


def test_models_lists_the_tiny_model(tiny):
    host, _, _ = tiny
    assert [m["id"] for m in on_host_json(host, API + "/models")["data"]] == [MODEL]


def test_a_chat_completion_returns_tokens(tiny):
    host, _, _ = tiny
    started = time.monotonic()
    reply = on_host_json(host, API + "/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "temperature": 0})
    seconds = time.monotonic() - started
    print(f"\ntiny-dsv3 chat completion, 16 tokens on the lab host: {seconds:.1f} s "
          f"(prompt {reply['usage']['prompt_tokens']} tokens)")
    # Random weights: the text is gibberish. The control tokens' output rows are zero, so greedy
    # decoding never stops early: every requested token comes back.
    assert reply["usage"]["prompt_tokens"] >= 10  # the prompt went through R1's chat template
    assert reply["usage"]["completion_tokens"] == 16 and reply["choices"][0]["finish_reason"] == "length"
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert seconds < 60


def test_the_plan_and_serve_records_name_the_tiny_model(tiny):
    host, _, _ = tiny
    serve = json.loads(host.run("cat /var/lib/ktdeploy/stages/serve.json", check=True).stdout)
    assert serve["settings"]["engine"] == "llama.cpp" and serve["settings"]["services"]["api"]["model"] == MODEL
    assert "webui" not in serve["settings"]["services"]
    unit = host.run("cat /etc/systemd/system/ktdeploy-api.service", check=True).stdout
    assert f"{HOST_DIR}/gguf/{MODEL}.gguf" in unit and "--chat_format" not in unit  # the GGUF's own template


def test_the_k_profile_generates_tokens_with_the_same_llama_cpp(tiny, tmp_path):
    """The other expert profile (Q4_K/Q6_K) through the llama-cpp-python the role installed."""
    host, _, _ = tiny
    k = tiny_dsv3.write(tmp_path / "tiny-dsv3-k", "k")
    copy_dir(host, k.gguf_dir, "/tmp/tiny-dsv3-k")
    script = ("import json, sys\nfrom llama_cpp import Llama\n"
              "llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False)\n"
              "r = llm.create_chat_completion(messages=[{'role': 'user', 'content': sys.argv[2]}], max_tokens=8,"
              " temperature=0)\n"
              "print(json.dumps({'arch': llm.metadata['general.architecture'], 'usage': r['usage']}))\n")
    r = host.run(["/srv/ktdeploy/venvs/llamacpp/bin/python", "-c", script, "/tmp/tiny-dsv3-k/tiny-dsv3-k.gguf",
                  PROMPT], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["arch"] == "deepseek2" and out["usage"]["completion_tokens"] == 8


def test_status_deep_reports_the_api_ok(tiny):
    host, inventory, _ = tiny
    r = subprocess.run([str(Path(sys.executable).parent / "ktdeploy"), "status", "-i", str(inventory), host.name,
                        "--deep", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    (doc,) = json.loads(r.stdout)["hosts"]
    assert doc["verdict"] == "ok", doc["summary"]
    probe = doc["probe"]
    assert probe["api"]["ok"] and probe["api"]["models"] == [MODEL]
    assert probe["deep"]["completion"]["ok"] and probe["deep"]["stream"]["ok"]
    assert probe["deep"]["stream"]["completion_tokens"] >= 1 and probe["deep"]["stream"]["tokens_per_s"] > 0
