"""`ktdeploy bundle create DIR` / `ktdeploy bundle verify DIR`: the offline bundle for hosts that
reach nothing but the controller (`provision --bundle DIR` serves it). What it holds and how it is
made and checked is `ktdeploy.bundle`'s; this module reads the options and shows the result."""

from __future__ import annotations

from pathlib import Path

import click

from ktdeploy import bundle, catalog, profiles, provisioning
from ktdeploy.targets import targets_from_inventory
from ktdeploy.cli import say



@click.group("bundle", short_help="Make or check an offline bundle for hosts that reach nothing but the controller.")
def bundle_group() -> None:
    """Offline bundles: Debian packages, wheels, the KTransformers source and optionally the model,
    with a manifest holding the sha256 of every file. Make one on a connected machine (`create`),
    carry it to the controller, check it (`verify`), then `ktdeploy provision --bundle DIR`."""


@bundle_group.command("create")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("-i", "--inventory", metavar="INVENTORY",
              help="Read the hosts' settings from this inventory (nothing is asked of the hosts).")
@click.option("--only", multiple=True, metavar="ROLE,...", help="The run will apply only these roles.")
@click.option("--skip", multiple=True, metavar="ROLE,...", help="The run will skip these roles.")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE", help="A setting of the run (repeatable).")
@click.option("--profile", metavar="NAME", help="The run's profile (ktdeploy/profiles/NAME.yml).")
@click.option("--python-version", metavar="X.Y",
              help="The hosts' Python (default: python_env_python_version, else Debian 12's 3.11).")
@click.option("--platform", "platform_tags", multiple=True, metavar="TAG",
              help="pip platform tags of the hosts (repeatable; default: manylinux up to glibc 2.36, x86_64).")
@click.option("--pip", "pip_reqs", multiple=True, metavar="REQ",
              help="Another requirement to carry, e.g. a CUDA torch (repeatable; this machine's pip index serves it).")
@click.option("--no-debs", is_flag=True, help="Carry no Debian package (the hosts have what the roles install).")
@click.option("--no-wheels", is_flag=True, help="Carry no Python package.")
@click.option("--kt-version", metavar="TAG", help="KTransformers version to carry (default: plan_kt_version, else the catalog's).")
@click.option("--kt-archive", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="An existing KTransformers source archive (checked against the SHA256SUMS beside it or --kt-sha256).")
@click.option("--kt-sha256", metavar="HEX", help="The sha256 --kt-archive must have.")
@click.option("--kt-git", metavar="URL", help="Clone and pack this repository at the version's tag, with its submodules "
              "(default: ktransformers_git_url).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Carry the model too: its files from a download on this machine into DIR (as base_model_dir).")
def create(directory, inventory, only, skip, extra, profile, python_version, platform_tags, pip_reqs, no_debs,
           no_wheels, kt_version, kt_archive, kt_sha256, kt_git, model_dir):
    """Make an offline bundle in DIRECTORY (new or empty) for a run with these roles and settings.

    Debian packages with their dependencies come from this machine's apt sources (it should run the
    hosts' Debian release), wheels for the hosts' Python from its pip index, the KTransformers source
    from --kt-archive or a git clone. Exit codes: 0 made, 1 a download failed, 2 bad input.
    """
    tags, skip_tags = provisioning.only_and_skip(only, skip)
    roles = bundle.site_roles(tags, skip_tags, provisioning.site_roles())
    given = provisioning.parse_extravars(extra)
    if kt_version:
        given["plan_kt_version"] = kt_version
    extravars = {**(profiles.load(profile) if profile else {}), **given}
    hosts = [t.hostvars for t in targets_from_inventory(inventory)] if inventory else [{}]
    wanted = bundle.wanted([bundle.settings(hv, extravars) for hv in hosts], roles)
    if python_version:
        wanted.python_version = python_version
    if kt_sha256 and not kt_archive:
        raise click.UsageError("--kt-sha256 goes with --kt-archive")
    if kt_archive and kt_git:
        raise click.UsageError("give --kt-archive or --kt-git, not both")
    request = bundle.Request(
        contents=wanted, platforms=list(platform_tags) or bundle.platforms(), debs=not no_debs, wheels=not no_wheels,
        extra_requirements=list(pip_reqs), kt_archive=kt_archive, kt_sha256=kt_sha256, kt_git=kt_git,
        model_dir=model_dir,
    )
    say(f"bundle: for the roles {', '.join(roles)}; Python {wanted.python_version}"
        + (f"; KTransformers {wanted.kt_version}" if wanted.kt_version else "")
        + (f"; model {wanted.model_variant or catalog.default_variant()}" if model_dir else ""))
    manifest = bundle.create(directory, request, say)
    click.echo(describe(directory, manifest))


@bundle_group.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def verify(directory):
    """Check every file of the bundle in DIRECTORY against its manifest (sha256 and size).

    Exit codes: 0 it matches, 2 a file is missing, changed or not in the manifest (each is named).
    """
    manifest = bundle.verify(directory)
    click.echo(describe(directory, manifest))


def describe(directory: Path, manifest: dict) -> str:
    c = manifest.get("contents", {})
    files = manifest.get("files", {})
    size = sum(f.get("size", 0) for f in files.values())
    parts = []
    if "debs" in c:
        parts.append(f"{len(c['debs'].get('files', []))} Debian packages ({c['debs'].get('release', '')})")
    if "wheels" in c:
        parts.append(f"{len(c['wheels'].get('files', []))} Python packages for Python {c.get('python_version')}")
    if "ktransformers" in c:
        parts.append(f"KTransformers {c['ktransformers']['version']} source")
    if "models" in c:
        parts.append(f"model {c['models']['variant']}")
    return (f"bundle {directory}: {len(files)} files, {size / 1e6:.1f} MB, all matching {bundle.MANIFEST}: "
            + ("; ".join(parts) or "empty"))


COMMANDS = [bundle_group]
