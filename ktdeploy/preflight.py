"""Preflight: gather each host's facts, plan it, and refuse plans that cannot work before anything
changes. `ktdeploy preflight` shows the plans; `ktdeploy provision` calls `preflight_or_raise`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from ktdeploy import exitcodes, facts, gguf_check, remote
from ktdeploy.errors import KtdeployError, PlanProblem, Unreachable
from ktdeploy.plan import DEFAULT_MODEL_DIR, Plan, make_plan
from ktdeploy.targets import Target


@dataclass(frozen=True)
class PlanOptions:
    """What the user chose; everything else the plan derives from the host."""

    variant: str | None = None
    engine: str = "ktransformers"
    kt_version: str | None = None
    port: int | None = None
    model_dir: str = DEFAULT_MODEL_DIR
    deep: bool = False
    python_env: str = ""  # interpreter of the env KTransformers will use, if known

    def plan(self, f: facts.Facts, host: str | None = None) -> Plan:
        return make_plan(f, self.variant, engine=self.engine, kt_version=self.kt_version, port=self.port, host=host,
                         model_dir=self.model_dir)


def gather_raw(
    target: Target, model_dir: str = DEFAULT_MODEL_DIR, python_env: str = ""
) -> tuple[dict[str, str], dict[str, str]]:
    """Run the batched facts script on target (one SSH round trip): ({file: content}, {file: error})."""
    rc, out, err = remote.run_script(target, facts.facts_script(model_dir, python_env), timeout=120)
    if rc != 0:
        raise KtdeployError(f"the facts script failed on {target.name} (exit {rc}): {err.strip()[:300]}")
    return facts.parse_stream(out)


def plan_host(target: Target, options: PlanOptions) -> Plan:
    """Facts from target, the plan made from them, and with options.deep the GGUF check run there."""
    raw, errors = gather_raw(target, options.model_dir, options.python_env)
    plan = options.plan(facts.parse(raw, errors), host=target.name)
    if options.deep:
        gguf_dir = plan.variant.gguf_dir(options.model_dir)
        rc, out, err = remote.run_script(target, gguf_check.remote_script(gguf_dir), timeout=300)
        if rc != 0:
            raise KtdeployError(
                f"the GGUF header check failed on {target.name} (exit {rc}): {err.strip()[-300:]}",
                hint="the host needs python3 (Ansible needs it too)",
            )
        add_gguf_findings(plan, json.loads(out), gguf_dir)
    return plan


def add_gguf_findings(plan: Plan, headers: dict, gguf_dir: str) -> None:
    if not headers.get("exists"):
        plan.warnings.append(gguf_check.Finding("gguf_absent", f"no GGUF files at {gguf_dir} yet: nothing to check"))
        return
    plan.problems.extend(
        gguf_check.check(headers, plan.variant.name, engine=plan.engine, kt_version=plan.kt_version)
    )


def preflight_or_raise(
    targets: list[Target],
    options: PlanOptions | Callable[[Target], PlanOptions] | None = None,
    *,
    force: bool | Callable[[Target], bool] = False,
) -> dict[str, Plan]:
    """Plan every target; raise before anything is changed when a host cannot be planned.

    Raises Unreachable (exit 3) when a host cannot be reached, KtdeployError (exit 1) when the facts
    cannot be gathered, PlanProblem (exit 4) when a plan has problems and force is False. Returns
    {target name: Plan} otherwise (with force, plans that have problems are returned too).
    options and force may be given per target, as functions of the target (e.g. from its hostvars).
    """
    options_of = options if callable(options) else (lambda _t, o=options or PlanOptions(): o)
    forced = force if callable(force) else (lambda _t, f=force: f)
    results = remote.on_hosts(targets, lambda t: plan_host(t, options_of(t)))
    down = [r for r in results if r.unreachable]
    if down:
        raise Unreachable("; ".join(f"{r.target.name}: {r.error}" for r in down))
    failed = [r for r in results if not r.ok]
    if failed:
        raise KtdeployError("; ".join(f"{r.target.name}: {r.error}" for r in failed))
    plans = {r.target.name: r.value for r in results}
    bad = {r.target.name: r.value for r in results if r.value.problems and not forced(r.target)}
    if bad:
        lines = [f"{name}: {pr.message}" for name, p in bad.items() for pr in p.problems]
        raise PlanProblem(
            "preflight found problems; nothing was changed:\n  " + "\n  ".join(lines),
            hint="fix them, or pass --force to go ahead anyway",
        )
    return plans


def exit_code(results: list[remote.HostResult], force: bool) -> int:
    """`ktdeploy preflight`'s exit code: unreachable, else failed, else plan problems (unless forced)."""
    if any(r.unreachable for r in results):
        return exitcodes.UNREACHABLE
    if any(not r.ok for r in results):
        return exitcodes.FAILED
    if not force and any(r.value.problems for r in results):
        return exitcodes.PLAN_PROBLEM
    return exitcodes.OK
