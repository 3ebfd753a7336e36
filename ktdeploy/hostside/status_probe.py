"""ktdeploy status probe: runs ON the target host, stdlib only, prints one JSON document.

Shipped by `ktdeploy status` as `python3 -S - CONFIG_JSON` in a single SSH round trip; the config carries
the host layout (ktdeploy.layout's probe_defaults, laid under the host's settings). It only reads:
stage records, the recorded plan, download state, the service manager's view of the services, and
HTTP endpoints on 127.0.0.1 (bounded timeouts). It never changes anything on the host.
Keep it compatible with Python 3.8 (hosts bring their own python3), and import at the top only
what every run needs: each import is paid on every host at every `status`.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

PROBE_VERSION = 1
MAX_RECORD_BYTES = 65536
SYSTEMD_PROPS = ("Id,LoadState,ActiveState,SubState,Result,NRestarts,MainPID,ExecMainStatus,UnitFileState,"
                 "ActiveEnterTimestampMonotonic,StartLimitBurst,StartLimitIntervalUSec")
START_LIMIT_LINE = "Start request repeated too quickly"


def main(argv):
    cfg = json.loads(argv[1]) if len(argv) > 1 else {}
    state_dir = cfg["state_dir"]
    out = {"probe_version": PROBE_VERSION, "host": host_info(), "errors": []}
    out["stages"] = read_stages(state_dir, out["errors"])
    out["plan"] = read_plan(state_dir, out["stages"], out["errors"])
    out["release"] = read_release(state_dir, out["errors"])
    out["removed"] = read_json(os.path.join(state_dir, "removed.json"), out["errors"])
    out["download"] = download_state(cfg, state_dir, out["errors"])
    declared = declared_services(out["stages"])
    specs = cfg.get("services") or declared or cfg["default_services"]
    out["services_declared"] = bool(cfg.get("services") or declared)
    manager = detect_manager(cfg.get("manager", "auto"))
    out["manager"] = manager
    for spec in specs.values():
        spec.setdefault("env_file", os.path.join(cfg["config_dir"], spec.get("unit", "") + ".env"))
    out["services"] = service_states(manager, specs, cfg, out["errors"])
    timeout = float(cfg.get("http_timeout", 3))
    api = specs.get("api")
    expected = cfg.get("model") or (api or {}).get("model")
    out["api"] = check_api(api, expected, timeout) if api else None
    webui = specs.get("webui")
    out["webui"] = check_health(webui, timeout) if webui else None
    out["deep"] = None
    if cfg.get("deep") and api and out["api"]["ok"]:  # nothing to measure while the API does not answer
        model = expected or first_model(out["api"])
        out["deep"] = deep_check(api, model, float(cfg.get("deep_timeout", 60)), int(cfg.get("stream_tokens", 16)),
                                 served_engine(out["stages"], out["release"]))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


# --- host, plan, stages ---------------------------------------------------------------------------


def host_info():
    return {
        "hostname": os.uname().nodename,
        "uid": os.getuid(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "time": time.time(),
    }


def read_json(path, errors):
    try:
        if os.path.getsize(path) > MAX_RECORD_BYTES:
            errors.append("%s is larger than %d bytes; not read" % (path, MAX_RECORD_BYTES))
            return None
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        errors.append("cannot read %s: %s" % (path, exc))
        return None


def read_plan(state_dir, stages, errors):
    """The plan's summary from plan.json, else the plan stage record's settings (scalars only)."""
    plan = read_json(os.path.join(state_dir, "plan.json"), errors)
    if not isinstance(plan, dict):
        plan = stage_settings(stages, "plan")
        if plan is None:
            return None
    if isinstance(plan.get("summary"), dict):
        return plan["summary"]
    return {k: v for k, v in plan.items() if isinstance(v, (str, int, float, bool))}


def read_release(state_dir, errors):
    """The release the API runs and the one kept before it (role release: releases/state.json)."""
    root = os.path.join(state_dir, "releases")
    state = read_json(os.path.join(root, "state.json"), errors)
    if not isinstance(state, dict) or not state.get("history"):
        return None
    history = [h for h in state["history"] if isinstance(h, str)]
    out = {"current": history[0], "previous": history[1] if len(history) > 1 else None,
           "rolled_back": bool(state.get("rolled_back"))}
    record = read_json(os.path.join(root, history[0], "release.json"), errors)
    if isinstance(record, dict):
        out["engine"] = record.get("engine")
        out["engine_key"] = record.get("engine_key")
        out["wheel"] = record.get("wheel") or None
    return out


def read_stages(state_dir, errors):
    stages = {}
    folder = os.path.join(state_dir, "stages")
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:  # no stage has run here yet
        names = []
    for file_name in names:
        path = os.path.join(folder, file_name)
        name = file_name[: -len(".json")]
        record = read_json(path, errors)
        if record is not None:
            stages[name] = {"record": record, "mtime": os.path.getmtime(path)}
    return stages


def stage_settings(stages, name):
    """The settings a stage record holds (a dict), or None."""
    record = (stages.get(name) or {}).get("record")
    settings = record.get("settings") if isinstance(record, dict) else None
    return settings if isinstance(settings, dict) else None


def served_engine(stages, release):
    """The engine behind the API: the current release's, else the serving stage record's."""
    if isinstance(release, dict) and release.get("engine"):
        return release["engine"]
    return (stage_settings(stages, "serve") or {}).get("engine")


def declared_services(stages):
    """Services named by the serving stage records (see docs/architecture.md, "Services")."""
    found = {}
    for stage in stages.values():
        record = stage["record"] if isinstance(stage["record"], dict) else {}
        settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
        services = record.get("services") or settings.get("services")
        if isinstance(services, dict):
            for role, spec in services.items():
                if isinstance(spec, dict) and spec.get("unit"):
                    found[role] = spec
    return found


# --- downloads ------------------------------------------------------------------------------------


def download_state(cfg, state_dir, errors):
    """Progress of every download, from the download state module the download role installed."""
    lib = cfg["download_lib_dir"]
    jobs = cfg.get("downloads_dir") or os.path.join(state_dir, "downloads")
    path = os.path.join(lib, "download_state.py")
    if not os.path.isfile(path):
        if not os.path.isdir(jobs):  # the model_download role never ran here (e.g. a packaged model)
            return {"state": "none", "why": "no download was set up on this host"}
        return {"state": "unknown", "why": "not known: %s is not installed" % path}
    try:
        import importlib.util
        import pathlib

        spec = importlib.util.spec_from_file_location("ktdeploy_download_state", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        downloads = module.status_all(pathlib.Path(jobs))
    except Exception as exc:  # a broken module must not hide the rest of the status
        errors.append("download state: %s: %s" % (type(exc).__name__, exc))
        return {"state": "unknown", "why": "download state module failed: %s" % exc}
    return {"state": overall_download_state(downloads), "downloads": downloads}


def overall_download_state(downloads):
    phases = {d.get("phase") for d in downloads}
    for state, among in (("failed", {"failed", "refused"}), ("running", {"planned", "downloading", "verifying"}),
                         ("stopped", {"interrupted", "unknown"})):
        if phases & among:
            return state
    return "done" if downloads else "none"


# --- services -------------------------------------------------------------------------------------


def detect_manager(wanted):
    if wanted in ("systemd", "supervisord", "none"):
        return wanted
    if os.path.isdir("/run/systemd/system"):
        return "systemd"
    if which("supervisorctl"):
        return "supervisord"
    return "none"


def which(name):
    for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def run(argv, timeout=10):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           universal_newlines=True)
        return p.returncode, p.stdout, p.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, "", str(exc)


def service_states(manager, specs, cfg, errors):
    roles = sorted(specs)
    units = [specs[r]["unit"] for r in roles]
    if manager == "systemd":
        states = systemd_states(units, errors)
    elif manager == "supervisord":
        states = supervisord_states(units, cfg, errors)
    else:
        states = {u: {"state": "unknown", "why": "no service manager (neither systemd nor supervisord)"} for u in units}
    out = []
    for role, unit in zip(roles, units):
        entry = {"role": role, "unit": unit, "port": specs[role].get("port")}
        if specs[role].get("log"):
            entry["log"] = specs[role]["log"]
        entry.update(states.get(unit, {"state": "unknown"}))
        out.append(entry)
    return out


def systemd_states(units, errors):
    if not units:
        return {}
    rc, stdout, stderr = run(["systemctl", "show", "--no-pager", "-p", SYSTEMD_PROPS, "--"] + [u + ".service" if "." not in u else u for u in units])
    if rc != 0:
        errors.append("systemctl show failed: %s" % stderr.strip())
        return {}
    states = {}
    for unit, props in zip(units, parse_systemctl_show(stdout)):
        states[unit] = entry = systemd_entry(props)
        if entry["state"] == "failed":  # Result keeps the crash's own result when the start limit stops it
            rc, journal, _ = run(["journalctl", "--no-pager", "-o", "cat", "-n", "20", "-u", props.get("Id") or unit,
                                  "_PID=1"])
            entry["start_limit_hit"] = rc == 0 and start_limit_hit(journal.splitlines())
            entry["start_limit"] = {"burst": to_int(props.get("StartLimitBurst")),
                                    "interval": props.get("StartLimitIntervalUSec")}
    return states


def start_limit_hit(lines):
    """systemd's last word on the unit (its own journal lines) is that it refused to start it again."""
    hit = False
    for line in lines:
        if START_LIMIT_LINE in line:
            hit = True
        elif line.startswith(("Starting ", "Started ")):
            hit = False
    return hit


