"""The parts of the host-side job runner that decide without running anything."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from ktdeploy.hostside import download_job as dj


def job(**kw):
    base = {"name": "DeepSeek-R1-UD-IQ1_S", "source": "modelscope", "repo": "unsloth/DeepSeek-R1-GGUF",
            "revision": "master", "includes": ["DeepSeek-R1-UD-IQ1_S/*"], "excludes": [], "dest": "/m/gguf"}
    return {**base, **kw}


def test_modelscope_env_unsets_proxies_and_raises_the_total_timeout(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://172.20.0.113:12798")
    monkeypatch.setenv("HTTP_PROXY", "http://172.20.0.113:12798")
    env = dj.client_env(job(unset_proxy=True, endpoint="http://10.203.0.1:4000", cache_dir="/m/.cache/ms"))
    assert "https_proxy" not in env and "HTTP_PROXY" not in env
    assert env["MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT"] == "86400"
    assert env["MODELSCOPE_ENDPOINT"] == "http://10.203.0.1:4000" and env["MODELSCOPE_CACHE"] == "/m/.cache/ms"
    kept = dj.client_env(job(unset_proxy=False, total_timeout=7200))
    assert kept["https_proxy"] == "http://172.20.0.113:12798" and kept["MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT"] == "7200"


def test_client_command_puts_the_repo_before_include_and_names_only_missing_files():
    todo = [{"path": "DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00002-of-00003.gguf"}, {"path": "odd[1].json"}]
    cmd = dj.client_command(job(client="/env/bin/modelscope"), todo)
    assert cmd[:3] == ["/env/bin/modelscope", "download", "unsloth/DeepSeek-R1-GGUF"]
    assert cmd.index("--include") > cmd.index("unsloth/DeepSeek-R1-GGUF")
    assert cmd[cmd.index("--include") + 1:] == [todo[0]["path"], "odd[[]1[]].json"]
    assert cmd[cmd.index("--local-dir") + 1] == "/m/gguf"


def test_file_urls_per_source():
    assert dj.file_url(job(source="huggingface", revision="main", endpoint="https://hf-mirror.com/"), "a b/c.gguf") == \
        "https://hf-mirror.com/unsloth/DeepSeek-R1-GGUF/resolve/main/a%20b/c.gguf"
    assert dj.file_url(job(source="mirror", endpoint="http://m:8000/models"), "d/x.gguf") == \
        "http://m:8000/models/unsloth/DeepSeek-R1-GGUF/d/x.gguf"


def test_auth_header_from_the_job_env_only_for_its_source(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert dj._auth_headers(job(source="huggingface", env={"HF_TOKEN": "t"})) == {"Authorization": "Bearer t"}
    assert dj._auth_headers(job(source="mirror", env={"HF_TOKEN": "t"})) == {}


def test_session_names_are_safe_for_tmux():
    assert dj.session_name(job(name="DeepSeek-R1 UD:IQ1.S")) == "ktd-dl-DeepSeek-R1_UD_IQ1_S"


def test_job_digest_changes_with_what_is_fetched_only():
    assert dj.job_digest(job()) == dj.job_digest(job(max_workers=8, env={"X": "1"}))
    assert dj.job_digest(job()) == dj.job_digest(job(endpoint="http://mirror.invalid"))  # where from: not what
    assert dj.job_digest(job()) != dj.job_digest(job(includes=["*UD-IQ1_M*"]))


def test_bad_job_files_are_bad_input(tmp_path):
    with pytest.raises(dj.JobError) as err:
        dj.load_job(tmp_path)
    assert err.value.code == dj.EXIT_BAD_INPUT
    (tmp_path / "job.json").write_text('{"repo": "o/n", "dest": "/d", "source": "ftp"}')
    with pytest.raises(dj.JobError) as err:
        dj.make_manifest(dj.load_job(tmp_path))
    assert err.value.code == dj.EXIT_BAD_INPUT and "unknown source" in str(err.value)


def test_main_prints_json_and_maps_exit_codes(tmp_path, capsys):
    assert dj.main(["ensure", str(tmp_path)]) == dj.EXIT_BAD_INPUT
    assert '"action": "failed"' in capsys.readouterr().out
    assert dj.main(["bogus"]) == dj.EXIT_BAD_INPUT


def test_local_mirror_needs_sha256sums(tmp_path):
    (tmp_path / "unsloth" / "DeepSeek-R1-GGUF").mkdir(parents=True)
    with pytest.raises(dj.JobError) as err:
        dj.list_mirror(job(source="mirror", endpoint=str(tmp_path)))
    assert "SHA256SUMS" in str(err.value) and err.value.code == dj.EXIT_BAD_INPUT


@pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux")
def test_sessions_start_while_other_sessions_end(tmp_path, monkeypatch):
    """Short sessions keep ending (and the tmux server with them) while ours start: tmux's
    "server exited unexpectedly" is retried, so every one of ours starts."""
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))  # a private tmux server, not the user's
    monkeypatch.delenv("TMUX", raising=False)
    stop = threading.Event()

    def churn() -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            subprocess.run(["tmux", "new-session", "-d", "-s", f"churn{i}", "true"], capture_output=True)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for i in range(40):
            dj._start_detached(f"t{i}", f"echo {i} >{tmp_path}/{i}", tmp_path)
    finally:
        stop.set()
        thread.join(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(list(tmp_path.glob("[0-9]*"))) < 40:
        time.sleep(0.1)
    subprocess.run(["tmux", "kill-server"], capture_output=True)
    assert len(list(tmp_path.glob("[0-9]*"))) == 40


def test_a_session_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tmux"
    fake.write_text("#!/bin/sh\necho 'no server socket' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(dj, "SESSION_ATTEMPTS", 2)
    with pytest.raises(dj.JobError) as err:
        dj._start_detached("x", "true", tmp_path)
    assert "could not start session x (2 attempts): no server socket" in str(err.value)
