"""`ktdeploy facts` and `ktdeploy preflight`: gather host facts, show the plan, refuse plans that cannot work.

`preflight_or_raise` is the entry point for commands that change hosts (`ktdeploy provision`): it runs
the same preflight and raises before anything is changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from ktdeploy import catalog, exitcodes, facts, gguf_check, remote
from ktdeploy.errors import BadInput, KtdeployError, PlanProblem, Unreachable
from ktdeploy.plan import DEFAULT_MODEL_DIR, DEFAULT_PORT, ENGINES, GIB, Plan, make_plan
from ktdeploy.targets import Target, parse_target, parse_targets, targets_from_inventory


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
        _add_gguf_findings(plan, json.loads(out), gguf_dir)
    return plan


def _add_gguf_findings(plan: Plan, headers: dict, gguf_dir: str) -> None:
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


def _targets(hosts: tuple[str, ...], inventory: str | None) -> list[Target]:
    if inventory:
        return targets_from_inventory(inventory, limit=list(hosts) or None)
    return parse_targets(list(hosts))


@click.command("facts")
@click.argument("host")
@click.option("-i", "--inventory", type=click.Path(), help="inventory file or directory holding HOST")
@click.option("--save", "save_dir", required=True, type=click.Path(file_okay=False), help="directory for the raw files")
@click.option("--model-dir", default=DEFAULT_MODEL_DIR, show_default=True, help="where the models live on the host")
def facts_cmd(host: str, inventory: str | None, save_dir: str, model_dir: str) -> None:
    """Gather HOST's raw facts in one SSH round trip and save them in DIR (for `preflight --facts`)."""
    (target,) = _targets((host,), inventory)
    (result,) = remote.on_hosts([target], lambda t: gather_raw(t, model_dir))
    if result.unreachable:
        raise Unreachable(f"{target.name}: {result.error}")
    if not result.ok:
        raise KtdeployError(f"{target.name}: {result.error}")
    raw, errors = result.value
    try:
        written = facts.save_dir(raw, save_dir)
    except OSError as exc:
        raise BadInput(f"cannot write the facts to {save_dir}: {exc.strerror}", hint="choose a writable directory") from None
    click.echo(f"saved {len(written)} files of {target.name} in {save_dir}: {', '.join(p.name for p in written)}")
    for name, why in errors.items():
        click.echo(f"  {name} not saved: {why}", err=True)


@click.command("preflight")
@click.argument("hosts", nargs=-1)
@click.option("-i", "--inventory", type=click.Path(), help="inventory file or directory (HOSTS then limit it)")
@click.option("--facts", "facts_dir", type=click.Path(file_okay=False), help="plan from a saved facts directory")
@click.option("--model", "variant", type=click.Choice(catalog.all_names()),
              help="GGUF variant, a packaged model for llama.cpp, or a generated tiny model "
                   f"[default: {catalog.default_variant()}]")
@click.option("--engine", type=click.Choice(ENGINES), default="ktransformers", show_default=True)
@click.option("--kt-version", help=f"KTransformers tag [default: {catalog.default_kt_version()}]")
@click.option("--model-dir", default=DEFAULT_MODEL_DIR, show_default=True, help="where the models live on the host")
@click.option("--port", type=click.IntRange(1, 65535), help=f"API port the plan records [default: {DEFAULT_PORT}]")
@click.option("--gguf-dir", type=click.Path(file_okay=False), help="with --facts --deep: local directory of the shards")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON (docs/plan.md)")
@click.option("--force", is_flag=True, help="exit 0 even when the plan has problems")
@click.option("--deep", is_flag=True, help="also read the GGUF headers on the host (or in --gguf-dir)")
def preflight_cmd(hosts, inventory, facts_dir, variant, engine, kt_version, model_dir, port, gguf_dir, as_json, force, deep):
    """Show the deployment plan for HOSTS (or a saved --facts DIR); exit 4 when it cannot work."""
    options = PlanOptions(variant, engine, kt_version, port, model_dir, deep)
    if facts_dir:
        if hosts or inventory:
            raise BadInput("--facts plans from a saved directory", hint="name either HOSTS/-i or --facts, not both")
        if deep and not gguf_dir:
            raise BadInput("--deep with --facts needs --gguf-dir", hint="name the local directory holding the shards")
        plan = options.plan(facts.parse(facts.load_dir(facts_dir)), host=Path(facts_dir).name)
        if deep:
            _add_gguf_findings(plan, gguf_check.read_dir_local(gguf_dir), gguf_dir)
        results = [remote.HostResult(Target(plan.host, plan.host), value=plan)]
    else:
        if gguf_dir:
            raise BadInput("--gguf-dir is for --facts", hint="with HOSTS, --deep reads the shards under --model-dir")
        targets = _targets(hosts, inventory)
        if not targets:
            raise BadInput("no host named", hint="name HOSTS, -i INVENTORY, or --facts DIR")
        results = remote.on_hosts(targets, lambda t: plan_host(t, options))
    _show(results, as_json)
    raise SystemExit(_exit_code(results, force))


