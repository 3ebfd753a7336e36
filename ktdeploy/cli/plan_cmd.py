"""`ktdeploy facts` and `ktdeploy preflight`: gather host facts, show the plan, refuse plans that cannot work.

The work is `ktdeploy.preflight`'s (also what `ktdeploy provision` runs before anything changes);
this module reads the options and shows the plans.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ktdeploy import catalog, facts, gguf_check, remote
from ktdeploy.errors import BadInput, KtdeployError, Unreachable
from ktdeploy.plan import DEFAULT_MODEL_DIR, DEFAULT_PORT, ENGINES, GIB, Plan
from ktdeploy.preflight import PlanOptions, add_gguf_findings, exit_code, gather_raw, plan_host
from ktdeploy.targets import Target, parse_targets, targets_from_inventory


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
            add_gguf_findings(plan, gguf_check.read_dir_local(gguf_dir), gguf_dir)
        results = [remote.HostResult(Target(plan.host, plan.host), value=plan)]
    else:
        if gguf_dir:
            raise BadInput("--gguf-dir is for --facts", hint="with HOSTS, --deep reads the shards under --model-dir")
        targets = _targets(hosts, inventory)
        if not targets:
            raise BadInput("no host named", hint="name HOSTS, -i INVENTORY, or --facts DIR")
        results = remote.on_hosts(targets, lambda t: plan_host(t, options))
    _show(results, as_json)
    raise SystemExit(exit_code(results, force))


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
                  f"MAX_JOBS {build['max_jobs']}"
                  + (", both extensions at once" if build.get("parallel_extensions") else "")),
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
