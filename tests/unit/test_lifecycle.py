"""`ktdeploy upgrade`, `rollback`, `remove`: bad input refused before anything runs; the per-host
report read from a run's events; the playbooks' rollout settings (Ansible's serial and
max_fail_percentage, not a scheduler of ours)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy import build, engine, lifecycle, provisioning, serving
from ktdeploy.cli import main
from ktdeploy.resources import playbooks_dir


@pytest.mark.parametrize("argv, says", [
    (["upgrade"], "no target given"),
    (["upgrade", "gpu1", "-i", "inv.yml"], "give hosts or -i INVENTORY, not both"),
    (["upgrade", "gpu1", "-e", "serve_api_port=99999"], "is not a port"),
    (["upgrade", "gpu1", "-e", "novalue"], "is not KEY=VALUE"),
    (["upgrade", "gpu1", "--profile", "no-such-profile"], "no-such-profile"),
    (["upgrade", "gpu1", "--limit", "gpu2"], "--limit names host(s) not given: gpu2"),
    (["rollback"], "no target given"),
    (["rollback", "gpu1", "--limit", "gpu9"], "--limit names host(s) not given: gpu9"),
    (["remove", "--yes"], "no target given"),
    (["remove", "gpu1"], "pass --yes to confirm without a terminal"),
    (["remove", "gpu1", "--purge-models"], "pass --yes"),
])
def test_bad_input_exits_2_before_anything_runs(engine_calls, argv, says):
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert engine_calls == []


def test_hosts_with_an_inventory_pick_hosts_of_it(tmp_path, monkeypatch, engine_calls):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"gpu1": {"ansible_host": "10.0.0.1"},
                                                           "gpu2": {"ansible_host": "10.0.0.2"}}}}))
    seen = []

    def run(playbook, inv, **kw):
        seen.append((playbook, kw["limit"]))
        raise SystemExit(0)

    monkeypatch.setattr(engine, "run_playbook", run)
    for argv in (["rollback", "gpu2", "-i", str(inventory)], ["remove", "gpu2", "-i", str(inventory), "--yes"]):
        result = CliRunner().invoke(main, argv + ["--plain"])
        assert result.exit_code == 0, result.output
    assert seen == [("rollback.yml", ["gpu2"]), ("remove.yml", ["gpu2"])]
    result = CliRunner().invoke(main, ["rollback", "gpu9", "-i", str(inventory)])
    assert result.exit_code == 2 and "gpu9" in result.output


def test_remove_passes_the_purge_flags_as_the_remove_role_reads_them(monkeypatch, engine_calls):
    seen = {}

    def run(playbook, inventory, **kw):
        seen.update(playbook=playbook, extravars=kw["extravars"])
        raise SystemExit(0)

    monkeypatch.setattr(engine, "run_playbook", run)
    result = CliRunner().invoke(main, ["remove", "gpu1", "--yes", "--purge-models", "--plain"])
    assert result.exit_code == 0, result.output
    assert seen == {"playbook": "remove.yml",
                    "extravars": {"remove_purge_models": True, "remove_purge_webui_data": False}}
    defaults = yaml.safe_load((playbooks_dir().parent / "roles/remove/defaults/main.yml").read_text())
    assert set(seen["extravars"]) == set(defaults)


def _play(name, uuid):
    return {"event": "playbook_on_play_start", "event_data": {"play": name, "play_uuid": uuid}}


def _ok(host, task, **res):
    return {"event": "runner_on_ok", "event_data": {"host": host, "task": task, "res": res}}


def _failed(host, task, msg):
    return {"event": "runner_on_failed", "event_data": {"host": host, "task": task, "res": {"msg": msg}}}


def _numbered(events):
    return [dict(e, counter=i) for i, e in enumerate(events)]


def test_report_of_a_rollout_that_stopped_at_the_second_host():
    events = _numbered([
        _play("Prepare", "p1"),
        *(_ok(h, "Gather the raw host facts in one command") for h in ("a", "b", "c", "d")),
        _play("Roll out", "p2"),  # serial: the play starts again for every batch (recorded uuids)
        _ok("a", "Record the release the API runs", changed=True, release="222222222222", previous="111111111111"),
        _ok("a", "Stop unless status --deep says ok", msg="ok"),
        _play("Roll out", "p2_2"),
        _ok("b", "Record the release the API runs", changed=True, release="333333333333", previous="111111111111"),
        _play("Roll out", "p2_3"),
        _failed("c", "Restart the services whose configuration changed.", "One or more items failed"),
        _failed("c", "Stop the rollout at this host", "c failed ... the rollout stops here"),
    ])
    report = lifecycle.report(events, ["a", "b", "c", "d"], rollout_play=1)
    assert [o.state for o in report.hosts.values()] == ["upgraded", "upgraded", "failed", "not-reached"]
    assert report.lines("upgrade") == [
        "a: upgraded to release 222222222222 (was 111111111111); status --deep ok",
        "b: upgraded to release 333333333333 (was 111111111111); status --deep ok",
        "c: FAILED: c failed ... the rollout stops here; back to the release before: ktdeploy rollback c",
        "d: not reached: keeps its release",
    ]


def test_report_of_a_failed_prepare_and_of_a_host_already_upgraded():
    events = _numbered([
        _play("Prepare", "p1"),
        _failed("b", "Stop before building when the host cannot build", "cannot build KTransformers on b"),
        _ok("a", "Build or fetch the llama-cpp-python wheel"),
        _play("Roll out", "p2"),
        _ok("a", "Record the release the API runs", changed=False, release="111111111111", previous=""),
    ])
    report = lifecycle.report(events, ["a", "b"], rollout_play=1)
    assert report.lines("upgrade") == [
        "a: already on release 111111111111; status --deep ok",
        "b: FAILED while preparing (before any host was rolled out): cannot build KTransformers on b",
    ]


def test_report_of_rollbacks():
    events = _numbered([
        _play("Roll back", "p1"),
        _ok("a", "Restore the release kept before the current one", changed=True, release="1" * 12,
            rolled_back_from="2" * 12),
        _ok("b", "Restore the release kept before the current one", changed=False, release="3" * 12,
            rolled_back_from=""),
    ])
    assert lifecycle.report(events, ["a", "b"], rollout_play=0).lines("rollback") == [
        f"a: rolled back to release {'1' * 12} (from {'2' * 12}); status --deep ok",
        f"b: already rolled back to release {'3' * 12}; status --deep ok",
    ]


def _plays(name):
    return yaml.safe_load((playbooks_dir() / name).read_text())


def test_the_rollout_is_ansibles_serial_and_max_fail_percentage():
    prepare, rollout = _plays("upgrade.yml")
    assert "serial" not in prepare and prepare["max_fail_percentage"] == 0  # all at once; any failure stops the run
    assert rollout["serial"] == 1 and rollout["max_fail_percentage"] == 0
    (rollback,) = _plays("rollback.yml")
    assert rollback["serial"] == 1 and rollback["max_fail_percentage"] == 0


def test_the_upgrade_runs_the_roles_of_site_yml():
    (site,) = _plays("site.yml")
    prepare, rollout = _plays("upgrade.yml")
    site_roles = [r["role"] for r in site["roles"]]
    prepared = [r["role"] for r in prepare["roles"]]
    (block,) = [t for t in rollout["tasks"] if "block" in t]
    rolled = [t["ansible.builtin.import_role"]["name"] for t in block["block"]]
    assert prepared + ["serve"] == site_roles and rolled == ["ktransformers", "serve", "release"]
    assert next(r for r in prepare["roles"] if r["role"] == "ktransformers")["vars"] == {"ktransformers_install": False}
    for role in prepare["roles"]:  # the same conditions as site.yml's
        assert role.get("when") == next(r for r in site["roles"] if r["role"] == role["role"]).get("when")


@pytest.mark.parametrize("wanted, installed, kept, force, steps", [
    ("s2", "s1", False, False, {"build": True, "install": True}),     # a new build
    ("s2", "s1", True, False, {"build": False, "install": True}),     # kept from before: install only
    ("s1", "s1\n", True, False, {"build": False, "install": False}),  # converged
    ("s1", "s1", False, False, {"build": False, "install": False}),   # built before wheels were kept
    ("s1", "", False, False, {"build": True, "install": True}),       # fresh host
    ("s1", "s1", True, True, {"build": True, "install": True}),       # ktransformers_force_rebuild
])
def test_build_steps(wanted, installed, kept, force, steps):
    assert build.steps(wanted, installed, kept, force) == steps


def test_llamacpp_build_key_names_version_and_flags():
    key = serving.llamacpp_build_key("0.3.36", "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF")
    assert key.startswith("llama-cpp-python-0.3.36-") and len(key.rsplit("-", 1)[1]) == 12
    assert key == serving.llamacpp_build_key("0.3.36", " -DGGML_NATIVE=OFF  -DLLAVA_BUILD=OFF ")
    assert key != serving.llamacpp_build_key("0.3.36", "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF")
    assert key != serving.llamacpp_build_key("0.3.37", "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF")


def test_wait_ready_gives_up_at_once_when_the_server_process_is_gone():
    """A server that crashes while loading fails its unit's start at once (the rollout gate then
    sees a failed unit), not after serve_start_timeout: systemd gives ExecStartPost= $MAINPID."""
    import os
    import subprocess
    import sys
    import time

    helper = playbooks_dir().parent / "roles" / "serve" / "files" / "ktdeploy-svc"
    gone = subprocess.Popen(["true"])
    gone.wait()
    url = "http://127.0.0.1:9/v1/models"
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(helper), "wait-ready", url, "--timeout", "60"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "MAINPID": str(gone.pid)})
    assert r.returncode == 1 and f"(pid {gone.pid}) exited before" in r.stderr and time.monotonic() - started < 10
    alive = subprocess.run([sys.executable, str(helper), "wait-ready", url, "--timeout", "3", "--pid", str(os.getpid())],
                           capture_output=True, text=True, timeout=60)
    assert alive.returncode == 1 and "not ready after 3 s" in alive.stderr
