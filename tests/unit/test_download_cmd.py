"""`ktdeploy download`: role variables from the catalog, the remote status command, exit codes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ktdeploy import downloads, exitcodes
from ktdeploy.cli import download_cmd
from ktdeploy.cli import main
from ktdeploy.hostside import download_state as ds
from ktdeploy.targets import Target
from ktdeploy.variables import role_defaults


def test_items_come_from_the_catalog():
    gguf, cfg = downloads.download_items("UD-IQ1_S", "modelscope", "/srv/m")
    assert gguf["repo"] == "unsloth/DeepSeek-R1-GGUF" and gguf["includes"] == ["DeepSeek-R1-UD-IQ1_S/*"]
    assert gguf["dest"] == "/srv/m/DeepSeek-R1-GGUF" and gguf["name"] == "DeepSeek-R1-UD-IQ1_S"
    assert cfg["repo"] == "deepseek-ai/DeepSeek-R1" and cfg["excludes"] == ["*.safetensors"]
    assert cfg["includes"] == [] and cfg["name"] == downloads.CONFIG_ITEM and cfg["dest"] == "/srv/m/DeepSeek-R1"
    # the catalog's patterns select exactly the variant's shards, as the client would
    paths = [f"DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    others = ["DeepSeek-R1-UD-IQ1_M/DeepSeek-R1-UD-IQ1_M-00001-of-00004.gguf", "README.md", "config.json"]
    assert [p for p in paths + others if ds.selected(p, gguf["includes"], gguf["excludes"])] == paths
    assert downloads.item_names(None) == ["DeepSeek-R1-UD-IQ1_S", "DeepSeek-R1-config"]


def test_the_role_filter_gives_the_same_items():
    import importlib.util

    from ktdeploy.resources import playbooks_dir

    spec = importlib.util.spec_from_file_location("f", playbooks_dir() / "filter_plugins" / "ktdeploy_download.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    f = mod.FilterModule().filters()["ktdeploy_download_items"]
    assert f("", "huggingface", "/m") == downloads.download_items(None, "huggingface", "/m")


def test_unknown_variant_is_bad_input():
    from ktdeploy.errors import BadInput

    with pytest.raises(BadInput):
        downloads.download_extravars("UD-IQ0_Z", "modelscope", None, False)


def test_packaged_model_has_nothing_to_download():
    from ktdeploy.errors import BadInput

    with pytest.raises(BadInput, match="nothing to download") as err:
        downloads.download_extravars("gemma3-270m", "modelscope", None, False)
    assert "UD-IQ1_S" in err.value.hint


def test_generated_model_has_nothing_to_download():
    from ktdeploy.errors import BadInput

    for name in ("tiny-dsv3-iq1s", "tiny-dsv3-k"):
        with pytest.raises(BadInput, match="written on the spot.*nothing to download") as err:
            downloads.download_extravars(name, "modelscope", None, False)
        assert "UD-IQ1_S" in err.value.hint


def test_extravars_carry_variant_source_endpoint_and_verify():
    ev = downloads.download_extravars("UD-IQ2_XXS", "huggingface", "https://hf-mirror.com", verify=True)
    assert ev["model_download_source"] == "huggingface" and ev["model_download_rehash"] is True
    assert ev["model_download_hf_endpoint"] == "https://hf-mirror.com" and ev["plan_model_variant"] == "UD-IQ2_XXS"
    assert "model_download_modelscope_endpoint" not in ev and ev["plan_force"] is True
    assert downloads.download_extravars(None, "mirror", "/data/mirror", False)["model_download_mirror_url"] == "/data/mirror"
    assert "plan_model_variant" not in downloads.download_extravars(None, "modelscope", None, False)


def test_role_defaults_cover_every_endpoint_var():
    defaults = role_defaults("model_download")
    assert set(downloads.ENDPOINT_VARS.values()) <= set(defaults)


def test_status_command_uses_role_defaults_and_host_overrides():
    t = Target(name="h", host="h")
    assert downloads.status_command(t, ["a"]) == (
        "python3 /usr/local/lib/ktdeploy/download_state.py --json /var/lib/ktdeploy/downloads a")
    t2 = Target(name="h", host="h", hostvars={"base_state_dir": "/data/state"})
    assert "/data/state/downloads" in downloads.status_command(t2, [])


def _doc(phase, running=False):
    return {"name": "x", "phase": phase, "running": running, "total_bytes": 10, "done_bytes": 5,
            "percent": 50.0, "error": None}


def test_finished_and_exit_codes():
    assert not downloads.finished({"h": [_doc("downloading", True)]})
    assert downloads.finished({"h": [_doc("complete"), _doc("failed")], "g": "unreachable"})
    assert downloads.snapshot_exit_code({"h": [_doc("complete")]}, waited=True) == exitcodes.OK
    assert downloads.snapshot_exit_code({"h": [_doc("downloading", True)]}, waited=False) == exitcodes.OK
    assert downloads.snapshot_exit_code({"h": [_doc("interrupted")]}, waited=True) == exitcodes.FAILED
    assert downloads.snapshot_exit_code({"h": "SSH connection refused"}, waited=True) == exitcodes.UNREACHABLE


def test_describe_names_figures_and_error():
    line = downloads.describe("h", {**_doc("failed"), "total_bytes": 3_000_000_000, "done_bytes": 1_500_000_000,
                             "error": "error: [E1003] 1 of 3 file(s) failed"})
    assert line == "h x: failed, 1.5 GB of 3.0 GB (50.0%), error: [E1003] 1 of 3 file(s) failed"


def test_mirror_without_endpoint_is_refused_before_anything_runs():
    r = CliRunner().invoke(main, ["download", "somehost", "--source", "mirror"])
    assert r.exit_code == exitcodes.BAD_INPUT and "--endpoint" in r.output


def test_help_lists_the_options():
    r = CliRunner().invoke(main, ["download", "--help"])
    assert r.exit_code == 0
    for opt in ("--model", "--source", "--wait", "--verify", "--json", "--endpoint"):
        assert opt in r.output


def test_wait_polls_until_every_download_stopped(monkeypatch):
    snaps = iter([{"h": [_doc("downloading", True)]}, {"h": [_doc("verifying", True)]},
                  {"h": [{**_doc("complete"), "done_bytes": 10, "percent": 100.0}]}])
    monkeypatch.setattr(downloads, "poll", lambda targets, variant: next(snaps))
    monkeypatch.setattr(download_cmd, "POLL_SECONDS", 0)
    final = download_cmd.wait_with_progress([], None, plain=False)
    assert final["h"][0]["phase"] == "complete"


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fails the test if bad input let anything reach a host."""
    from ktdeploy import engine, provisioning

    calls = []
    monkeypatch.setattr(provisioning, "check_connections", lambda *a, **k: calls.append("check"))
    monkeypatch.setattr(engine, "run_playbook", lambda *a, **k: calls.append("play"))
    return calls