def parse_systemctl_show(text):
    """`systemctl show` output for several units: blocks of KEY=VALUE lines separated by blank lines."""
    blocks, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        key, _, value = line.partition("=")
        cur[key] = value
    if cur:
        blocks.append(cur)
    return blocks


def systemd_entry(p):
    found = p.get("LoadState") not in ("not-found", None)
    entry = {
        "found": found,
        "state": p.get("ActiveState", "unknown") if found else "not-found",
        "sub": p.get("SubState"),
        "result": p.get("Result"),
        "restarts": to_int(p.get("NRestarts")),
        "pid": to_int(p.get("MainPID")) or None,
        "exit_status": to_int(p.get("ExecMainStatus")),
        "enabled": p.get("UnitFileState"),
    }
    since = to_int(p.get("ActiveEnterTimestampMonotonic"))
    if since and entry["state"] == "active":
        entry["active_for_s"] = round(max(0.0, time.monotonic() - since / 1e6), 1)
    return entry


def to_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


# supervisorctl state -> the systemd vocabulary status evaluates
SUPERVISOR_STATES = {
    "RUNNING": ("active", "running"),
    "STARTING": ("activating", "start"),
    "BACKOFF": ("activating", "auto-restart"),
    "STOPPING": ("deactivating", "stop"),
    "STOPPED": ("inactive", "dead"),
    "EXITED": ("failed", "exited"),
    "FATAL": ("failed", "fatal"),
    "UNKNOWN": ("unknown", "unknown"),
}


