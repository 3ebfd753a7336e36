"""Judging probe outputs: checks, verdicts, exit codes and the JSON document's schema."""

import copy
import json
from importlib.resources import files

import jsonschema
import pytest

from ktdeploy import exitcodes
from ktdeploy import status as st
from ktdeploy.remote import HostResult
from ktdeploy.targets import parse_target

SERVING = {
    "probe_version": 1,
    "host": {"hostname": "gpu1", "uid": 0, "python": "3.11.2", "time": 1.0},
    "errors": [],
    "plan": {"model": "DeepSeek-R1-UD-IQ1_S"},
    "stages": {"base": {"record": {}, "mtime": 1.0}, "serve": {"record": {"services": {}}, "mtime": 2.0}},
    "download": {"state": "done", "downloads": [{"name": "r1-gguf", "phase": "complete", "done_bytes": 10,
                                                  "total_bytes": 10, "percent": 100.0}]},
    "manager": "systemd",
    "services_declared": True,
    "services": [
        {"role": "api", "unit": "ktdeploy-api", "port": 10002, "state": "active", "sub": "running", "restarts": 0, "pid": 42},
        {"role": "webui", "unit": "ktdeploy-webui", "port": 8080, "state": "active", "sub": "running", "restarts": 0},
    ],
    "api": {"port": 10002, "ok": True, "models": ["DeepSeek-R1"], "listed": True, "expected_model": "DeepSeek-R1",
            "status": 200, "elapsed_ms": 3.0},
    "webui": {"port": 8080, "ok": True, "status": 200, "elapsed_ms": 2.0},
    "deep": None,
}


def probe(**changes):
    p = copy.deepcopy(SERVING)
    for key, value in changes.items():
        p[key] = value
    return p


def svc(role, **kw):
    base = next(s for s in SERVING["services"] if s["role"] == role)
    return dict(base, **kw)


def levels(p):
    return {c.name: c.level for c in st.evaluate(p)}


def test_serving_host_is_ok():
    checks = st.evaluate(probe())
    assert st.verdict(checks) == "ok", checks
    assert {"service:api", "service:webui", "api", "webui", "stages", "download"} <= {c.name for c in checks}


@pytest.mark.parametrize(
    "service, expect_level, words",
    [
        (svc("api", state="failed", sub="failed", result="exit-code", restarts=5), "failed", "result exit-code, restarted 5x"),
        (svc("api", state="activating", sub="start"), "degraded", "model may still be loading"),
        (svc("api", state="activating", sub="auto-restart", restarts=2), "degraded", "waiting to restart, restarted 2x"),
        (svc("api", state="inactive", sub="dead"), "failed", "stopped"),
        (svc("api", state="not-found"), "failed", "missing although"),
        (svc("api", state="active", sub="running", restarts=3), "ok", "restarted 3x"),
        (svc("api", state="unknown", why="systemctl show failed"), "degraded", "systemctl show failed"),
    ],
)
def test_service_states(service, expect_level, words):
    p = probe(services=[service, svc("webui")])
    (check,) = [c for c in st.evaluate(p) if c.name == "service:api"]
    assert check.level == expect_level and words in check.detail


def test_a_unit_at_its_start_limit_says_so_and_how_to_recover():
    stuck = svc("api", state="failed", sub="failed", result="exit-code", restarts=5, start_limit_hit=True,
                start_limit={"burst": 5, "interval": "1h"})
    (check,) = [c for c in st.evaluate(probe(services=[stuck, svc("webui")])) if c.name == "service:api"]
    assert check.level == "failed"
    assert check.detail.startswith("ktdeploy-api hit its start limit (5 starts within 1h): systemd no longer restarts it")
    assert "re-run provision" in check.detail and "ktdeploy logs HOST api" in check.detail


def test_services_not_deployed_yet_is_degraded_not_failed():
    p = probe(
        services_declared=False,
        stages={"base": {"record": {}, "mtime": 1.0}},
        services=[svc("api", state="not-found"), svc("webui", state="not-found")],
        api={"port": 10002, "ok": False, "models": [], "listed": False, "expected_model": None,
             "error": "connection refused (nothing listens on the port)"},
        webui={"port": 8080, "ok": False, "error": "connection refused (nothing listens on the port)"},
    )
    checks = st.evaluate(p)
    assert st.verdict(checks) == "degraded"
    assert "api" not in {c.name for c in checks}  # nothing to ask while the unit does not exist
    assert "not deployed yet" in " ".join(c.detail for c in checks)


