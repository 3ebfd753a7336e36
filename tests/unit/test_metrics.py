"""`status --metrics-file`: Prometheus text format from status documents, parsed back by a real parser.

tests/unit/recorded/status_fleet.json is a real `ktdeploy status --json --deep` document of four lab
hosts (serving with one restart, half a download, a failed API unit, powered off), recorded with
`python -m tests.support.record_status_doc`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from ktdeploy import metrics
from ktdeploy import status as st
from ktdeploy.cli import main
from ktdeploy.errors import BadInput, KtdeployError
from tests.support.probe_env import ctrl_c, free_port

FLEET = json.loads((Path(__file__).parent / "recorded" / "status_fleet.json").read_text())
KTDEPLOY = os.path.join(os.path.dirname(sys.executable), "ktdeploy")
NAMES = [h["name"] for h in FLEET["hosts"]]
SERVING, DOWNLOADING, FAILED, DOWN = NAMES


def parse(text: str) -> dict:
    """family name -> Metric, through prometheus_client's parser of the text format."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict, name: str, **labels) -> dict:
    """{label tuple of the other labels: value} of the samples of name matching labels."""
    fam = families.get(name.removesuffix("_total"))
    out = {}
    for s in fam.samples if fam else []:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            out[tuple(v for k, v in sorted(s.labels.items()) if k not in labels)] = s.value
    return out


def value(families: dict, name: str, **labels) -> float:
    (v,) = samples(families, name, **labels).values()
    return v


def test_every_family_is_typed_documented_prefixed_and_consistently_labelled():
    text = metrics.render(FLEET, now=1_800_000_000.0)
    fams = parse(text)
    for line in text.splitlines():  # no sample timestamps: the textfile collector refuses them
        if not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[^}]*\})? \S+', line), line
    seen = set()
    for fam in fams.values():
        assert fam.name.startswith("ktdeploy_") and fam.documentation and fam.type in ("gauge", "counter")
        assert len({tuple(sorted(s.labels)) for s in fam.samples}) == 1, fam.name
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, key
            seen.add(key)
    for name in ("ktdeploy_host_probe_duration_seconds", "ktdeploy_download_done_bytes", "ktdeploy_deep_ttft_seconds"):
        assert name in fams
    assert text.count("# TYPE ktdeploy_host_verdict gauge") == 1
    assert value(fams, "ktdeploy_status_last_run_timestamp_seconds") == 1_800_000_000.0
    assert value(fams, "ktdeploy_status_hosts") == 4


def test_verdict_is_one_hot_per_host():
    fams = parse(metrics.render(FLEET))
    for host, verdict in zip(NAMES, ("ok", "degraded", "failed", "unreachable")):
        got = samples(fams, "ktdeploy_host_verdict", host=host)
        assert got == {(v,): float(v == verdict) for v in metrics.VERDICTS}, host


def test_unreachable_host_has_only_its_verdict():
    fams = parse(metrics.render(FLEET))
    for fam in fams.values():
        hosts = {s.labels.get("host") for s in fam.samples}
        assert DOWN not in hosts or fam.name == "ktdeploy_host_verdict", fam.name


def test_stages_downloads_services_endpoints_and_deep_figures():
    fams = parse(metrics.render(FLEET))
    assert samples(fams, "ktdeploy_stage_complete", host=SERVING) == {("base",): 1.0, ("serve",): 1.0}
    assert samples(fams, "ktdeploy_stage_complete", host=DOWNLOADING) == {("base",): 1.0, ("python_env",): 1.0}
    mtime = FLEET["hosts"][0]["probe"]["stages"]["serve"]["mtime"]
    assert value(fams, "ktdeploy_stage_record_timestamp_seconds", host=SERVING, stage="serve") == mtime

    dl = dict(host=DOWNLOADING, download="r1-gguf")
    assert value(fams, "ktdeploy_download_done_bytes", **dl) == 3_000_000
    assert value(fams, "ktdeploy_download_size_bytes", **dl) == 4_000_000
    phases = samples(fams, "ktdeploy_download_phase", **dl)
    assert phases[("interrupted",)] == 1 and sum(phases.values()) == 1 and len(phases) == len(metrics.DOWNLOAD_PHASES)
    assert not samples(fams, "ktdeploy_download_rate_bytes_per_second", **dl)  # not known: no sample, not 0

    api = dict(host=SERVING, service="api", unit="ktdeploy-api")
    assert value(fams, "ktdeploy_service_restarts_total", **api) == 1  # killed once, restarted by systemd
    assert fams["ktdeploy_service_restarts"].type == "counter"
    assert value(fams, "ktdeploy_service_state", state="active", **api) == 1
    assert sum(samples(fams, "ktdeploy_service_state", **api).values()) == 1
    failed = dict(host=FAILED, service="api", unit="ktdeploy-api")
    assert value(fams, "ktdeploy_service_state", state="failed", **failed) == 1
    assert value(fams, "ktdeploy_service_restarts_total", **failed) == 3
    assert value(fams, "ktdeploy_service_state", state="not-found", host=DOWNLOADING, service="webui",
                 unit="ktdeploy-webui") == 1

    assert value(fams, "ktdeploy_api_up", host=SERVING) == 1 and value(fams, "ktdeploy_webui_up", host=SERVING) == 1
    assert value(fams, "ktdeploy_api_up", host=FAILED) == 0
    elapsed_ms = FLEET["hosts"][0]["probe"]["api"]["elapsed_ms"]
    assert value(fams, "ktdeploy_api_response_seconds", host=SERVING) == pytest.approx(elapsed_ms / 1000)

    stream = FLEET["hosts"][0]["probe"]["deep"]["stream"]
    assert value(fams, "ktdeploy_deep_ttft_seconds", host=SERVING) == stream["ttft_s"]
    assert value(fams, "ktdeploy_deep_tokens_per_second", host=SERVING) == stream["tokens_per_s"]
    assert samples(fams, "ktdeploy_deep_ok", host=SERVING) == {("completion",): 1.0, ("stream",): 1.0}
    assert not samples(fams, "ktdeploy_deep_ttft_seconds", host=DOWNLOADING)  # no --deep result there