def supervisord_states(units, cfg, errors):
    conf = cfg["supervisor_conf"]
    argv = ["supervisorctl"] + (["-c", conf] if os.path.exists(conf) else []) + ["status"] + list(units)
    rc, stdout, stderr = run(argv)
    states = parse_supervisorctl_status(stdout)
    if not states and rc not in (0, 3):
        errors.append("supervisorctl status failed: %s" % (stdout.strip() or stderr.strip()))
    restarts = supervisor_restarts(supervisor_logfile(conf, cfg["supervisor_log"]), units, errors)
    out = {}
    for unit in units:
        if unit in states:
            entry = dict(states[unit])
            entry["restarts"] = restarts.get(unit, 0)
        else:
            entry = {"found": False, "state": "not-found" if states or rc in (0, 3) else "unknown"}
        out[unit] = entry
    return out


_SUP_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s*(?P<rest>.*)$")


def parse_supervisorctl_status(text):
    states = {}
    for line in text.splitlines():
        m = _SUP_LINE.match(line.strip())
        if not m or m.group("state") not in SUPERVISOR_STATES:
            continue
        name = m.group("name").split(":")[-1]
        state, sub = SUPERVISOR_STATES[m.group("state")]
        pid = re.search(r"pid (\d+)", m.group("rest"))
        states[name] = {"found": True, "state": state, "sub": sub, "raw": m.group("state"),
                        "detail": m.group("rest").strip(), "pid": int(pid.group(1)) if pid else None}
    return states


def supervisor_logfile(conf, default):
    import configparser  # here: its import is a fifth of the probe's CPU, and only supervisord hosts need it

    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read(conf)
        return parser.get("supervisord", "logfile", fallback=default).split(";")[0].strip()
    except (configparser.Error, OSError):
        return default