def test_api_not_listing_the_expected_model_fails():
    p = probe(api=dict(SERVING["api"], models=["DeepSeek-Coder-V2-Instruct"], listed=False))
    (check,) = [c for c in st.evaluate(p) if c.name == "api"]
    assert check.level == "failed" and "DeepSeek-Coder-V2-Instruct, not DeepSeek-R1" in check.detail


def test_api_refusing_while_unit_runs_is_degraded_and_http_error_fails():
    refused = dict(SERVING["api"], ok=False, error="connection refused (nothing listens on the port)")
    del refused["status"]
    assert levels(probe(api=refused))["api"] == "degraded"
    http500 = dict(SERVING["api"], ok=False, status=500, error="HTTP 500: boom")
    assert levels(probe(api=http500))["api"] == "failed"
    down = probe(api=refused, services=[svc("api", state="failed", sub="failed"), svc("webui")])
    assert levels(down)["api"] == "failed"


@pytest.mark.parametrize("state, sub", [("inactive", "dead"), ("deactivating", "stop"), ("failed", "failed")])
def test_a_stopped_unit_is_not_still_loading(state, sub):
    refused = {"port": 8080, "ok": False, "error": "connection refused (nothing listens on the port)"}
    p = probe(webui=refused, services=[svc("api"), svc("webui", state=state, sub=sub)])
    (check,) = [c for c in st.evaluate(p) if c.name == "webui"]
    assert check.level == "failed" and "still loading" not in check.detail
    assert check.detail.startswith("down on 127.0.0.1:8080 (ktdeploy-webui is ")


def test_a_unit_waiting_to_restart_is_not_still_loading():
    refused = {"port": 8080, "ok": False, "error": "connection refused (nothing listens on the port)"}
    p = probe(webui=refused, services=[svc("api"), svc("webui", state="activating", sub="auto-restart")])
    (check,) = [c for c in st.evaluate(p) if c.name == "webui"]
    assert check.level == "degraded" and check.detail.endswith("(ktdeploy-webui crashed and waits to restart)")


def test_webui_down_makes_host_degraded():
    p = probe(webui={"port": 8080, "ok": False, "error": "timed out"})
    assert st.verdict(st.evaluate(p)) == "degraded"


@pytest.mark.parametrize(
    "download, level",
    [
        ({"state": "running", "downloads": [{"name": "r1", "phase": "downloading", "done_bytes": 5 * 10**9,
                                              "total_bytes": 20 * 10**9, "percent": 25.0, "rate_bps": 2e7,
                                              "eta_s": 60}]}, "degraded"),
        ({"state": "stopped", "downloads": [{"name": "r1", "phase": "interrupted"}]}, "degraded"),
        ({"state": "failed", "downloads": [{"name": "r1", "phase": "failed", "error": "sha256 mismatch"}]}, "failed"),
        ({"state": "unknown", "why": "no download state module on the host"}, "ok"),
    ],
)
def test_download_states(download, level):
    checks = {c.name: c for c in st.evaluate(probe(download=download))}
    assert checks["download"].level == level
    if download["state"] == "running":
        assert checks["download"].detail == "r1 downloading 25.0% (5.00/20.00 GB), 20.0 MB/s, ETA 60 s"
    if download["state"] == "stopped":
        assert "re-run `ktdeploy download` to resume" in checks["download"].detail


def test_a_refused_download_shows_its_cause_not_a_percentage():
    # as the download state module of an older ktdeploy reports it: the bytes of an earlier manifest
    refused = {"name": "DeepSeek-R1-config", "phase": "refused", "error": "cannot reach http://m/: refused",
               "done_bytes": 10**9, "total_bytes": 10**9, "percent": 100.0}
    (check,) = [c for c in st.evaluate(probe(download={"state": "failed", "downloads": [refused]}))
                if c.name == "download"]
    assert check.level == "failed"
    assert check.detail == "DeepSeek-R1-config refused: cannot reach http://m/: refused"


def test_no_download_recorded_adds_no_check():
    assert "download" not in levels(probe(download={"state": "none"}))