def _exit_code(results: list[remote.HostResult], force: bool) -> int:
    if any(r.unreachable for r in results):
        return exitcodes.UNREACHABLE
    if any(not r.ok for r in results):
        return exitcodes.FAILED
    if not force and any(r.value.problems for r in results):
        return exitcodes.PLAN_PROBLEM
    return exitcodes.OK


def _show(results: list[remote.HostResult], as_json: bool) -> None:
    if as_json:
        docs = [r.value.to_dict() if r.ok else {"host": r.target.name, "error": r.error} for r in results]
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False)
    for r in results:
        if r.ok:
            console.print(plan_table(r.value))
            _print_findings(console, r.value)
        else:
            console.print(f"[bold red]{r.target.name}: {'unreachable' if r.unreachable else 'failed'}[/]: {r.error}")


def plan_table(plan: Plan):
    from rich.table import Table

    d = plan.to_dict()
    cpu, build, serve, model = d["cpu"], d["build"], d["serve"], d["model"]
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    table = Table(title=f"{plan.host or 'host'}: {model['variant']} on {serve['engine']} ({verdict})", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    quota = f", quota {cpu['cgroup_quota']:g}" if cpu["cgroup_quota"] is not None else ""
    isa = ", ".join(k for k in ("amx", "avx512", "avx2") if cpu[k]) or "no AVX2"
    rows = [
        ("CPU", f"{cpu['model']}: {cpu['sockets']} socket(s) x {cpu['cores_per_socket']} cores x "
                f"{cpu['threads_per_core']} threads, {cpu['numa_nodes']} NUMA node(s), {isa}"),
        ("CPUs used", f"{cpu['effective_cpus']} of {cpu['physical_cores']} physical cores{quota}"),
        ("RAM", f"{d['memory_gib']} GiB" + (f" (cgroup limit; host {d['memory']['total_gib']} GiB)"
                                            if d["memory"]["cgroup_max_gib"] is not None else "")),
        ("GPUs", "; ".join(f"{g['index']}: {g['name']} {g['memory_mib']} MiB cc {g['compute_capability']}"
                           for g in d["gpus"]) or "none"),
        ("Disk", f"{plan.facts.disk_avail_bytes / GIB:.1f} GiB free on {plan.facts.disk_mount}, "
                 f"{plan.disk_needed_bytes / GIB:.1f} GiB needed"),
        ("OS", f"{d['os']['pretty_name']}, {'systemd' if d['systemd'] else 'no systemd'}"),
        ("Model", f"{model['variant']}: {model['bytes'] / GIB:.1f} GiB "
                  + ("from a PyPI package, " if model["source"] == "package" else
                     "generated on the spot, " if model["source"] == "generated" else
                     f"in {len(model['files'])} files, {model['present_bytes'] / GIB:.1f} GiB present, ")
                  + f"needs {model['min_ram_gib']} GiB RAM"),
        ("Build", f"KTransformers {build['kt_version']}, USE_NUMA {'set' if build['use_numa'] else 'unset'}, "
                  f"CPU_INSTRUCT {build['cpu_instruct']}, TORCH_CUDA_ARCH_LIST {build['torch_cuda_arch_list']}, "
                  f"MAX_JOBS {build['max_jobs']}"),
        ("Serve", f"cpu_infer {serve['cpu_infer']}, rule {serve['optimize_rule']}"
                  f"{' (ktdeploy)' if serve['optimize_rule_shipped'] else ''}, port {serve['port']}, "
                  f"n_gpu_layers {serve['n_gpu_layers']}, under {serve['supervisor']}"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table


def _print_findings(console, plan: Plan) -> None:
    for p in plan.problems:
        console.print(f"[bold red]problem[/] {p.code}: {p.message}")
    for w in plan.warnings:
        console.print(f"[yellow]warning[/] {w.code}: {w.message}")


COMMANDS = [facts_cmd, preflight_cmd]
