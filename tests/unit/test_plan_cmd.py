import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ktdeploy import exitcodes, facts
from ktdeploy.cli import main
from ktdeploy import preflight
from ktdeploy.errors import KtdeployError, PlanProblem, Unreachable
from ktdeploy.targets import parse_target

from gguf_files import write_variant
from test_remote import _closed_port as closed_port

FIXTURES = Path(__file__).parent.parent / "fixtures" / "facts"


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_commands_are_registered():
    assert {"facts", "preflight"} <= set(main.list_commands(None))


def test_preflight_sizes_the_demo_model():
    r = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["preflight", "--facts", str(FIXTURES / "ci-kvm-2cpu-nogpu"),
                                                      "--model", "gemma3-270m", "--engine", "llama.cpp"])
    assert r.exit_code == 0, r.output
    assert "gemma3-270m on llama.cpp (fits)" in r.output and "0.2 GiB from a PyPI package" in r.output


def test_fitting_plan_shows_the_table_and_exits_0():
    r = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["preflight", "--facts", str(FIXTURES / "autodl-8352v-vgpu32")])
    assert r.exit_code == 0, r.output
    assert "autodl-8352v-vgpu32: UD-IQ1_S on ktransformers (fits)" in r.output
    for text in ("cpu_infer 17", "USE_NUMA unset", "CPU_INSTRUCT FANCY", "MAX_JOBS 14", "DeepSeek-V3-Chat.yaml", "warning numa_off"):
        assert text in r.output


def test_problems_exit_4_and_force_exits_0():
    r = run("preflight", "--facts", str(FIXTURES / "ci-kvm-2cpu-nogpu"))
    assert r.exit_code == exitcodes.PLAN_PROBLEM
    assert "problem no_gpu" in r.output and "problem disk_full" in r.output
    forced = run("preflight", "--facts", str(FIXTURES / "ci-kvm-2cpu-nogpu"), "--force")
    assert forced.exit_code == 0 and "problem no_gpu" in forced.output


def test_json_output():
    r = run("preflight", "--facts", str(FIXTURES / "ci-kvm-2cpu-nogpu"), "--json")
    assert r.exit_code == exitcodes.PLAN_PROBLEM
    doc = json.loads(r.output)
    assert doc["fits"] is False and [p["code"] for p in doc["problems"]] == ["ram_below_minimum", "disk_full", "no_gpu"]
    ok = json.loads(run("preflight", "--facts", str(FIXTURES / "spr-8480-snc2-h100"), "--json", "--port", "8080").output)
    assert ok["serve"]["port"] == 8080 and ok["build"]["use_numa"] is True and ok["fits"] is True


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["--model", "UD-IQ1_M"], exitcodes.PLAN_PROBLEM, "unsupported_variant"),
        (["--model", "UD-IQ1_M", "--engine", "llama.cpp"], 0, "llama.cpp"),
        (["--kt-version", "v0.2.1"], exitcodes.PLAN_PROBLEM, "kt_version_too_old"),
        (["--kt-version", "newest"], exitcodes.BAD_INPUT, "cannot read KTransformers version"),
        (["--model", "IQ9"], exitcodes.BAD_INPUT, "Invalid value for '--model'"),
        (["--deep"], exitcodes.BAD_INPUT, "needs --gguf-dir"),
        (["somehost"], exitcodes.BAD_INPUT, "not both"),
    ],
)
def test_choices_and_bad_input(args, code, text):
    r = CliRunner().invoke(main, ["preflight", "--facts", str(FIXTURES / "spr-8480-snc2-h100"), *args])
    assert r.exit_code == code, r.output
    assert text in r.output


def test_bad_facts_directory_is_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["preflight", "--facts", str(tmp_path)])
    assert r.exit_code == exitcodes.BAD_INPUT and "lacks lscpu.txt" in r.output and "ktdeploy facts" in r.output
    r = CliRunner().invoke(main, ["preflight"])
    assert r.exit_code == exitcodes.BAD_INPUT and "no host named" in r.output
    r = CliRunner().invoke(main, ["preflight", "h", "--gguf-dir", str(tmp_path)])
    assert r.exit_code == exitcodes.BAD_INPUT and "--gguf-dir is for --facts" in r.output