def test_deep_checks():
    good = {"model": "m", "completion": {"ok": True, "status": 200, "finish_reason": "length", "elapsed_s": 0.1},
            "stream": {"ok": True, "status": 200, "ttft_s": 0.2, "tokens_per_s": 19.5, "completion_tokens": 16}}
    checks = {c.name: c for c in st.evaluate(probe(deep=good))}
    assert checks["stream"].level == "ok" and "TTFT 0.2 s, 19.5 tok/s" in checks["stream"].detail
    bad = dict(good, completion={"ok": False, "error": "timed out"}, stream={"ok": False, "error": "stream carried no tokens"})
    checks = {c.name: c for c in st.evaluate(probe(deep=bad))}
    assert checks["completion"].level == checks["stream"].level == "failed"


def test_probe_errors_degrade():
    assert st.verdict(st.evaluate(probe(errors=["cannot read /var/lib/ktdeploy/plan.json: bad"]))) == "degraded"


def _hosts():
    t = [parse_target(n) for n in ("a", "b", "c", "d")]
    return [
        st.judge(HostResult(t[0], error="SSH connection timed out; is the host up and reachable?", unreachable=True)),
        st.judge(HostResult(t[1], value=(probe(services=[svc("api", state="failed"), svc("webui")]), 0.3))),
        st.judge(HostResult(t[2], value=(probe(download={"state": "running", "downloads": []}), 0.3))),
        st.judge(HostResult(t[3], value=(probe(), 0.3))),
    ]


def test_worst_host_wins_exit_code():
    hosts = _hosts()
    assert [h.verdict for h in hosts] == ["unreachable", "failed", "degraded", "ok"]
    assert st.exit_code(hosts) == exitcodes.UNREACHABLE
    assert st.exit_code(hosts[1:]) == exitcodes.FAILED
    assert st.exit_code(hosts[2:]) == exitcodes.NOT_READY
    assert st.exit_code(hosts[3:]) == exitcodes.OK


def test_probe_failure_is_failed_not_unreachable():
    h = st.judge(HostResult(parse_target("x"), error="ProbeError: python3 not found on the host"))
    assert h.verdict == "failed" and h.exit_code == exitcodes.FAILED and "python3" in h.summary()


def test_report_matches_schema_and_summaries_name_the_cause():
    doc = st.report(_hosts())
    schema = json.loads(files("ktdeploy").joinpath("schemas/status.json").read_text())
    jsonschema.validate(json.loads(json.dumps(doc)), schema)
    assert doc["verdict"] == "unreachable" and doc["exit_code"] == 3
    assert "ktdeploy-api failed" in doc["hosts"][1]["summary"]
    assert doc["hosts"][3]["summary"] == "all checks passed"


def test_schema_rejects_a_wrong_document():
    doc = st.report(_hosts()[3:])
    doc["hosts"][0]["verdict"] = "fine"
    schema = json.loads(files("ktdeploy").joinpath("schemas/status.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_flash_attn_route_of_the_torch_stage_is_shown():
    route = {"route": "sdpa", "wheel": "", "reason": "no prebuilt flash-attn for torch 2.11.0+cu130"}
    stages = dict(SERVING["stages"], torch={"record": {"settings": {"torch": "2.11.0+cu130", "flash_attn": route}}, "mtime": 3.0})
    (check,) = [c for c in st.evaluate(probe(stages=stages)) if c.name == "flash_attn"]
    assert check.level == "ok" and check.detail == "sdpa: no prebuilt flash-attn for torch 2.11.0+cu130"
    # a host without the torch stage (llama.cpp) or with an older record shows none
    assert "flash_attn" not in levels(probe())
    old = dict(SERVING["stages"], torch={"record": {"settings": {"flash_attn": True}}, "mtime": 3.0})
    assert "flash_attn" not in levels(probe(stages=old))


def test_plain_lines_one_per_check_under_a_host_line():
    hosts = _hosts()
    lines = st.plain_lines(hosts[:2])
    assert lines[0] == "a: unreachable: SSH connection timed out; is the host up and reachable?"
    assert lines[1] == "b: failed"
    assert any(ln.startswith("  service:api    failed    ktdeploy-api failed (") for ln in lines)
    assert "  stages         ok        completed: base, serve" in lines
    assert len(lines) == 2 + len(hosts[1].checks)
