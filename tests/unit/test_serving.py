import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ktdeploy import serving
from ktdeploy.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "roles" / "serve" / "files" / "ktdeploy-svc"

KT = {
    "model_path": "/m/DeepSeek-R1",
    "gguf_path": "/m/gguf",
    "model_name": "DeepSeek-R1",
    "host": "127.0.0.1",
    "port": 10002,
    "cpu_infer": 33,
    "optimize_config_path": "/rules/DeepSeek-V3-Chat.yaml",
    "max_new_tokens": 2048,
    "force_think": True,
}


def test_force_think_syntax_follows_the_pinned_version():
    old = serving.ktransformers_argv("0.2.1.post1", KT)
    new = serving.ktransformers_argv("0.2.3post2", KT)
    assert old[-2:] == ["--force_think", "true"]
    assert new[-1] == "--force_think" and "true" not in new
    assert serving.ktransformers_argv("v0.2.2", dict(KT, force_think=False))[-1] == "--no-force_think"
    # type=bool on 0.2.1: any value is True, so False means leaving the flag out.
    assert "--force_think" not in serving.ktransformers_argv("0.2.1", dict(KT, force_think=False))


def test_ktransformers_flags_carry_the_plan():
    argv = serving.ktransformers_argv("0.2.3post2", KT)
    pairs = dict(zip(argv[::2], argv[1::2]))
    assert pairs["--cpu_infer"] == "33"
    assert pairs["--optimize_config_path"] == "/rules/DeepSeek-V3-Chat.yaml"
    assert pairs["--model_name"] == "DeepSeek-R1"
    assert "--optimize_config_path" not in serving.ktransformers_argv("0.2.3", dict(KT, optimize_config_path=""))


def test_api_key_needs_a_version_that_has_it():
    with pytest.raises(BadInput, match="no --api_key"):
        serving.ktransformers_argv("0.2.1.post1", dict(KT, api_key_env="KTDEPLOY_API_KEY"))
    argv = serving.ktransformers_argv("0.2.3post2", dict(KT, api_key_env="KTDEPLOY_API_KEY"))
    assert argv[-2:] == ["--api_key", "${KTDEPLOY_API_KEY}"]


@pytest.mark.parametrize("version", ["0.7.2", "0.1.4", "latest"])
def test_non_legacy_versions_are_refused(version):
    with pytest.raises(BadInput):
        serving.ktransformers_argv(version, KT)


def test_llamacpp_flavours():
    s = {"model": "/m/g.gguf", "alias": "gemma3-270m", "host": "127.0.0.1", "port": 10002,
         "n_gpu_layers": 20, "ctx_size": 2048, "threads": 0, "chat_format": "gemma"}
    cpp = serving.llamacpp_argv("cpp", s)
    assert cpp[cpp.index("--n-gpu-layers") + 1] == "20" and "--threads" not in cpp
    py = serving.llamacpp_argv("python", dict(s, threads=2))
    assert py[:2] == ["-m", "llama_cpp.server"]
    assert py[py.index("--chat_format") + 1] == "gemma" and py[py.index("--n_threads") + 1] == "2"
    with pytest.raises(BadInput, match="flavour"):
        serving.llamacpp_argv("rust", s)


def test_systemd_exec_quoting():
    line = serving.systemd_exec(["/x/py", "-c", 'print("50%")', "${KTDEPLOY_API_KEY}", "a b", "$HOME"])
    assert line == '/x/py -c "print(\\"50%%\\")" ${KTDEPLOY_API_KEY} "a b" $$HOME'


def test_supervisor_command_goes_through_the_env_loader():
    cmd = serving.supervisor_command(["/v/bin/python", "-m", "x", "100%"], "/h/ktdeploy-svc", ["/e/a.env"])
    assert shlex.split(cmd.replace("%%", "%")) == [
        "/h/ktdeploy-svc", "exec", "--env-file", "/e/a.env", "--", "/v/bin/python", "-m", "x", "100%"]


@pytest.mark.parametrize("value", ["plain", '{"0":{"enable":true}} # not a comment', "it's", 'a"b\\c$d', ""])
def test_env_values_read_back_by_the_helper(tmp_path, value):
    env_file = tmp_path / "x.env"
    env_file.write_text(f"# comment\nK={serving.env_file_value(value)}\n")
    out = subprocess.run(
        [sys.executable, str(HELPER), "exec", "--env-file", str(env_file), "--env-file", f"-{tmp_path}/absent",
         "--", sys.executable, "-c", "import os,sys; sys.stdout.write(os.environ['K'] + '|' + sys.argv[1])", "${K}"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out == f"{value}|{value}"
    assert serving.env_file_parse(env_file.read_text()) == {"K": value}


def test_env_value_rejects_newlines():
    with pytest.raises(BadInput):
        serving.env_file_value("a\nb")


def test_helper_gen_secret_is_0600_and_kept(tmp_path):
    path = tmp_path / "s.env"
    first = subprocess.run([sys.executable, str(HELPER), "gen-secret", str(path), "KEY"], capture_output=True, text=True)
    assert first.stdout.strip() == "created" and oct(path.stat().st_mode & 0o777) == "0o600"
    content = path.read_text()
    assert content.startswith("KEY=") and len(content.strip()) == 4 + 64
    again = subprocess.run([sys.executable, str(HELPER), "gen-secret", str(path), "KEY"], capture_output=True, text=True)
    assert again.stdout.strip() == "kept" and path.read_text() == content


def test_helper_installed_answers_without_pip(tmp_path):
    """`ktdeploy-svc installed` lets the role skip a long, polled pip install that would do nothing."""
    info = tmp_path / "fake_server-0.3.36.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-server\nVersion: 0.3.36\n"
                                   "Requires-Dist: click; extra == 'cli'\n"
                                   'Requires-Dist: no-such-dep-ktdeploy>=1.0; extra == "server"\n')

    def installed(*args):
        return subprocess.run([sys.executable, str(HELPER), "installed", *args], capture_output=True, text=True,
                              env={"PYTHONPATH": str(tmp_path)}).returncode

    assert installed("fake-server", "0.3.36") == 0
    assert installed("fake_server", "0.3.36", "cli") == 0
    assert installed("fake-server", "0.3.35") == 1
    assert installed("fake-server", "0.3.36", "server") == 1  # the extra's requirement is missing
    assert installed("absent-package-ktdeploy", "1.0") == 1


def test_helper_wait_ready_gives_up_when_nothing_listens():
    r = subprocess.run([sys.executable, str(HELPER), "wait-ready", "http://127.0.0.1:9/v1/models", "--timeout", "1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not ready after" in r.stderr


def test_role_service_names_come_from_the_layout():
    from ktdeploy import rolevars

    v = rolevars.host_vars("gpu1", {})
    assert (v["serve_api_service"], v["serve_webui_service"]) == (serving.API_SERVICE, serving.WEBUI_SERVICE)
    assert (serving.API_SERVICE, serving.WEBUI_SERVICE) == ("ktdeploy-api", "ktdeploy-webui")