def supervisor_restarts(logfile, units, errors):
    """Unexpected exits of each program since supervisord last started (supervisord keeps no count)."""
    counts = dict.fromkeys(units, 0)
    try:
        with open(logfile, errors="replace") as f:
            lines = f.readlines()[-20000:]
    except FileNotFoundError:
        return counts
    except OSError as exc:
        errors.append("cannot read %s: %s" % (logfile, exc))
        return counts
    return count_unexpected_exits(lines, units)


def count_unexpected_exits(lines, units):
    counts = dict.fromkeys(units, 0)
    for line in lines:
        if "supervisord started with pid" in line:
            counts = dict.fromkeys(units, 0)
            continue
        m = re.search(r"exited: (\S+) \(.*not expected\)", line)
        if m and m.group(1) in counts:
            counts[m.group(1)] += 1
    return counts


# --- HTTP on 127.0.0.1 ----------------------------------------------------------------------------


# A small HTTP/1.1 client for the few requests the probe makes (GET/POST, one request per connection,
# Content-Length, chunked or close-delimited bodies). Importing http.client pulls in the email
# package and ssl: about 30 ms of CPU per probe run, a quarter of the probe's own cost
# (docs/benchmarks.md, "Status"). The same interface as http.client for what is used here.

MAX_LINE = 65536
MAX_HEADERS = 100


class HTTPException(Exception):
    """The server's reply is not the HTTP/1.x the probe understands."""


class HTTPConnection(object):
    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = self.fp = None

    def request(self, method, path, body=None, headers=None):
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        host = "[%s]" % self.host if ":" in self.host else self.host
        data = body.encode("utf-8") if isinstance(body, str) else body
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%s" % (host, self.port), "Accept-Encoding: identity",
                 "Connection: close"]
        lines += ["%s: %s" % item for item in (headers or {}).items()]
        if data is not None:
            lines.append("Content-Length: %d" % len(data))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b""))

    def getresponse(self):
        self.fp = self.sock.makefile("rb")
        return HTTPResponse(self.fp)

    def close(self):
        for f in (self.fp, self.sock):
            if f is not None:
                f.close()
        self.sock = self.fp = None


class HTTPResponse(object):
    """status, headers (lower-case names), read(amt) and iteration over the body's lines."""

    def __init__(self, fp):
        self.fp = fp
        parts = self._line().decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPException("not an HTTP/1.x reply: %r" % " ".join(parts)[:100])
        self.status = int(parts[1])
        self.headers = {}
        while True:
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            if len(self.headers) >= MAX_HEADERS:
                raise HTTPException("more than %d headers" % MAX_HEADERS)
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise HTTPException("bad header line %r" % line[:100])
            self.headers[name.strip().lower()] = value.strip()
        length = self.headers.get("content-length")
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._blocks = self._chunked()
        elif length is not None:
            if not length.isdigit():
                raise HTTPException("bad Content-Length %r" % length)
            self._blocks = self._sized(int(length))
        else:
            self._blocks = self._until_close()
        self._buf = b""

    def _line(self):
        line = self.fp.readline(MAX_LINE + 1)
        if not line:
            raise HTTPException("connection closed before the reply was complete")
        if len(line) > MAX_LINE:
            raise HTTPException("line longer than %d bytes" % MAX_LINE)
        return line

    def _sized(self, left):
        while left > 0:
            block = self.fp.read1(min(left, 65536)) if hasattr(self.fp, "read1") else self.fp.read(min(left, 65536))
            if not block:
                raise HTTPException("connection closed %d bytes before the end of the body" % left)
            left -= len(block)
            yield block

    def _until_close(self):
        while True:
            block = self.fp.read1(65536) if hasattr(self.fp, "read1") else self.fp.read(65536)
            if not block:
                return
            yield block

    def _chunked(self):
        while True:
            size = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size, 16)
            except ValueError:
                raise HTTPException("bad chunk size %r" % size[:20])
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers
                    pass
                return
            for block in self._sized(size):
                yield block
            self._line()  # the CRLF after the chunk

    def read(self, amt):
        """Up to amt bytes of the body (fewer only at its end)."""
        while len(self._buf) < amt:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buf += block
        data, self._buf = self._buf[:amt], self._buf[amt:]
        return data

    def __iter__(self):
        """The body's lines (each with its b"\\n"), as they arrive."""
        while True:
            cut = self._buf.find(b"\n")
            if cut >= 0:
                line, self._buf = self._buf[: cut + 1], self._buf[cut + 1:]
                yield line
                continue
            block = next(self._blocks, None)
            if block is None:
                if self._buf:
                    line, self._buf = self._buf, b""
                    yield line
                return
            self._buf += block


