"""`ktdeploy status`: run the host-side probe on every host in parallel and judge what it found.

The probe (ktdeploy/hostside/status_probe.py) gathers facts in one SSH round trip; this module turns
them into checks with a level, a verdict per host and one exit code for the run. The rules and the
JSON schema are documented in docs/status.md (the schema file is ktdeploy/schemas/status.json).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files

from ktdeploy import exitcodes, layout
from ktdeploy.remote import HostResult, on_hosts, run_script
from ktdeploy.targets import Target

SCHEMA = "ktdeploy-status/1"
STATE_DIR = layout.STATE_DIR

# verdicts from best to worst; a host's verdict is its worst check, a run's exit code its worst host
LEVELS = ("ok", "degraded", "failed", "unreachable")
EXIT_CODES = {
    "ok": exitcodes.OK,
    "degraded": exitcodes.NOT_READY,
    "failed": exitcodes.FAILED,
    "unreachable": exitcodes.UNREACHABLE,
}
_HEREDOC_END = "KTDEPLOY_STATUS_PROBE_END"


@dataclass
class Check:
    name: str
    level: str
    detail: str


@dataclass
class HostStatus:
    name: str
    address: str
    verdict: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0
    probe: dict | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def summary(self) -> str:
        """The checks that made the verdict, in one line (or 'all checks passed')."""
        if self.error:
            return self.error
        removed = [c for c in self.checks if c.name == "removed"]
        if self.verdict == "ok" and removed:
            return removed[0].detail
        worst = [c for c in self.checks if c.level == self.verdict and c.level != "ok"]
        return "; ".join(f"{c.name}: {c.detail}" for c in worst) or "all checks passed"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": [asdict(c) for c in self.checks],
            "probe": self.probe,
        }


# --- running the probe ----------------------------------------------------------------------------


# probe setting <- the role variable it follows (resolved for the host as the role resolves it)
_PROBE_VARS = (("state_dir", "base_state_dir"), ("download_lib_dir", "model_download_lib_dir"),
               ("downloads_dir", "model_download_jobs_dir"), ("config_dir", "serve_config_dir"),
               ("log_dir", "serve_log_dir"))


def probe_config(target: Target, *, deep: bool = False, model: str | None = None) -> dict:
    from ktdeploy import rolevars

    v = rolevars.host_vars(target.name, target.hostvars)
    return probe_config_from({var: v[var] for _, var in _PROBE_VARS}, deep=deep, model=model)


def probe_config_from(values: dict, *, deep: bool = False, model: str | None = None) -> dict:
    """The probe's configuration from a host's resolved role variables (_PROBE_VARS: from rolevars, or
    a play's for the rollout gate); one left empty takes ktdeploy.layout's default. Complete: the
    gate hands it to the probe as it is."""
    cfg: dict = {**layout.probe_defaults(), **{key: str(values[var]) for key, var in _PROBE_VARS if values.get(var)}}
    cfg["deep"] = deep
    if model:
        cfg["model"] = model
    return cfg


def probe_script(cfg: dict) -> str:
    """A shell script that runs the probe with python3 (through sudo -n when we are not root and may).

    cfg is laid over ktdeploy.layout's defaults: the probe runs on the host without ktdeploy."""
    cfg = {**layout.probe_defaults(), **cfg}
    probe = files("ktdeploy.hostside").joinpath("status_probe.py").read_text()
    assert _HEREDOC_END not in probe
    return "\n".join(
        [
            f"cfg={shlex.quote(json.dumps(cfg))}",
            "command -v python3 >/dev/null 2>&1 || { echo 'python3 not found on the host' >&2; exit 127; }",
            # -S: the probe needs the standard library alone, and skipping site.py saves a few ms per host
            as_root_if_possible(f"python3 -S - \"$cfg\" <<'{_HEREDOC_END}'"),
            probe.rstrip("\n"),
            _HEREDOC_END,
            "",
        ]
    )


def as_root_if_possible(cmd: str) -> str:
    """cmd run as root when we are root or may sudo without a password, else as the login user.

    Reading the journal and supervisord's socket needs root; the rest of status works without it.
    """
    return f'if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then set -- sudo -n; else set --; fi\nexec "$@" {cmd}'


def run_probe(target: Target, cfg: dict, *, connect_timeout: float = 5, timeout: float = 30) -> dict:
    rc, out, err = run_script(target, probe_script(cfg), timeout=timeout, connect_timeout=connect_timeout)
    if rc == 127:
        raise ProbeError("python3 not found on the host; the base role installs it (or install python3)")
    try:
        return json.loads(out)
    except ValueError:
        tail = (err or out).strip().splitlines()[-3:]
        raise ProbeError(f"status probe failed (exit {rc}): {' | '.join(tail) or 'no output'}") from None


class ProbeError(Exception):
    """The probe ran but gave no usable answer."""


def collect(
    targets: list[Target],
    *,
    deep: bool = False,
    model: str | None = None,
    connect_timeout: float = 5,
) -> list[HostStatus]:
    """Probe every target in parallel and judge each; one bad host never hides the others."""
    timeout = 150 if deep else 30
    # worked out here, before the threads: each host's first resolve would parse the role defaults anew
    configs = {id(t): probe_config(t, deep=deep, model=model) for t in targets}

    def one(t: Target) -> tuple[dict, float]:
        t0 = time.monotonic()
        probe = run_probe(t, configs[id(t)], connect_timeout=connect_timeout, timeout=timeout)
        return probe, time.monotonic() - t0

    return [judge(r) for r in on_hosts(targets, one)]


def probe_one(target: Target) -> dict:
    """One probe round trip to one host (its service manager, services, API: for logs and chat).

    Raises Unreachable (exit 3) when the host cannot be reached, KtdeployError when the probe fails.
    """
    from ktdeploy.errors import KtdeployError, Unreachable

    (s,) = collect([target])
    if s.verdict == "unreachable":
        raise Unreachable(f"{target.name}: {s.error}")
    if s.probe is None:
        raise KtdeployError(f"{target.name}: {s.error}")
    return s.probe


def judge_output(name: str, stdout: str, stderr: str = "") -> HostStatus:
    """A verdict from the probe's printed output (the rollout gate runs the probe through Ansible)."""
    try:
        probe = json.loads(stdout)
    except ValueError:
        tail = (stderr or stdout or "").strip().splitlines()[-3:]
        return HostStatus(name, name, "failed", error=f"status probe failed: {' | '.join(tail) or 'no output'}")
    checks = evaluate(probe)
    return HostStatus(name, name, verdict(checks), checks=checks, probe=probe)


def judge(result: HostResult) -> HostStatus:
    t = result.target
    if result.unreachable:
        return HostStatus(t.name, t.host, "unreachable", error=result.error)
    if not result.ok:
        return HostStatus(t.name, t.host, "failed", error=result.error)
    probe, elapsed = result.value
    checks = evaluate(probe)
    return HostStatus(t.name, t.host, verdict(checks), checks=checks, elapsed_s=elapsed, probe=probe)


# --- judging --------------------------------------------------------------------------------------


def worst(levels) -> str:
    return max(levels, key=LEVELS.index, default="ok")


def verdict(checks: list[Check]) -> str:
    return worst(c.level for c in checks)


def exit_code(statuses: list[HostStatus]) -> int:
    return EXIT_CODES[worst(s.verdict for s in statuses)]


def evaluate(probe: dict) -> list[Check]:
    """The checks for one host's probe output (pure: tested from recorded probe outputs)."""
    checks = [Check("probe", "degraded", e) for e in probe.get("errors") or []]
    if _clean(probe):
        return checks + [_removed_check(probe["removed"])] + [
            _service_check(s["role"], s, False) for s in probe.get("services") or [] if s.get("found")]
    checks.append(_stages_check(probe.get("stages") or {}))
    release = _release_check(probe.get("release"))
    if release:
        checks.append(release)
    attention = _attention_check(probe.get("stages") or {})
    if attention:
        checks.append(attention)
    download = _download_check(probe.get("download") or {})
    if download:
        checks.append(download)
    declared = bool(probe.get("services_declared"))
    services = {s["role"]: s for s in probe.get("services") or []}
    for role, svc in sorted(services.items()):
        checks.append(_service_check(role, svc, declared))
    for role, key in (("api", "api"), ("webui", "webui")):
        svc = services.get(role)
        if probe.get(key) is not None and _deployed(svc, declared):
            checks.append(_endpoint_check(role, probe[key], svc))
    if probe.get("deep"):
        checks.extend(_deep_checks(probe["deep"]))
    return checks


def _deployed(svc: dict | None, declared: bool) -> bool:
    return svc is not None and (declared or svc.get("state") != "not-found")


def _stages_check(stages: dict) -> Check:
    if not stages:
        return Check("stages", "ok", "no stage records yet")
    return Check("stages", "ok", "completed: " + ", ".join(sorted(stages)))


def _clean(probe: dict) -> bool:
    """`ktdeploy remove` left its marker and nothing was provisioned since (no stage records)."""
    removed = probe.get("removed")
    return isinstance(removed, dict) and bool(removed.get("removed")) and not probe.get("stages")


def _removed_check(removed: dict) -> Check:
    kept = []
    for item in removed.get("kept") or []:
        if isinstance(item, dict) and item.get("what"):
            where = item.get("path") or item.get("name")
            kept.append(f"{item['what']} {where}" if where else item["what"])
    return Check("removed", "ok", "clean: ktdeploy was removed" + (f"; kept: {', '.join(kept)}" if kept else ""))


def _release_check(release: dict | None) -> Check | None:
    """The release the API runs (role release), and whether one is kept to roll back to."""
    if not isinstance(release, dict) or not release.get("current"):
        return None
    key = str(release.get("engine_key") or "")
    build = f" ({release['engine']}{' ' + key[:40] if key else ''})" if release.get("engine") else ""
    before = f"; {release['previous']} kept to roll back to" if release.get("previous") else "; none kept before it"
    back = " (rolled back)" if release.get("rolled_back") else ""
    return Check("release", "ok", f"{release['current']}{build}{back}{before}")


def _attention_check(stages: dict) -> Check | None:
    """The flash-attn route the torch role took (ktdeploy.attention_route), from its stage record."""
    settings = ((stages.get("torch") or {}).get("record") or {}).get("settings") or {}
    route = settings.get("flash_attn")
    if not isinstance(route, dict) or not route.get("route"):
        return None
    wheel = f" {route['wheel']}" if route.get("wheel") else ""
    return Check("flash_attn", "ok", f"{route['route']}{wheel}: {route.get('reason', '')}".rstrip(": "))


def _service_check(role: str, svc: dict, declared: bool) -> Check:
    name = f"service:{role}"
    state, sub, unit = svc.get("state"), svc.get("sub"), svc.get("unit")
    restarts = svc.get("restarts") or 0
    again = f", restarted {restarts}x" if restarts else ""
    if state == "not-found":
        if declared:
            return Check(name, "failed", f"{unit} is missing although the serving stage recorded it")
        return Check(name, "degraded", f"{unit} not deployed yet")
    if state in ("active", "reloading"):
        pid = f", pid {svc['pid']}" if svc.get("pid") else ""
        return Check(name, "ok", f"{unit} {state} ({sub}){pid}{again}")
    if state == "activating":
        if sub == "auto-restart":
            return Check(name, "degraded", f"{unit} crashed and is waiting to restart{again}")
        return Check(name, "degraded", f"{unit} starting (waiting for readiness; the model may still be loading){again}")
    if state == "failed" and svc.get("start_limit_hit"):
        limit = svc.get("start_limit") or {}
        within = f" ({limit['burst']} starts within {limit['interval']})" if limit.get("burst") else ""
        return Check(name, "failed", f"{unit} hit its start limit{within}: systemd no longer restarts it (last result "
                     f"{svc.get('result')}{again}); fix the cause (`ktdeploy logs HOST {role}`), then re-run provision, "
                     "which resets and starts it")
    if state == "failed":
        why = f"result {svc.get('result')}" if svc.get("result") else svc.get("detail") or sub
        return Check(name, "failed", f"{unit} failed ({why}{again}); see `ktdeploy logs HOST {role}`")
    if state in ("inactive", "deactivating"):
        return Check(name, "failed", f"{unit} is stopped ({sub}); start it or re-run provision")
    return Check(name, "degraded", f"{unit} state unknown: {svc.get('why') or state}")


def _endpoint_check(role: str, result: dict, svc: dict | None) -> Check:
    name = "api" if role == "api" else "webui"
    where = f"127.0.0.1:{result.get('port')}"
    if result.get("ok"):
        took = f" in {result['elapsed_ms']:.0f} ms" if result.get("elapsed_ms") is not None else ""
        if role != "api":
            return Check(name, "ok", f"healthy on {where}{took}")
        expected = result.get("expected_model")
        if not result.get("listed"):
            listed = ", ".join(result.get("models") or []) or "no model"
            want = expected or "a model"
            hint = ("; this server's /v1/models is KTransformers 0.2.1's fixed list, which names no model: rebuild "
                    "with ktdeploy's patch series (patch 0004) or use v0.2.3post2") if result.get("bare_list") else ""
            return Check(name, "failed", f"/v1/models lists {listed}, not {want}{hint}")
        return Check(name, "ok", f"ready on {where}: {expected or result['models'][0]}{took}")
    error = result.get("error") or "no answer"
    if result.get("status") is not None:
        return Check(name, "failed", f"{where} answered {error}")
    state = (svc or {}).get("state")
    if state in ("failed", "inactive", "deactivating"):  # nothing is starting: not "still loading"
        what = "failed" if state == "failed" else "stopped"
        return Check(name, "failed", f"down on {where} ({svc.get('unit')} is {what}; {error})")
    if state == "activating" and svc.get("sub") == "auto-restart":
        return Check(name, "degraded", f"not answering on {where} ({svc.get('unit')} crashed and waits to restart)")
    return Check(name, "degraded", f"not answering on {where} ({error}); still loading?")


def _deep_checks(deep: dict) -> list[Check]:
    out = []
    comp = deep.get("completion") or {}
    if comp.get("ok") and comp.get("first_token_only"):
        after = ", after the server's own <think>" if comp.get("forced_prefix") else ""
        out.append(Check("completion", "ok", f"first token in {comp.get('elapsed_s')} s (streamed and stopped there{after}: "
                                             "this engine ignores max_tokens)"))
    elif comp.get("ok"):
        out.append(Check("completion", "ok", f"1-token completion in {comp.get('elapsed_s')} s ({comp.get('finish_reason')})"))
    else:
        why = comp.get("error") or f"finish_reason {comp.get('finish_reason')!r}"
        out.append(Check("completion", "failed", f"1-token completion failed: {why}"))
    stream = deep.get("stream") or {}
    if stream.get("ok"):
        chunks = stream.get("counts") == "chunks"
        rate = f", {stream['tokens_per_s']} {'chunks' if chunks else 'tok'}/s" if stream.get("tokens_per_s") else ""
        stopped = ", stopped there" if stream.get("stopped_after") else ""
        count = f"{stream.get('completion_tokens')} {'streamed chunks, no token count sent' if chunks else 'tokens'}"
        out.append(Check("stream", "ok", f"TTFT {stream.get('ttft_s')} s{rate} ({count}{stopped})"))
    else:
        out.append(Check("stream", "failed", f"streamed request failed: {stream.get('error') or 'no answer'}"))
    return out


def _download_check(dl: dict) -> Check | None:
    state = dl.get("state")
    if state == "unknown":
        return Check("download", "ok", dl.get("why") or "download progress unknown")
    if state in (None, "none"):
        return None
    text = "; ".join(_download_line(d) for d in dl.get("downloads") or []) or state
    if state == "failed":
        return Check("download", "failed", text)
    if state == "stopped":
        return Check("download", "degraded", text + " (re-run `ktdeploy download` to resume)")
    if state == "running":
        return Check("download", "degraded", text)
    return Check("download", "ok", text)


def _download_line(d: dict) -> str:
    """One download as the download state module reports it (docs/architecture.md, "Download status")."""
    line = f"{d.get('name', 'download')} {d.get('phase', '')}".strip()
    done, total = d.get("done_bytes"), d.get("total_bytes")
    if d.get("percent") is not None and total and d.get("phase") != "refused":  # refused: nothing fetched
        line += f" {d['percent']:.1f}% ({_gb(done or 0)}/{_gb(total)} GB)"
    if d.get("rate_bps"):
        line += f", {d['rate_bps'] / 1e6:.1f} MB/s"
    if d.get("eta_s"):
        line += f", ETA {int(d['eta_s'])} s"
    if d.get("error"):
        line += f": {d['error']}"
    return line


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def plain_lines(statuses: list[HostStatus]) -> list[str]:
    """The status as plain lines (pipes, CI logs, `--plain`): a line per host with its verdict, then
    one per check, so nothing wraps into a table cell."""
    lines = []
    for s in statuses:
        name = s.name if s.address in (s.name, "", None) else f"{s.name} ({s.address})"
        lines.append(f"{name}: {s.verdict}" + (f": {s.error}" if s.error else ""))
        lines += [f"  {c.name:<14} {c.level:<9} {c.detail}" for c in s.checks]
    return lines


def report(statuses: list[HostStatus], *, deep: bool = False) -> dict:
    """The `--json` document (schema: ktdeploy/schemas/status.json, documented in docs/status.md)."""
    return {
        "schema": SCHEMA,
        "verdict": worst(s.verdict for s in statuses),
        "exit_code": exit_code(statuses),
        "deep": deep,
        "hosts": [s.to_json() for s in statuses],
    }