def test_running_download_rate_eta_and_a_label_that_needs_escaping():
    doc = copy.deepcopy(FLEET)
    host = doc["hosts"][1]
    host["name"] = 'rack "A"\\gpu\n2'
    d = host["probe"]["download"]["downloads"][0]
    d.update(phase="downloading", rate_bps=16_000_000.5, eta_s=3600, done_bytes=58_800_000_000, total_bytes=140_000_000_000)
    fams = parse(metrics.render(doc))
    dl = dict(host='rack "A"\\gpu\n2', download="r1-gguf")
    assert value(fams, "ktdeploy_download_rate_bytes_per_second", **dl) == 16_000_000.5
    assert value(fams, "ktdeploy_download_eta_seconds", **dl) == 3600
    assert value(fams, "ktdeploy_download_done_bytes", **dl) == 58_800_000_000
    assert value(fams, "ktdeploy_download_phase", phase="downloading", **dl) == 1


def test_report_of_judged_hosts_renders_the_same_as_its_json():
    """render() takes report()'s dict as the CLI builds it, not only a document read back from JSON."""
    statuses = [st.HostStatus("h1", "10.0.0.1", "unreachable", error="SSH connection refused")]
    doc = st.report(statuses)
    assert metrics.render(doc, now=1.0) == metrics.render(json.loads(json.dumps(doc)), now=1.0)
    assert value(parse(metrics.render(doc)), "ktdeploy_host_verdict", host="h1", verdict="unreachable") == 1


def test_write_is_atomic_readable_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "ktdeploy.prom"
    path.write_text("old\n")
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src), Path(dst), Path(src).read_text()))
        assert path.read_text() == "old\n"  # the old file stays whole until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    metrics.write_textfile(path, "new\n")
    ((src, dst, content),) = renames
    assert src.parent == tmp_path and dst == path and content == "new\n"
    assert not src.name.endswith(".prom")  # the collector reads only *.prom: never the half-written file
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ktdeploy.prom"]


def test_failed_write_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "ktdeploy.prom"
    path.write_text("old\n")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(KtdeployError, match="cannot write the metrics file .*ktdeploy.prom: No space left"):
        metrics.write_textfile(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ktdeploy.prom"]


def test_check_target_refuses_a_missing_directory_and_a_directory(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        metrics.check_target(tmp_path / "nope" / "k.prom")
    with pytest.raises(BadInput, match="is a directory"):
        metrics.check_target(tmp_path)
    assert metrics.check_target(tmp_path / "k.prom") == tmp_path / "k.prom"


def test_status_writes_the_metrics_file_and_refuses_a_bad_path_before_probing(tmp_path):
    path = tmp_path / "ktdeploy.prom"
    port = free_port()
    spec = f"nobody@127.0.0.1:{port}"
    r = CliRunner().invoke(main, ["status", spec, "--metrics-file", str(path)])
    assert r.exit_code == 3, r.output
    fams = parse(path.read_text())
    assert value(fams, "ktdeploy_host_verdict", host=f"127.0.0.1:{port}", verdict="unreachable") == 1
    r = CliRunner().invoke(main, ["status", spec, "--metrics-file", str(tmp_path / "missing" / "k.prom")])
    assert r.exit_code == 2 and "does not exist" in r.output and "unreachable" not in r.output


def test_watch_rewrites_the_metrics_file_every_round(tmp_path):
    path = tmp_path / "ktdeploy.prom"
    proc = subprocess.Popen([KTDEPLOY, "status", f"nobody@127.0.0.1:{free_port()}", "--watch", "--json",
                             "--interval", "1", "--metrics-file", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stamps = []
    try:
        for _ in range(2):  # a JSON line per round, written after the metrics file
            assert proc.stdout.readline(), proc.stderr.read() if proc.poll() is not None else "no round"
            stamps.append(value(parse(path.read_text()), "ktdeploy_status_last_run_timestamp_seconds"))
    finally:
        ctrl_c(proc)
    assert stamps[1] > stamps[0] and stamps[1] <= time.time()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ktdeploy.prom"]
