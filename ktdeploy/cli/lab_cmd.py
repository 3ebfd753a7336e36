"""`ktdeploy lab`: throwaway systemd hosts (systemd-nspawn) to rehearse a provisioning run safely."""

from __future__ import annotations

import os

import click

from ktdeploy.errors import BadInput, KtdeployError


def _lab():
    from ktdeploy.lab import Lab

    return Lab(log=lambda msg: click.echo(msg, err=True))


def _failures():
    from ktdeploy.lab.golden import GoldenBuildError
    from ktdeploy.lab.hosts import HostError
    from ktdeploy.lab.net import NetError
    from ktdeploy.lab.wheelhouse import WheelhouseError

    return (GoldenBuildError, HostError, NetError, WheelhouseError)


def _checked(fn):
    try:
        return fn()
    except _failures() as exc:
        raise KtdeployError(str(exc)) from exc


def _require_up(lab_, index: int) -> None:
    if index not in {h.index for h in lab_.list()}:
        raise BadInput(f"lab{index} is not up", hint="see `ktdeploy lab list`, or boot it with `ktdeploy lab up`")


@click.group()
def lab() -> None:
    """Throwaway Debian 12 hosts (real systemd, real SSH) on this machine; needs root (but `tiny-model`)."""


@lab.command()
@click.argument("index", type=click.IntRange(1, 254), required=False)
def up(index: int | None) -> None:
    """Boot lab host INDEX (default: the lowest free one); it stays up until `lab down`."""
    from ktdeploy.lab import hosts

    lab_ = _lab()
    if index is not None and index in hosts.used_indexes(lab_.paths):
        raise BadInput(f"lab{index} is already up (or left over)", hint=f"ktdeploy lab down {index}, or leave out the index")
    host = _checked(lambda: lab_.up(index, keep=True))
    click.echo(f"{host.name} is up: ssh target deploy@{host.address}")
    click.echo(f"  ssh:       ktdeploy lab ssh {host.index}")
    click.echo(f"  inventory: {lab_.inventory_path()}")


@lab.command()
@click.argument("index", type=click.IntRange(1, 254), required=False)
@click.option("--all", "all_", is_flag=True, help="Take down every lab host, then the apt proxy and wheelhouse.")
def down(index: int | None, all_: bool) -> None:
    """Take lab host INDEX down (or all of them with --all), removing all it left behind."""
    if (index is None) == (not all_):
        raise BadInput("name one host index or --all", hint="ktdeploy lab down 1   or   ktdeploy lab down --all")
    from ktdeploy.lab import requirements

    requirements.check()
    lab_ = _lab()
    if all_:
        gone = _checked(lab_.down_all)
        click.echo(f"took down {', '.join(f'lab{n}' for n in gone) or 'no hosts'}")
    else:
        _require_up(lab_, index)
        _checked(lambda: lab_.down(index))
        click.echo(f"lab{index} is down")


@lab.command(name="list")
def list_() -> None:
    """List the lab hosts of this machine's lab state dir."""
    from ktdeploy.lab.paths import host_address, host_name

    states = _lab().states()
    if not states:
        click.echo("no lab hosts are up")
    for s in states:
        status = "running" if s.running else "stopped (run `ktdeploy lab down` on it)"
        owner = f"owned by pid {s.owner}" if s.owner else "kept"
        click.echo(f"{host_name(s.index):7} deploy@{host_address(s.index):14} {status}, {owner}")


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("index", type=click.IntRange(1, 254))
@click.option("-u", "--user", default="deploy", show_default=True, help="root, deploy (sudo) or nosudo.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(index: int, user: str, command: tuple[str, ...]) -> None:
    """Open a real ssh session to lab host INDEX (or run COMMAND there)."""
    lab_ = _lab()
    _require_up(lab_, index)
    argv = lab_.ssh_argv(index, user=user) + list(command)
    os.execvp(argv[0], argv)


@lab.command()
@click.argument("index", type=click.IntRange(1, 254), required=False)
def inventory(index: int | None) -> None:
    """Print the path of the YAML inventory of the lab hosts that are up (or of host INDEX only)."""
    lab_ = _lab()
    if index is None:
        click.echo(lab_.inventory_path())
        return
    _require_up(lab_, index)
    click.echo(lab_.host(index).inventory_path())


@lab.command()
@click.option("--no-webui", is_flag=True, help="Serve the API only (skips Open WebUI's ~1 GB of wheels).")
def demo(no_webui: bool) -> None:
    """Boot a lab host and provision the cpu-demo on it: a real model served with no GPU.

    Then shows `ktdeploy status --deep` and a `ktdeploy chat` answer. The host stays up.
    """
    import subprocess
    import sys
    from pathlib import Path

    from ktdeploy.lab import demo as lab_demo

    lab_ = _lab()
    host = _checked(lambda: lab_.up(keep=True))
    click.echo(f"{host.name} is up at {host.address}")
    _checked(lambda: lab_demo.stock_wheelhouse(lab_, host, webui=not no_webui, log=lambda m: click.echo(m, err=True)))
    extra = {"serve_webui_enabled": False} if no_webui else {}
    inv = lab_demo.write_inventory(lab_, host, lab_.paths.root / f"demo-{host.name}.yml", **extra)
    ktdeploy = str(Path(sys.executable).parent / "ktdeploy")
    steps = [
        [ktdeploy, "provision", "-i", str(inv), "--profile", "cpu-demo"],
        [ktdeploy, "status", "-i", str(inv), "--deep"],
        [ktdeploy, "chat", "-i", str(inv), "--max-tokens", "64", host.name, "Say hello in five words."],
    ]
    for argv in steps:
        click.echo("$ " + " ".join(argv[1:]), err=True)
        rc = subprocess.call(argv)
        if rc != 0:
            raise KtdeployError(f"`{' '.join(argv[1:3])}` exited {rc}; the host stays up: ktdeploy lab ssh {host.index}")
    click.echo(f"demo: {host.name} serves; inventory {inv}; remove it with `ktdeploy lab down {host.index}`")


@lab.command("tiny-model")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--experts", type=click.Choice(["iq1s", "k"]), default="iq1s", show_default=True,
              help="Routed expert types: iq1s (IQ1_S/IQ2_XXS, KTransformers v0.2.3+) or k (Q4_K/Q6_K, also 0.2.1.post1).")
def tiny_model(outdir: str, experts: str) -> None:
    """Write a tiny DeepSeek-V3 model with random weights into OUTDIR (no root needed).

    OUTDIR/config is KTransformers' --model_path, OUTDIR/gguf its --gguf_path (one file, which
    llama.cpp serves too). The same bytes on every run; catalog name tiny-dsv3-EXPERTS. On a host, put
    it at <model dir>/tiny-dsv3-EXPERTS. Also `python -m ktdeploy.lab.tiny_dsv3 OUTDIR`.
    """
    from ktdeploy.lab import tiny_dsv3

    try:
        written = tiny_dsv3.write(outdir, experts)
    except (OSError, ValueError) as exc:
        raise BadInput(str(exc), hint="choose an empty OUTDIR") from None
    click.echo(f"config dir: {written.config_dir}")
    click.echo(f"gguf dir:   {written.gguf_dir}")
    click.echo(f"gguf file:  {written.gguf_path} ({written.gguf_path.stat().st_size} bytes)")


COMMANDS = [lab]