@pytest.mark.parametrize(("args", "message"), [
    (["--endpoint", "not a url"], "--endpoint 'not a url' is not an http(s) URL"),
    (["--source", "huggingface", "--endpoint", "ftp://mirror.example/hf"], "is not an http(s) URL"),
    (["--endpoint", "https://"], "--endpoint 'https://' names no host"),
    (["--source", "mirror", "--endpoint", "data/mirror"], "is not an http(s) URL or an absolute path"),
])
def test_an_endpoint_that_is_no_url_exits_2_before_anything_runs(args, message, nothing_runs):
    r = CliRunner().invoke(main, ["download", "somehost", *args])
    assert r.exit_code == exitcodes.BAD_INPUT, r.output
    assert message in r.output and "fix: " in r.output
    assert nothing_runs == []


@pytest.mark.parametrize(("source", "endpoint"), [("huggingface", "https://hf-mirror.com"),
                                                  ("modelscope", "http://10.0.0.9:8080/ms"),
                                                  ("mirror", "/data/mirror"), ("mirror", "https://m.example/r1")])
def test_good_endpoints_pass(source, endpoint):
    downloads.check_endpoint(source, endpoint)


def test_json_is_printed_when_a_download_fails(monkeypatch, tmp_path):
    from ktdeploy import engine, provisioning
    from ktdeploy.engine import HostStats, RunResult

    monkeypatch.setattr(provisioning, "check_connections", lambda *a, **k: None)
    failed = RunResult(status="failed", rc=2, artifact_dir=tmp_path, hosts={"h1": HostStats(ok=3, failed=1)})
    monkeypatch.setattr(engine, "run_playbook", lambda *a, **k: failed)
    monkeypatch.setattr(RunResult, "failure_lines", lambda self, limit=2000: ["h1: Start the downloads: disk full"])
    monkeypatch.setattr(downloads, "poll", lambda targets, variant: {"h1": [_doc("failed")]})
    r = CliRunner().invoke(main, ["download", "h1", "--json", "--plain"])
    assert r.exit_code == exitcodes.FAILED, r.output
    import json

    assert json.loads(r.stdout) == [{"host": "h1", "downloads": [_doc("failed")],
                                     "error": "h1: Start the downloads: disk full"}]
