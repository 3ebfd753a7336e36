"""What `ktdeploy status` says about releases (role release) and removed hosts (`ktdeploy remove`):
the probe reads them as shipped, the checks judge them, the JSON keeps to its schema; and the
rollout gate's filters judge a probe's output as `status` does."""

from __future__ import annotations

import json
import runpy
from importlib.resources import files

import jsonschema

from ktdeploy import status as st
from ktdeploy.resources import playbooks_dir
from tests.support.probe_env import run_probe_locally, write_stage

REMOVED = {"format": 1, "removed": True, "kept": [{"what": "models", "path": "/srv/ktdeploy/models"},
                                                 {"what": "service user", "name": "ktdeploy"}]}


def _schema():
    return json.loads(files("ktdeploy").joinpath("schemas/status.json").read_text())


def _write_releases(state_dir, history, rolled_back=False):
    root = state_dir / "releases"
    root.mkdir(parents=True)
    (root / "state.json").write_text(json.dumps({"format": 1, "history": history, "rolled_back": rolled_back}))
    (root / history[0]).mkdir()
    (root / history[0] / "release.json").write_text(json.dumps(
        {"id": history[0], "engine": "llamacpp", "engine_key": "llama-cpp-python-0.3.36-0123456789ab",
         "wheel": "/srv/ktdeploy/wheels/llamacpp/x/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"}))


def test_a_removed_host_is_clean_and_names_what_was_kept(tmp_path):
    (tmp_path / "removed.json").write_text(json.dumps(REMOVED))
    probe = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert probe["removed"] == REMOVED and probe["release"] is None
    status = st.judge_output("gpu1", json.dumps(probe))
    assert status.verdict == "ok" and status.exit_code == 0
    assert [c.name for c in status.checks] == ["removed"]
    assert status.summary() == "clean: ktdeploy was removed; kept: models /srv/ktdeploy/models, service user ktdeploy"
    jsonschema.validate(json.loads(json.dumps(st.report([status]))), _schema())


def test_a_host_provisioned_again_after_remove_is_judged_as_usual(tmp_path):
    (tmp_path / "removed.json").write_text(json.dumps(REMOVED))
    write_stage(tmp_path, "base", {"stage": "base", "complete": True})
    probe = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    checks = {c.name: c for c in st.evaluate(probe)}
    assert "removed" not in checks and "stages" in checks


def test_a_service_left_running_on_a_removed_host_is_still_judged(tmp_path):
    probe = {"errors": [], "stages": {}, "removed": REMOVED, "services": [
        {"role": "api", "unit": "ktdeploy-api", "port": 10002, "found": True, "state": "failed", "result": "exit-code"},
        {"role": "webui", "unit": "ktdeploy-webui", "port": 8080, "found": False, "state": "not-found"}]}
    status = st.judge_output("gpu1", json.dumps(probe))
    assert status.verdict == "failed" and [c.name for c in status.checks] == ["removed", "service:api"]


def test_the_current_release_and_the_one_kept_before_are_shown(tmp_path):
    _write_releases(tmp_path, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"], rolled_back=True)
    probe = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert probe["release"] == {
        "current": "aaaaaaaaaaaa", "previous": "bbbbbbbbbbbb", "rolled_back": True, "engine": "llamacpp",
        "engine_key": "llama-cpp-python-0.3.36-0123456789ab",
        "wheel": "/srv/ktdeploy/wheels/llamacpp/x/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"}
    (check,) = [c for c in st.evaluate(probe) if c.name == "release"]
    assert check.level == "ok"
    assert check.detail == ("aaaaaaaaaaaa (llamacpp llama-cpp-python-0.3.36-0123456789ab) (rolled back); "
                            "bbbbbbbbbbbb kept to roll back to")
    jsonschema.validate(json.loads(json.dumps(st.report([st.judge_output("gpu1", json.dumps(probe))]))), _schema())


def test_a_single_release_says_none_is_kept_before_it(tmp_path):
    _write_releases(tmp_path, ["aaaaaaaaaaaa"])
    probe = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    (check,) = [c for c in st.evaluate(probe) if c.name == "release"]
    assert check.detail.endswith("; none kept before it")


def test_the_gate_filters_judge_as_status_does(tmp_path):
    filters = runpy.run_path(str(playbooks_dir() / "filter_plugins" / "ktdeploy_status.py"))["FilterModule"]().filters()
    assert filters["ktdeploy_hostside"]("status_probe.py").endswith("ktdeploy/hostside/status_probe.py")
    cfg = filters["ktdeploy_probe_config"]({"base_state_dir": str(tmp_path), "model_download_lib_dir": "",
                                            "model_download_jobs_dir": "/j"})
    from ktdeploy import layout

    # complete: the gate hands it to the probe without the defaults probe_script lays under it
    assert cfg == {**layout.probe_defaults(), "state_dir": str(tmp_path), "deep": True, "downloads_dir": "/j"}
    (tmp_path / "removed.json").write_text(json.dumps(REMOVED))
    probe = run_probe_locally({"state_dir": str(tmp_path), "manager": "none"})
    assert filters["ktdeploy_status_judge"](json.dumps(probe))["verdict"] == "ok"
    bare = run_probe_locally({"state_dir": str(tmp_path / "none"), "manager": "none"})
    judged = filters["ktdeploy_status_judge"](json.dumps(bare), "", "gpu1")
    assert judged["verdict"] == "degraded" and "ktdeploy-api" in judged["summary"]
    broken = filters["ktdeploy_status_judge"]("", "Traceback ...\nSyntaxError: bad", "gpu1")
    assert broken == {"verdict": "failed", "summary": "status probe failed: Traceback ... | SyntaxError: bad",
                      "checks": []}