LOOPBACK_ALIASES = ("", "0.0.0.0", "::", "127.0.0.1", "localhost", None)


def address(spec):
    """Where to reach a service from the host itself: loopback unless it binds one address only."""
    host = spec.get("host")
    return "127.0.0.1" if host in LOOPBACK_ALIASES else host.strip("[]")


def api_key(spec):
    """The API key from the service's environment file (read as root; it never leaves the host)."""
    path = spec.get("env_file")
    if not path:
        return None
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key == "KTDEPLOY_API_KEY":
                    return value.strip().strip("'\"") or None
    except OSError:
        return None
    return None


def http_json(spec, method, path, timeout, body=None):
    """(status, parsed JSON or text, elapsed seconds) or raises OSError/HTTPException."""
    t0 = time.monotonic()
    conn = HTTPConnection(address(spec), spec.get("port"), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json", "Authorization": "Bearer %s" % (api_key(spec) or "none")}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(1 << 20).decode("utf-8", "replace")
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw[:500]
        return resp.status, data, time.monotonic() - t0
    finally:
        conn.close()


def check_api(spec, expected, timeout):
    port = spec.get("port")
    out = {"address": address(spec), "port": port, "expected_model": expected, "ok": False, "models": [],
           "listed": False}
    try:
        status, data, elapsed = http_json(spec, "GET", "/v1/models", timeout)
    except (OSError, HTTPException) as exc:
        out["error"] = describe_http_error(exc)
        return out
    out["status"], out["elapsed_ms"] = status, round(elapsed * 1000, 1)
    if status != 200:
        out["error"] = "HTTP %d: %s" % (status, str(data)[:200])
        return out
    # OpenAI's {"data": [...]}; KTransformers 0.2.1's unpatched server answers a bare list instead
    items = (data.get("data") or []) if isinstance(data, dict) else (data if isinstance(data, list) else [])
    models = [str(m.get("id")) for m in items if isinstance(m, dict)]
    out["models"] = models
    out["bare_list"] = isinstance(data, list)
    out["listed"] = (expected in models) if expected else bool(models)
    out["ok"] = True
    return out


def check_health(spec, timeout):
    port = spec.get("port")
    out = {"port": port, "ok": False}
    try:
        status, data, elapsed = http_json(spec, "GET", spec.get("health") or "/health", timeout)
    except (OSError, HTTPException) as exc:
        out["error"] = describe_http_error(exc)
        return out
    out["status"], out["elapsed_ms"] = status, round(elapsed * 1000, 1)
    out["ok"] = status == 200
    if not out["ok"]:
        out["error"] = "HTTP %d: %s" % (status, str(data)[:200])
    return out


def describe_http_error(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on the port)"
    if isinstance(exc, socket.timeout):
        return "timed out"
    return "%s: %s" % (type(exc).__name__, exc)


def first_model(api):
    models = (api or {}).get("models") or []
    return models[0] if models else None


# Engines whose OpenAI server ignores max_tokens: KTransformers 0.2.x's ChatCompletionCreate has no
# such field, so a request runs to the server's --max_new_tokens (2048 by default: minutes with R1).
# The probe streams its requests to them and hangs up after the tokens it wants; the server stops
# generating when it sees the client gone.
IGNORES_MAX_TOKENS = ("ktransformers",)
# With --force_think these servers stream "<think>\n" before the prompt's prefill: not a token of the model,
# so it neither starts the TTFT clock nor counts as a token.
FORCED_PREFIX = {"ktransformers": "<think>"}


def deep_check(spec, model, timeout, stream_tokens, engine=None):
    out = {"model": model}
    if engine in IGNORES_MAX_TOKENS:
        prefix = FORCED_PREFIX.get(engine)
        first = stream_check(spec, model, timeout, 1, prompt="ping", hang_up=True, forced_prefix=prefix)
        out["completion"] = {"ok": first.get("ok", False), "first_token_only": True, "status": first.get("status"),
                             "elapsed_s": first.get("ttft_s")}
        if not first.get("ok"):
            out["completion"]["error"] = first.get("error") or "no token"
        if first.get("forced_prefix"):
            out["completion"]["forced_prefix"] = True
        out["stream"] = stream_check(spec, model, timeout, stream_tokens, hang_up=True, forced_prefix=prefix)
        if not out["stream"].get("usage_tokens"):
            # its streamer sends text at word ends, so a chunk may hold several tokens: the count is of chunks
            out["stream"]["counts"] = "chunks"
        return out
    msgs = [{"role": "user", "content": "ping"}]
    body = {"model": model, "messages": msgs, "max_tokens": 1, "temperature": 0, "stream": False}
    try:
        status, data, elapsed = http_json(spec, "POST", "/v1/chat/completions", timeout, body)
        finish = None
        if isinstance(data, dict) and data.get("choices"):
            finish = data["choices"][0].get("finish_reason")
        out["completion"] = {"status": status, "finish_reason": finish, "elapsed_s": round(elapsed, 3),
                             "ok": status == 200 and finish in ("length", "stop")}
        if status != 200:
            out["completion"]["error"] = "HTTP %d: %s" % (status, str(data)[:200])
    except (OSError, HTTPException) as exc:
        out["completion"] = {"ok": False, "error": describe_http_error(exc)}
    out["stream"] = stream_check(spec, model, timeout, stream_tokens)
    return out


def stream_check(spec, model, timeout, max_tokens, prompt="Count from one to ten.", hang_up=False, forced_prefix=None):
    """Time to first token and decode tokens/s of one short streamed request, measured here.

    hang_up: close the connection after max_tokens tokens instead of waiting for the server's end.
    forced_prefix: text the server sends first on its own (FORCED_PREFIX), left out of the count."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}
    out = {"ok": False}
    conn = HTTPConnection(address(spec), spec.get("port"), timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                              "Authorization": "Bearer %s" % (api_key(spec) or "none")})
        resp = conn.getresponse()
        out["status"] = resp.status
        if resp.status != 200:
            out["error"] = "HTTP %d: %s" % (resp.status, resp.read(500).decode("utf-8", "replace"))
            return out
        out.update(read_sse(resp, t0, time.monotonic() + timeout, max_tokens if hang_up else None, forced_prefix))
    except (OSError, HTTPException) as exc:
        out["error"] = describe_http_error(exc)
    finally:
        conn.close()
    return out


def read_sse(lines, t0, deadline, stop_after=None, forced_prefix=None):
    """Read an OpenAI chat SSE stream (iterable of byte lines) until [DONE], stop_after tokens, or the deadline.

    A first delta that is forced_prefix (whitespace aside) is the server's, not the model's: not counted."""
    t_first = t_last = None
    deltas, usage, timings, done, stopped, prefixed = 0, None, None, False, False, False
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip()
        if time.monotonic() > deadline:
            return {"error": "stream did not finish in time", "ok": False}
        if not line.startswith("data:"):
            continue  # comments (":"), event names, blank separators
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content")
            if text and forced_prefix and not deltas and not prefixed and text.strip() == forced_prefix:
                prefixed = True
            elif text:
                now = time.monotonic()
                t_first = t_first if t_first is not None else now
                t_last = now
                deltas += 1
        if stop_after and deltas >= stop_after:
            stopped = True
            break
    out = {"ok": (done or stopped) and t_first is not None, "content_deltas": deltas}
    if prefixed:
        out["forced_prefix"] = True
    if stopped:
        out["stopped_after"] = deltas
    elif not done:
        out["error"] = "stream ended without [DONE]"
    elif t_first is None:
        out["error"] = "stream carried no tokens"
    tokens = (usage or {}).get("completion_tokens") or deltas
    out["completion_tokens"] = tokens
    if (usage or {}).get("completion_tokens"):
        out["usage_tokens"] = True
    if t_first is not None:
        out["ttft_s"] = round(t_first - t0, 4)
        if tokens > 1 and t_last > t_first:
            out["tokens_per_s"] = round((tokens - 1) / (t_last - t_first), 2)
    if timings and timings.get("predicted_per_second"):
        out["server_tokens_per_s"] = round(float(timings["predicted_per_second"]), 2)
    return out


if __name__ == "__main__":
    main(sys.argv)