def test_deep_check_on_local_shards(tmp_path):
    good = write_variant(tmp_path / "good")
    r = run("preflight", "--facts", str(FIXTURES / "spr-8480-snc2-h100"), "--deep", "--gguf-dir", str(good), "--json")
    assert r.exit_code == 0 and json.loads(r.output)["problems"] == []
    broken = write_variant(tmp_path / "broken", skip=(0,))
    r = run("preflight", "--facts", str(FIXTURES / "spr-8480-snc2-h100"), "--deep", "--gguf-dir", str(broken), "--json")
    assert r.exit_code == exitcodes.PLAN_PROBLEM
    assert [p["code"] for p in json.loads(r.output)["problems"]] == ["gguf_missing_shard"]
    r = run("preflight", "--facts", str(FIXTURES / "spr-8480-snc2-h100"), "--deep", "--gguf-dir", str(tmp_path / "none"), "--json")
    assert r.exit_code == 0 and "gguf_absent" in {w["code"] for w in json.loads(r.output)["warnings"]}


def test_unreachable_host_exits_3():
    host = f"nobody@127.0.0.1:{closed_port()}"
    r = run("preflight", host)
    assert r.exit_code == exitcodes.UNREACHABLE and "refused" in r.output
    r = run("preflight", host, "--json")
    assert r.exit_code == exitcodes.UNREACHABLE and "refused" in json.loads(r.output)["error"]
    r = CliRunner().invoke(main, ["facts", host, "--save", "/nonexistent/never"])
    assert r.exit_code == exitcodes.UNREACHABLE and "refused" in r.output


def test_preflight_or_raise_unreachable():
    with pytest.raises(Unreachable, match="refused"):
        preflight.preflight_or_raise([parse_target(f"nobody@127.0.0.1:{closed_port()}")])


def fixture_host(monkeypatch, machine_of):
    """Serve each target's raw facts from a fixture directory instead of SSH (the lab test covers SSH)."""

    def gather(target, model_dir, python_env=""):
        return facts.load_dir(FIXTURES / machine_of[target.name]), {}

    monkeypatch.setattr(preflight, "gather_raw", gather)


def test_preflight_or_raise_stops_on_any_host_with_problems(monkeypatch):
    fixture_host(monkeypatch, {"good": "spr-8480-snc2-h100", "bad": "ci-kvm-2cpu-nogpu"})
    targets = [parse_target("good"), parse_target("bad")]
    with pytest.raises(PlanProblem) as exc:
        preflight.preflight_or_raise(targets)
    assert exc.value.exit_code == exitcodes.PLAN_PROBLEM
    assert "bad: the KTransformers engine needs an NVIDIA GPU" in str(exc.value) and "good:" not in str(exc.value)
    assert "--force" in str(exc.value)
    plans = preflight.preflight_or_raise(targets, force=True)
    assert plans["good"].fits and not plans["bad"].fits
    only_good = preflight.preflight_or_raise([parse_target("good")], preflight.PlanOptions(variant="Q4_K_M"))
    assert only_good["good"].variant.name == "Q4_K_M"


def test_preflight_or_raise_reports_hosts_whose_facts_fail(monkeypatch):
    def gather(target, model_dir, python_env=""):
        raise KtdeployError("the facts script failed on x (exit 127): bash: lscpu: command not found")

    monkeypatch.setattr(preflight, "gather_raw", gather)
    with pytest.raises(KtdeployError, match="lscpu: command not found") as exc:
        preflight.preflight_or_raise([parse_target("x")])
    assert exc.value.exit_code == exitcodes.FAILED


def test_several_hosts_in_json_are_a_list(monkeypatch):
    fixture_host(monkeypatch, {"a": "spr-8480-snc2-h100", "b": "dgx-a100-8gpu"})
    r = run("preflight", "a", "b", "--json")
    assert r.exit_code == 0
    assert [d["host"] for d in json.loads(r.output)] == ["a", "b"]
