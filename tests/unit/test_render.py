"""`ktdeploy render` and every unit it renders, checked by systemd's own verifier offline."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ktdeploy.cli import main
from ktdeploy.errors import BadInput
from ktdeploy.profiles import load as load_profile
from ktdeploy.render import rendered_files

# The tutorial's settings: model and GGUF under /root/autodl-tmp, port 10002, --max_new_tokens 2048,
# --force_think, on the pinned legacy server.
TUTORIAL = {
    "serve_ktransformers_model_path": "/root/autodl-tmp/DeepSeek-R1",
    "serve_ktransformers_gguf_path": "/root/autodl-tmp/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S",
    "serve_api_port": 10002,
    "serve_ktransformers_max_new_tokens": 2048,
    "serve_ktransformers_force_think": True,
    "serve_ktransformers_cpu_infer": 65,
}

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def verify(files: dict[str, str], root: Path) -> subprocess.CompletedProcess:
    """systemd-analyze verify --root with the host's base units and a stub for every Exec path."""
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    units = []
    for path, text in files.items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        if path.endswith(".service"):
            units.append(Path(path).name)
            for exe in re.findall(r"^Exec\w*=(\S+)", text, re.M):
                stub = root / exe.lstrip("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)


CASES = {
    "ktransformers-tutorial": TUTORIAL,
    "ktransformers-0.2.1-numa": {**TUTORIAL, "serve_ktransformers_version": "0.2.1.post1",
                                 "serve_ktransformers_numa_interleave": True},
    "cpu-demo": load_profile("cpu-demo"),
    "llama-server-gpu": {"plan_engine": "llama.cpp", "serve_llamacpp_flavour": "cpp", "serve_llamacpp_n_gpu_layers": 12,
                         "serve_api_host": "0.0.0.0", "serve_api_key": "s3cret-key"},
}


@needs_analyze
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_unit_passes_systemd_analyze_verify(case, tmp_path):
    files = rendered_files("gpu1", CASES[case])
    assert sum(p.endswith(".service") for p in files) == 2
    r = verify(files, tmp_path)
    assert (r.returncode, r.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_unit_keeps_its_exposure_at_most_5(case, tmp_path):
    files = rendered_files("gpu1", CASES[case])
    verify(files, tmp_path)
    for unit in (Path(p).name for p in files if p.endswith(".service")):
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tmp_path}", "--threshold=50", unit],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-800:]


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    files = rendered_files("gpu1", TUTORIAL)
    api = "/etc/systemd/system/ktdeploy-api.service"
    files[api] = files[api].replace("Restart=on-failure", "Restrt=on-failure")
    r = verify(files, tmp_path)
    assert "Unknown key 'Restrt'" in r.stderr


def test_tutorial_unit_carries_the_tutorial_flags():
    unit = rendered_files("gpu1", TUTORIAL)["/etc/systemd/system/ktdeploy-api.service"]
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)[1]
    assert "--model_path /root/autodl-tmp/DeepSeek-R1 " in exec_start
    assert "--gguf_path /root/autodl-tmp/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S" in exec_start
    assert "--port 10002" in exec_start and "--max_new_tokens 2048" in exec_start
    assert "--cpu_infer 65" in exec_start and exec_start.endswith("--force_think")
    assert "--host 127.0.0.1" in exec_start
    assert "Type=exec" in unit and "Restart=on-failure" in unit
    assert re.search(r"^ExecStartPost=\S+ktdeploy-svc wait-ready http://127.0.0.1:10002/v1/models", unit, re.M)
    assert int(re.search(r"^TimeoutStartSec=(\d+)", unit, re.M)[1]) >= 3600
    assert "PrivateDevices=no" in unit and not re.search(r"^(MemoryDenyWriteExecute|DeviceAllow)=", unit, re.M)


def test_old_server_gets_the_old_flag_syntax():
    unit = rendered_files("gpu1", {**TUTORIAL, "serve_ktransformers_version": "0.2.1.post1"})[
        "/etc/systemd/system/ktdeploy-api.service"]
    assert "--force_think true" in unit


def test_secrets_stay_out_of_units_and_are_masked_in_previews():
    files = rendered_files("gpu1", {**CASES["llama-server-gpu"], "serve_webui_admin_password": "pw-123"})
    text = "\n".join(files.values())
    assert "s3cret-key" not in text and "pw-123" not in text
    unit = files["/etc/systemd/system/ktdeploy-api.service"]
    assert "EnvironmentFile=/etc/ktdeploy/ktdeploy-api.env" in unit
    assert "LLAMA_API_KEY='********'" in files["/etc/ktdeploy/ktdeploy-api.env"]


def test_cpu_demo_profile_renders_llama_cpp_python_with_gemma():
    files = rendered_files("demo", load_profile("cpu-demo"))
    unit = files["/etc/systemd/system/ktdeploy-api.service"]
    assert "-m llama_cpp.server" in unit and "--chat_format gemma" in unit and "--model_alias gemma3-270m" in unit
    webui_env = files["/etc/ktdeploy/ktdeploy-webui.env"]
    assert "OPENAI_API_BASE_URLS='http://127.0.0.1:10002/v1'" in webui_env
    assert "ENABLE_OLLAMA_API='False'" in webui_env and "ENABLE_SIGNUP='False'" in webui_env


