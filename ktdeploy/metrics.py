"""Prometheus text-format metrics from a `ktdeploy status` document (`status --metrics-file PATH`).

`render(doc)` turns the `--json` document (`ktdeploy.status.report`, schema
ktdeploy/schemas/status.json) into the Prometheus text exposition format, one sample set per host;
`write_textfile(path, text)` writes it the way node-exporter's textfile collector wants: a temporary
file in the same directory, then a rename, so the collector never reads half a file. Pure apart from
the write: tested from recorded status documents. The metric names and labels are documented in
docs/status.md ("Metrics").

Conventions kept: names start with `ktdeploy_` and carry their unit (`_bytes`, `_seconds`); every
family has `# HELP` and `# TYPE` and the same label names on all its samples; enumerations
(verdict, service state, download phase) are one sample per possible value, 1 for the current one
and 0 for the others; no sample timestamps (the textfile collector refuses them). A value the probe
did not report (a host that could not be reached, no `--deep`, an ETA not known yet) has no sample.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from ktdeploy.errors import BadInput, KtdeployError

VERDICTS = ("ok", "degraded", "failed", "unreachable")
SERVICE_STATES = ("active", "reloading", "activating", "deactivating", "inactive", "failed", "not-found", "unknown")
DOWNLOAD_PHASES = ("planned", "downloading", "verifying", "complete", "failed", "refused", "interrupted", "unknown")

# name -> (type, help, label names); rendered in this order
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ktdeploy_status_last_run_timestamp_seconds": (
        "gauge", "When this ktdeploy status round finished (Unix time).", ()),
    "ktdeploy_status_hosts": (
        "gauge", "Hosts probed in this round.", ()),
    "ktdeploy_host_verdict": (
        "gauge", "The host's verdict: 1 for the current one (ok, degraded, failed, unreachable), 0 for the others.",
        ("host", "verdict")),
    "ktdeploy_host_probe_duration_seconds": (
        "gauge", "Wall time of the host's probe: SSH connection and the probe script.", ("host",)),
    "ktdeploy_stage_complete": (
        "gauge", "1 for each stage record the host has (a role that ran to its end), 0 if the record says not complete.",
        ("host", "stage")),
    "ktdeploy_stage_record_timestamp_seconds": (
        "gauge", "Modification time of the stage record on the host (Unix time).", ("host", "stage")),
    "ktdeploy_download_phase": (
        "gauge", "The download's phase: 1 for the current one, 0 for the others.", ("host", "download", "phase")),
    "ktdeploy_download_done_bytes": (
        "gauge", "Bytes of the download on disk (complete files and partial ones).", ("host", "download")),
    "ktdeploy_download_size_bytes": (
        "gauge", "Bytes the download has in all (its manifest).", ("host", "download")),
    "ktdeploy_download_rate_bytes_per_second": (
        "gauge", "Recent download rate.", ("host", "download")),
    "ktdeploy_download_eta_seconds": (
        "gauge", "Estimated seconds until the download is complete.", ("host", "download")),
    "ktdeploy_service_state": (
        "gauge", "The service's state in systemd's words (supervisord states mapped): 1 for the current one, 0 for the others.",
        ("host", "service", "unit", "state")),
    "ktdeploy_service_restarts_total": (
        "counter", "Restarts of the service (systemd NRestarts; supervisord: unexpected exits since it started).",
        ("host", "service", "unit")),
    "ktdeploy_service_active_seconds": (
        "gauge", "Seconds since the service last became active (systemd only).", ("host", "service", "unit")),
    "ktdeploy_api_up": (
        "gauge", "1 when the API answers /v1/models and lists the expected model, else 0.", ("host",)),
    "ktdeploy_api_response_seconds": (
        "gauge", "Response time of the API's /v1/models, measured on the host.", ("host",)),
    "ktdeploy_webui_up": (
        "gauge", "1 when Open WebUI's /health answers 200, else 0.", ("host",)),
    "ktdeploy_webui_response_seconds": (
        "gauge", "Response time of Open WebUI's /health, measured on the host.", ("host",)),
    "ktdeploy_deep_ok": (
        "gauge", "--deep: 1 when the request passed (completion: 1-token completion; stream: streamed request), else 0.",
        ("host", "request")),
    "ktdeploy_deep_completion_seconds": (
        "gauge", "--deep: wall time of the 1-token chat completion.", ("host",)),
    "ktdeploy_deep_ttft_seconds": (
        "gauge", "--deep: time to the first token of the streamed request.", ("host",)),
    "ktdeploy_deep_tokens_per_second": (
        "gauge", "--deep: decode rate of the streamed request, measured on the host: (tokens - 1) / (last - first token).",
        ("host",)),
    "ktdeploy_deep_server_tokens_per_second": (
        "gauge", "--deep: decode rate the server itself reported (llama.cpp timings).", ("host",)),
}


class _Samples:
    def __init__(self):
        self.by_family: dict[str, list[tuple[tuple[str, ...], float]]] = {name: [] for name in FAMILIES}
        self.seen: set[tuple] = set()

    def add(self, family: str, labels: tuple, value) -> None:
        if value is None or isinstance(value, str):
            return
        _, _, names = FAMILIES[family]
        assert len(labels) == len(names), (family, labels)
        key = (family, tuple(str(v) for v in labels))
        if key in self.seen:  # a repeated sample makes the collector drop the whole file: first one wins
            return
        self.seen.add(key)
        self.by_family[family].append((key[1], float(value)))

    def one_hot(self, family: str, labels: tuple, values: tuple[str, ...], current) -> None:
        known = values if current in values else (*values, str(current))
        for v in known:
            self.add(family, (*labels, v), 1 if v == current else 0)


def render(doc: dict, now: float | None = None) -> str:
    """The Prometheus text format (version 0.0.4) for one status document."""
    s = _Samples()
    s.add("ktdeploy_status_last_run_timestamp_seconds", (), time.time() if now is None else now)
    hosts = doc.get("hosts") or []
    s.add("ktdeploy_status_hosts", (), len(hosts))
    for host in hosts:
        _host(s, host)
    return _format(s)


def _host(s: _Samples, host: dict) -> None:
    name = host["name"]
    s.one_hot("ktdeploy_host_verdict", (name,), VERDICTS, host.get("verdict"))
    probe = host.get("probe")
    if not probe:
        return
    s.add("ktdeploy_host_probe_duration_seconds", (name,), host.get("elapsed_s"))
    for stage, entry in sorted((probe.get("stages") or {}).items()):
        record = entry.get("record") if isinstance(entry, dict) else None
        done = not (isinstance(record, dict) and record.get("complete") is False)
        s.add("ktdeploy_stage_complete", (name, stage), 1 if done else 0)
        s.add("ktdeploy_stage_record_timestamp_seconds", (name, stage), entry.get("mtime"))
    for d in (probe.get("download") or {}).get("downloads") or []:
        labels = (name, d.get("name") or "download")
        s.one_hot("ktdeploy_download_phase", labels, DOWNLOAD_PHASES, d.get("phase") or "unknown")
        s.add("ktdeploy_download_done_bytes", labels, d.get("done_bytes"))
        s.add("ktdeploy_download_size_bytes", labels, d.get("total_bytes"))
        s.add("ktdeploy_download_rate_bytes_per_second", labels, d.get("rate_bps"))
        s.add("ktdeploy_download_eta_seconds", labels, d.get("eta_s"))
    for svc in probe.get("services") or []:
        labels = (name, svc.get("role") or "", svc.get("unit") or "")
        s.one_hot("ktdeploy_service_state", labels, SERVICE_STATES, svc.get("state") or "unknown")
        s.add("ktdeploy_service_restarts_total", labels, svc.get("restarts"))
        s.add("ktdeploy_service_active_seconds", labels, svc.get("active_for_s"))
    api = probe.get("api")
    if api is not None:
        s.add("ktdeploy_api_up", (name,), 1 if api.get("ok") and api.get("listed") else 0)
        s.add("ktdeploy_api_response_seconds", (name,), _ms(api.get("elapsed_ms")))
    webui = probe.get("webui")
    if webui is not None:
        s.add("ktdeploy_webui_up", (name,), 1 if webui.get("ok") else 0)
        s.add("ktdeploy_webui_response_seconds", (name,), _ms(webui.get("elapsed_ms")))
    deep = probe.get("deep")
    if deep:
        completion, stream = deep.get("completion") or {}, deep.get("stream") or {}
        s.add("ktdeploy_deep_ok", (name, "completion"), 1 if completion.get("ok") else 0)
        s.add("ktdeploy_deep_ok", (name, "stream"), 1 if stream.get("ok") else 0)
        s.add("ktdeploy_deep_completion_seconds", (name,), completion.get("elapsed_s"))
        s.add("ktdeploy_deep_ttft_seconds", (name,), stream.get("ttft_s"))
        s.add("ktdeploy_deep_tokens_per_second", (name,), stream.get("tokens_per_s"))
        s.add("ktdeploy_deep_server_tokens_per_second", (name,), stream.get("server_tokens_per_s"))


def _ms(value) -> float | None:
    return None if value is None else value / 1000.0


def _format(s: _Samples) -> str:
    lines = []
    for family, samples in s.by_family.items():
        if not samples:
            continue
        kind, help_text, names = FAMILIES[family]
        lines.append(f"# HELP {family} {_escape_help(help_text)}")
        lines.append(f"# TYPE {family} {kind}")
        for labels, value in samples:
            pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in zip(names, labels))
            lines.append(f"{family}{{{pairs}}} {_value(value)}" if pairs else f"{family} {_value(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


# --- writing --------------------------------------------------------------------------------------


def check_target(path: str | os.PathLike) -> Path:
    """Refuse, before any host is probed, a metrics file whose directory is missing or not writable."""
    p = Path(path)
    where = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise BadInput(f"--metrics-file {p} is a directory", hint="name a file in it, e.g. ktdeploy.prom")
    if not where.is_dir():
        raise BadInput(f"--metrics-file: directory {where} does not exist",
                       hint="create it, or point at the textfile collector's directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise BadInput(f"--metrics-file: cannot write in {where}", hint="run as a user who may, or choose another directory")
    return p


def write_textfile(path: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    """Write text to path atomically: a hidden temporary file in the same directory, then rename.

    The temporary name does not end in .prom, so the textfile collector never reads it. The file is
    world-readable (mode 0644) because node-exporter usually runs as another user.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent if str(p.parent) else ".", prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise KtdeployError(f"cannot write the metrics file {p}: {exc.strerror or exc}") from None
        raise