def test_supervisor_programs_run_the_same_command_and_env_files():
    files = rendered_files("gpu1", {**TUTORIAL, "serve_service_manager": "supervisord"})
    prog = files["/etc/supervisor/conf.d/ktdeploy-api.conf"]
    unit = rendered_files("gpu1", TUTORIAL)["/etc/systemd/system/ktdeploy-api.service"]
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)[1]
    command = re.search(r"^command=(.*)$", prog, re.M)[1]
    assert command.startswith("/usr/local/libexec/ktdeploy/ktdeploy-svc exec --env-file /etc/ktdeploy/ktdeploy-api.env -- ")
    assert command.endswith(" -- " + exec_start)
    assert "[program:ktdeploy-api]" in prog and "autorestart=unexpected" in prog
    assert not any(p.endswith(".service") for p in files)


def test_unknown_profile_and_engine_are_clear_errors():
    with pytest.raises(BadInput, match="unknown profile"):
        load_profile("gpu-turbo")
    with pytest.raises(BadInput, match="serve_engine"):
        rendered_files("gpu1", {"serve_engine": "vllm"})


def test_render_command_writes_files_and_masks(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["render", "demo", "--offline", "--profile", "cpu-demo", "-e", "serve_api_key=k-1",
                                  "-e", "serve_api_host=0.0.0.0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    env_file = out / "etc/ktdeploy/ktdeploy-api.env"
    assert env_file.is_file() and "k-1" not in env_file.read_text()
    bad = CliRunner().invoke(main, ["render", "demo", "--offline", "-e", "oops"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


# -- what provision would write: the plan from the host's facts, the same checks, a said fallback ----------


def exec_start(files: dict) -> str:
    return re.search(r"^ExecStart=(.*)$", files["/etc/systemd/system/ktdeploy-api.service"], re.M)[1]


def test_the_unit_serves_the_plans_variant_under_the_plans_model_dir():
    from ktdeploy import plan
    from tests.unit.test_plan import facts_of

    p = plan.make_plan(facts_of("autodl-8352v-vgpu32"), "UD-IQ2_XXS", model_dir="/data/m").to_dict()
    assert p["serve"]["supervisor"] == "supervisord"  # a container: no systemd
    assert "/etc/supervisor/conf.d/ktdeploy-api.conf" in rendered_files("gpu1", {}, plan=p)
    line = exec_start(rendered_files("gpu1", {"serve_service_manager": "systemd"}, plan=p))
    assert "--model_path /data/m/DeepSeek-R1 --gguf_path /data/m/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ2_XXS " in line
    assert f"--cpu_infer {p['serve']['cpu_infer']} " in line and "--port 10002 " in line
    assert line.split("--optimize_config_path ")[1].startswith("/srv/ktdeploy/venv-env/") and "DeepSeek-V3-Chat.yaml" in line


def test_llama_cpp_serves_the_plans_gguf_file():
    from ktdeploy import plan
    from tests.unit.test_plan import facts_of

    p = plan.make_plan(facts_of("ci-kvm-2cpu-nogpu"), "tiny-dsv3-k", engine="llama.cpp", model_dir="/m").to_dict()
    line = exec_start(rendered_files("ci", {"serve_service_manager": "systemd"}, plan=p))
    assert "--model /m/tiny-dsv3-k/gguf/tiny-dsv3-k.gguf " in line


def test_the_serve_roles_checks_refuse_before_rendering():
    with pytest.raises(BadInput, match="two different ports"):
        rendered_files("gpu1", {"serve_webui_port": 10002})
    with pytest.raises(BadInput, match="spelled 'llama.cpp'"):
        rendered_files("gpu1", {"serve_engine": "llamacpp"})
    with pytest.raises(BadInput, match="serve_llamacpp_model is empty"):
        rendered_files("gpu1", {"plan_engine": "llama.cpp", "plan_model_variant": "gemma3-270m"})


def render_cli(*args):
    return CliRunner().invoke(main, ["render", *args])


def test_render_plans_from_the_hosts_facts_and_refuses_its_problems_as_provision_does():
    from ktdeploy.cli.plan_cmd import PlanOptions, plan_host
    from ktdeploy.targets import local_target

    refused = render_cli("local", "-e", "plan_model_variant=UD-IQ2_XXS")
    assert refused.exit_code == 4, refused.output  # this machine has no GPU for KTransformers
    assert "NVIDIA GPU" in refused.output and "--force" in refused.output
    r = render_cli("local", "--force", "-e", "plan_model_variant=UD-IQ2_XXS")
    assert r.exit_code == 0, r.output
    want = plan_host(local_target(), PlanOptions(variant="UD-IQ2_XXS"))
    assert f"--cpu_infer {want.cpu_infer} " in r.output and "DeepSeek-R1-UD-IQ2_XXS " in r.output
    assert "problem (forced past)" in r.stderr and "previewing without" not in r.stderr


def test_render_says_when_the_host_does_not_answer_and_previews_without_its_facts():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = render_cli(f"root@127.0.0.1:{port}", "-e", "plan_model_variant=UD-IQ2_XXS")
    assert r.exit_code == 0, r.output
    assert "no plan from 127.0.0.1" in r.stderr and "previewing without them" in r.stderr
    assert "--cpu_infer FROM-THE-HOSTS-FACTS " in r.stdout and "DeepSeek-R1-UD-IQ2_XXS " in r.stdout
    offline = render_cli("gpu9", "--offline")
    assert offline.exit_code == 0 and "--cpu_infer FROM-THE-HOSTS-FACTS " in offline.stdout
    assert "no plan from gpu9's facts (--offline)" in offline.stderr
