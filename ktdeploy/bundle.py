"""Offline bundles: everything hosts that reach nothing but the controller need and do not have,
made on a connected machine (`ktdeploy bundle create DIR`), checked file by file against its
manifest (`ktdeploy bundle verify DIR`, and `provision --bundle` before anything runs), and served
to the hosts over HTTP from the controller for the length of a `provision --bundle` run.

A bundle directory holds:

| path | what |
|---|---|
| `manifest.json` | format, what the bundle was made for (Python version, wheel platforms, Debian release and architecture), its contents, and the sha256 and size of every other file |
| `SHA256SUMS` | the same sums, for `sha256sum -c` |
| `debs/` | `.deb` files with their dependencies, `Packages` and `Release`: a flat apt repository |
| `wheels/` | wheels for the hosts' Python (and the few sdists pip builds there), `index.html` for `pip --find-links` |
| `ktransformers/` | the KTransformers source archive: one top folder, submodules filled in |
| `models/<owner>/<name>/` | model files from a controller download, with a `SHA256SUMS` (model_download's mirror layout) |

What goes in follows the run the bundle is for: the roles (`--only`/`--skip`) and the settings
(inventory, profile, `-e`), read from the roles' defaults (`wanted`).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ktdeploy import __version__, build, catalog, variables
from ktdeploy.errors import BadInput, KtdeployError

FORMAT = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
DEFAULT_PORT = 8765
# Debian 12's Python and C library: the wheels a host of the tutorial's OS can install.
DEFAULT_PYTHON = "3.11"
DEFAULT_GLIBC = (2, 36)
# Projects published as sdists only: pip builds them on the host (setuptools and wheel come along).
SDIST_ONLY = {"cpufeature": ["setuptools<82", "wheel<0.49"]}  # the build pins of tests/gpu/gather.sh
# The settings a bundle is computed from (the roles' defaults, then inventory, profile and -e).
SETTINGS = (
    "base_packages", "base_extra_packages", "python_env_packages", "python_env_python_version",
    "torch_build_packages", "ktransformers_runtime_packages", "ktransformers_git_url", "plan_engine",
    "plan_kt_version", "plan_model_variant", "serve_engine", "serve_llamacpp_flavour",
    "serve_supervisor_version", "serve_webui_enabled", "serve_webui_version", "serve_webui_preinstall",
    "model_download_enabled",
)
# Variables `provision --bundle` sets; -e naming one of them conflicts with the bundle.
BUNDLE_VARS = (
    "base_apt_bundle_url", "python_env_pip_index_url", "python_env_pip_extra_index_urls",
    "python_env_pip_find_links", "python_env_pip_no_index", "python_env_pip_trusted_hosts",
    "ktransformers_source", "ktransformers_tarball", "ktransformers_tarball_sha256", "plan_kt_version",
    "serve_supervisor_from", "model_download_source", "model_download_mirror_url",
)

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    print(line, file=sys.stderr)


# -- what a run needs ------------------------------------------------------------------------------


@dataclass
class Contents:
    """What a bundle holds for a run: Debian packages, pip requirements, sources, models."""

    debs: list[str] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    python_version: str = DEFAULT_PYTHON
    kt_version: str | None = None  # the KTransformers source to carry (None: the run builds none)
    kt_git_url: str = ""
    model_variant: str | None = None
    webui: bool = False


def _truthy(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


def _render(value, context: dict, depth: int = 0):
    """A role default as Ansible would template it, for the plain cases these settings have."""
    if isinstance(value, list):
        return [_render(v, context, depth) for v in value]
    if not isinstance(value, str) or "{{" not in value or depth > 5:
        return value
    import jinja2

    env = jinja2.Environment(undefined=jinja2.ChainableUndefined)
    try:
        text = env.from_string(value).render(context)
    except jinja2.TemplateError:
        return None
    return _render(text, context, depth + 1)


def settings(hostvars: dict, extravars: dict) -> dict:
    """The bundle's settings for one host: the roles' defaults, its inventory variables, then -e."""
    merged = {**variables.defaults(), **hostvars, **extravars}
    context = dict(merged)
    context["ktdeploy_plan"] = {"serve": {"engine": merged.get("plan_engine") or "ktransformers"}}
    out = {}
    for name in SETTINGS:
        value = _render(merged.get(name), context)
        if isinstance(value, str) and name.endswith(("_packages", "_preinstall")):
            value = [v for v in re.split(r"[,\s]+", value.strip("[] ")) if v]
        out[name] = value
    return out


def _roles_run(roles: list[str], name: str) -> bool:
    return name in roles


def wanted(host_settings: list[dict], roles: list[str]) -> Contents:
    """What the hosts of a run need from a bundle, given each host's settings and the roles the run applies."""
    c = Contents()
    pythons = sorted({str(s.get("python_env_python_version") or "") for s in host_settings} - {""})
    if len(pythons) > 1:
        raise BadInput(f"the hosts ask for different Python versions ({', '.join(pythons)}); a bundle carries "
                       "wheels for one", hint="make one bundle per python_env_python_version")
    c.python_version = pythons[0] if pythons else DEFAULT_PYTHON
    debs: list[str] = []
    reqs: list[str] = []
    kt_versions = set()
    for s in host_settings:
        kt = (s.get("plan_engine") or "ktransformers") == "ktransformers"
        if _roles_run(roles, "base"):
            debs += list(s.get("base_packages") or []) + list(s.get("base_extra_packages") or [])
        if _roles_run(roles, "python_env"):
            reqs += list(s.get("python_env_packages") or [])
        if kt and _roles_run(roles, "torch"):
            reqs += list(s.get("torch_build_packages") or [])
        if kt and _roles_run(roles, "ktransformers"):
            debs += role_apt_packages("ktransformers")
            reqs += list(s.get("ktransformers_runtime_packages") or [])
            kt_versions.add(s.get("plan_kt_version") or catalog.default_kt_version())
            c.kt_git_url = s.get("ktransformers_git_url") or c.kt_git_url
        if _roles_run(roles, "serve"):
            reqs.append(f"supervisor=={s.get('serve_supervisor_version')}")
            if not kt and s.get("serve_llamacpp_flavour", "python") == "python":
                raise BadInput(
                    "the bundle cannot carry llama-cpp-python's server: pip builds it on the host from its sdist, "
                    "with build tools a bundle does not hold",
                    hint="leave the serve role out (--skip serve) or use serve_llamacpp_flavour: cpp with a "
                         "llama-server binary on the hosts")
            if _truthy(s.get("serve_webui_enabled", True)):
                c.webui = True
                reqs += list(s.get("serve_webui_preinstall") or []) + [f"open-webui=={s.get('serve_webui_version')}"]
        if _roles_run(roles, "model_download") and _truthy(s.get("model_download_enabled", True)):
            c.model_variant = s.get("plan_model_variant") or None
    if len(kt_versions) > 1:
        raise BadInput(f"the hosts build different KTransformers versions ({', '.join(sorted(kt_versions))})",
                       hint="make one bundle per plan_kt_version")
    c.kt_version = next(iter(kt_versions), None)
    c.debs = sorted(set(debs))
    c.requirements = sorted(set(reqs), key=str.lower)
    return c


def role_apt_packages(role: str) -> list[str]:
    """The Debian packages a role installs through base's apt_packages (a literal base_apt_wanted)."""
    import yaml

    from ktdeploy.resources import roles_dir

    out: list[str] = []
    for path in sorted((roles_dir() / role / "tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            args = task.get("ansible.builtin.import_role") or task.get("ansible.builtin.include_role") or {}
            wanted_ = (task.get("vars") or {}).get("base_apt_wanted")
            if args.get("tasks_from") == "apt_packages" and isinstance(wanted_, list):
                out += [str(p) for p in wanted_]
    return out


def site_roles(only: list[str], skip: list[str], all_roles: list[str]) -> list[str]:
    """The roles a run of site.yml with these --only/--skip tags applies (plan always runs)."""
    roles = [r for r in all_roles if (not only or r in only or r == "plan") and r not in skip]
    return roles


# -- making the bundle -----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _run(argv: list[str], what: str, *, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        raise KtdeployError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def platforms(glibc: tuple[int, int] = DEFAULT_GLIBC, arch: str = "x86_64") -> list[str]:
    """pip --platform tags of the wheels a host with this C library runs, newest first."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"] + ([f"manylinux2010_{arch}", f"manylinux1_{arch}"] if arch == "x86_64" else [])


def fetch_debs(packages: list[str], dest: Path, say: Say = _quiet) -> list[str]:
    """The packages and everything they depend on, from this machine's apt sources, into dest.

    apt resolves against an empty package database, so the closure is complete whatever a host
    already has; on the host, apt takes from it only what is missing.
    """
    if not packages:
        return []
    say(f"bundle: Debian packages {' '.join(packages)} and their dependencies (this machine's apt sources)...")
    work = Path(tempfile.mkdtemp(prefix="ktdeploy-debs-"))
    try:
        (work / "archives" / "partial").mkdir(parents=True)
        (work / "status").write_text("")
        _run(["apt-get", "-q", "-y", "--download-only", "--no-install-recommends",
              "-o", f"Dir::State::status={work / 'status'}", "-o", f"Dir::Cache::archives={work / 'archives'}",
              "-o", "Debug::NoLocking=1", "install", *packages],
             "apt-get --download-only (is this a Debian machine of the hosts' release, with a fresh "
             "`apt-get update`?)", env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for deb in sorted((work / "archives").glob("*.deb")):
            name = re.sub(r"_\d+%3a", "_", deb.name)  # apt writes an epoch as %3a; the pool's names have none
            shutil.move(str(deb), dest / name)
            names.append(name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_apt_index(dest)
    return names


def write_apt_index(debs: Path) -> None:
    """`Packages` and `Release` of a flat repository (`deb [trusted=yes] URL ./`)."""
    stanzas = []
    for deb in sorted(debs.glob("*.deb")):
        control = _run(["dpkg-deb", "--field", str(deb)], f"dpkg-deb --field {deb.name}").rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    (debs / "Packages").write_bytes(packages)
    archs = sorted({m.group(1) for m in re.finditer(rb"^Architecture: (\S+)$", packages, re.M)} or {b"all"})
    (debs / "Release").write_text(
        "Origin: ktdeploy\nLabel: ktdeploy bundle\nSuite: ktdeploy-bundle\nCodename: ktdeploy-bundle\n"
        f"Architectures: {' '.join(a.decode() for a in archs)}\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")


def fetch_wheels(requirements: list[str], dest: Path, python_version: str, tags: list[str],
                 say: Say = _quiet) -> list[str]:
    """Wheels for the hosts' Python and platform, with their dependencies (this machine's pip index)."""
    if not requirements:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    sdists = [r for r in requirements if _project(r) in SDIST_ONLY]
    binary = [r for r in requirements if r not in sdists] + sorted({b for r in sdists for b in SDIST_ONLY[_project(r)]})
    abi = "cp" + python_version.replace(".", "")
    say(f"bundle: {len(binary)} requirement(s) as wheels for Python {python_version} with their dependencies, "
        f"{len(sdists)} as sdists (this machine's pip index)...")
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(dest)]
    if binary:
        argv = base + ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
                       "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for tag in tags:
            argv += ["--platform", tag]
        _run(argv + binary, f"pip download for Python {python_version}")
    if sdists:
        _run(base + ["--no-deps", "--no-binary=:all:"] + sdists, "pip download of the sdists")
    write_wheel_index(dest)
    return sorted(p.name for p in dest.iterdir() if p.name != "index.html")


def write_wheel_index(wheels: Path) -> None:
    links = "\n".join(f'<a href="{html.escape(p.name)}#sha256={_sha256(p)}">{html.escape(p.name)}</a><br>'
                      for p in sorted(wheels.iterdir()) if p.name != "index.html")
    (wheels / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}\n</body></html>\n")


def _project(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def archive_name(version: str) -> str:
    return f"ktransformers-{build.version_dir(version)}-offline.tar.gz"


def check_archive(path: Path, version: str, sha256: str | None = None) -> str:
    """The archive's sha256, checked against sha256 or a SHA256SUMS beside it; BadInput if it differs,
    if neither is there, or if its top folder is not KTransformers `version`."""
    if not path.is_file():
        raise BadInput(f"--kt-archive {path} does not exist", hint="name the KTransformers source archive (.tar.gz)")
    digest = _sha256(path)
    if sha256 is None:
        sums = path.parent / SUMS
        if not sums.is_file():
            raise BadInput(f"cannot check {path}: no {SUMS} beside it and no --kt-sha256",
                           hint=f"pass --kt-sha256 with the archive's published sha256, or keep its {SUMS} beside it")
        listed = {ln.split()[1].lstrip("*"): ln.split()[0] for ln in sums.read_text().splitlines() if len(ln.split()) == 2}
        sha256 = listed.get(path.name)
        if sha256 is None:
            raise BadInput(f"{sums} does not list {path.name}", hint="pass --kt-sha256 with the archive's sha256")
    if digest != sha256.lower():
        raise BadInput(f"{path} has sha256 {digest}, not {sha256}", hint="fetch the archive again, or fix the sum")
    top = _top_folder(path)
    want = f"ktransformers-{build.version_dir(version)}"
    if top != want:
        raise BadInput(f"{path} holds {top}/, not {want}/ (KTransformers {version})",
                       hint="pass --kt-version with the archive's version, or the archive of the wanted version")
    return digest


def _top_folder(path: Path) -> str:
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {m.name.split("/", 1)[0] for m in tar.getmembers()}
    except (tarfile.TarError, OSError) as exc:
        raise BadInput(f"{path} is not a tar archive ({exc})", hint="name the .tar.gz source archive") from exc
    return names.pop() if len(names) == 1 else "(several top folders)"


def pack_git(url: str, version: str, dest: Path, say: Say = _quiet) -> Path:
    """The source at tag `version` of `url` with its submodules (recursively), packed like the
    tutorial's offline archive: one top folder, sorted, owner 0, the commit times `git archive`
    sets, gzip without a name or time. The same tag gives the same bytes."""
    say(f"bundle: cloning {url} at {version} with its submodules...")
    work = Path(tempfile.mkdtemp(prefix="ktdeploy-git-"))
    git = ["git", "-c", "protocol.file.allow=always", "-c", "advice.detachedHead=false"]
    try:
        src = work / "src"
        _run(git + ["clone", "--quiet", "--depth", "1", "--branch", version, "--recurse-submodules",
                    "--shallow-submodules", url, str(src)],
             f"git clone {url} at {version} (where it cannot be reached, pass an archive: --kt-archive FILE)")
        commit = _run(["git", "-C", str(src), "rev-parse", "HEAD"], "git rev-parse").strip()
        known = build.KNOWN_TAG_COMMITS.get(version)
        if known and commit != known:
            raise KtdeployError(f"{url} tag {version} is {commit}, not the upstream {known}; the mirror's tag moved",
                                hint="point --kt-git at a faithful mirror of the upstream repository")
        top = f"ktransformers-{build.version_dir(version)}"
        parts = [("", _run_bytes(["git", "-C", str(src), "archive", "--format=tar", "HEAD"]))]
        status = _run(git + ["-C", str(src), "submodule", "status", "--recursive"], "git submodule status")
        for line in status.splitlines():
            fields = line[1:].split()
            if len(fields) >= 2:
                sub = fields[1]
                parts.append((sub, _run_bytes(["git", "-C", str(src / sub), "archive", "--format=tar", "HEAD"])))
        members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
        for prefix, data in parts:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar.getmembers():
                    if m.type == tarfile.XGLTYPE or m.name == "pax_global_header":
                        continue
                    name = "/".join(p for p in (top, prefix, m.name.rstrip("/")) if p)
                    content = tar.extractfile(m).read() if m.isfile() else None
                    info = tarfile.TarInfo(name)
                    info.type, info.mode, info.mtime, info.linkname = m.type, m.mode, m.mtime, m.linkname
                    info.size = len(content) if content is not None else 0
                    members[name] = (info, content)
        members.setdefault(top, (_dir_info(top, max((i.mtime for i, _ in members.values()), default=0)), None))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as out:
            for name in sorted(members):
                info, content = members[name]
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                out.addfile(info, io.BytesIO(content) if content is not None else None)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _dir_info(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
    return info


def _run_bytes(argv: list[str]) -> bytes:
    proc = subprocess.run(argv, capture_output=True)
    if proc.returncode != 0:
        raise KtdeployError(f"{' '.join(argv[:4])} failed: {proc.stderr.decode(errors='replace').strip()[-800:]}")
    return proc.stdout


def model_files(variant: str | None, model_dir: Path) -> list[tuple[dict, Path, list[Path]]]:
    """(download item, its directory under model_dir, its files) for each item of the variant, as a
    download on this machine with base_model_dir = model_dir left them; BadInput when one has none."""
    from ktdeploy import downloads
    from ktdeploy.hostside import download_state as ds

    items = downloads.download_items(variant, "mirror", str(model_dir))
    if not items:
        raise BadInput(f"the model {variant or catalog.default_variant()} is not downloaded (packaged or generated); "
                       "there is nothing to bundle", hint="leave --model-dir out")
    out = []
    for item in items:
        src = Path(item["dest"])
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.endswith(".incomplete")
                       and ds.selected(p.relative_to(src).as_posix(), item["includes"], item["excludes"])) \
            if src.is_dir() else []
        if not files:
            raise BadInput(f"{src} holds no file of {item['repo']} (include {item['includes']}, exclude "
                           f"{item['excludes']})", hint="download the model on this machine first, into the "
                           "--model-dir you name (as base_model_dir)")
        out.append((item, src, files))
    return out


def copy_models(found: list[tuple[dict, Path, list[Path]]], dest: Path, say: Say = _quiet) -> list[dict]:
    """The files `model_files` found into dest/<owner>/<name>/ (hard links where the file system
    allows) with a SHA256SUMS per repo, the layout model_download's mirror source reads."""
    out = []
    for item, src, files in found:
        repo_dir = dest / item["repo"]
        say(f"bundle: {len(files)} file(s) of {item['repo']} from {src}...")
        sums = []
        for f in files:
            rel = f.relative_to(src).as_posix()
            target = repo_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
            sums.append(f"{_sha256(target)}  {rel}")
        (repo_dir / SUMS).write_text("\n".join(sums) + "\n")
        out.append({"name": item["name"], "repo": item["repo"], "files": len(files)})
    return out


@dataclass
class Request:
    """How to make a bundle (the CLI's options, checked)."""

    contents: Contents
    platforms: list[str]
    debs: bool = True
    wheels: bool = True
    extra_requirements: list[str] = field(default_factory=list)
    kt_archive: Path | None = None
    kt_sha256: str | None = None
    kt_git: str | None = None
    model_dir: Path | None = None


def create(dest: Path, req: Request, say: Say = _quiet) -> dict:
    """Make the bundle in dest (which must not exist, or be empty); returns its manifest."""
    dest = dest.resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest} exists and is not an empty directory", hint="name a new directory for the bundle")
    if not dest.parent.is_dir():
        raise BadInput(f"{dest.parent} does not exist", hint="create the parent directory first")
    c = req.contents
    if req.kt_archive and not c.kt_version:
        raise BadInput("--kt-archive: this run builds no KTransformers (the ktransformers role is left out, "
                       "or plan_engine is not ktransformers)", hint="leave --kt-archive out")
    if req.kt_archive:
        kt_sha = check_archive(req.kt_archive, c.kt_version, req.kt_sha256)  # before any download
    if not re.fullmatch(r"3\.\d+", c.python_version or ""):
        raise BadInput(f"the hosts' Python version {c.python_version!r} is not like 3.11",
                       hint="pass --python-version X.Y (the hosts' python3 --version)")
    models = None
    if req.model_dir is not None:
        if not req.model_dir.is_dir():
            raise BadInput(f"--model-dir {req.model_dir} is not a directory", hint="name the model directory of a "
                           "download on this machine (its base_model_dir)")
        models = model_files(c.model_variant, req.model_dir.resolve())  # before any download
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        contents: dict = {"python_version": c.python_version, "platforms": req.platforms}
        if c.kt_version:  # first: a clone that cannot reach its server fails early
            target = work / "ktransformers" / archive_name(c.kt_version)
            if req.kt_archive:
                target.parent.mkdir(parents=True)
                shutil.copyfile(req.kt_archive, target)
                origin = f"archive {req.kt_archive.name}"
            else:
                pack_git(req.kt_git or c.kt_git_url, c.kt_version, target, say)
                kt_sha = _sha256(target)
                origin = f"git {req.kt_git or c.kt_git_url}"
            contents["ktransformers"] = {"version": c.kt_version, "file": f"ktransformers/{target.name}",
                                         "sha256": kt_sha, "from": origin}
        if req.debs and c.debs:
            contents["debs"] = {"packages": c.debs, "files": fetch_debs(c.debs, work / "debs", say),
                                "release": _os_release(), "architecture": _dpkg_arch()}
        reqs = sorted(set(c.requirements + req.extra_requirements), key=str.lower)
        if req.wheels and reqs:
            contents["wheels"] = {"requirements": reqs,
                                  "files": fetch_wheels(reqs, work / "wheels", c.python_version, req.platforms, say)}
        if models is not None:
            contents["models"] = {"variant": c.model_variant or catalog.default_variant(),
                                  "repos": copy_models(models, work / "models", say)}
        manifest = write_manifest(work, contents)
        if dest.exists():
            dest.rmdir()
        os.rename(work, dest)
        os.chmod(dest, 0o755)
        return manifest
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_manifest(root: Path, contents: dict) -> dict:
    """manifest.json (the sha256 and size of every other file) and SHA256SUMS of the bundle at root."""
    manifest = {"format": FORMAT, "made_by": f"ktdeploy {__version__}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "contents": contents, "files": _file_table(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (root / SUMS).write_text("".join(f"{v['sha256']}  {k}\n" for k, v in manifest["files"].items()))
    return manifest


def _file_table(root: Path) -> dict:
    """Every file under root but the manifest and SHA256SUMS themselves: sha256 and size."""
    return {p.relative_to(root).as_posix(): {"sha256": _sha256(p), "size": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, SUMS)}


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    fields = dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln)
    return f"{fields.get('ID', '').strip(chr(34))} {fields.get('VERSION_CODENAME', '').strip(chr(34))}".strip()


def _dpkg_arch() -> str:
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


# -- checking it ---------------------------------------------------------------------------------


def verify(root: Path) -> dict:
    """The manifest of the bundle at root, once every file matches it; BadInput naming each file that
    is missing, changed or not in the manifest."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BadInput(f"{root} is no ktdeploy bundle: it has no {MANIFEST}",
                       hint="name a directory `ktdeploy bundle create` made")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise BadInput(f"{path} is not valid JSON ({exc})", hint="copy the bundle again, or create it again") from exc
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BadInput(f"{path} is not a format-{FORMAT} bundle manifest",
                       hint="create the bundle again with this ktdeploy (`ktdeploy bundle create`)")
    problems = []
    listed = manifest["files"]
    for rel, want in sorted(listed.items()):
        f = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            problems.append(f"{rel}: not a path inside the bundle")
        elif not f.is_file():
            problems.append(f"{rel}: missing")
        elif f.stat().st_size != want.get("size"):
            problems.append(f"{rel}: {f.stat().st_size} bytes, the manifest says {want.get('size')}")
        elif _sha256(f) != want.get("sha256"):
            problems.append(f"{rel}: sha256 {_sha256(f)}, the manifest says {want.get('sha256')}")
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and rel not in listed and rel not in (MANIFEST, SUMS):
            problems.append(f"{rel}: not in the manifest")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise BadInput(f"bundle {root} does not match its manifest; nothing was changed:\n  " + "\n  ".join(shown),
                       hint="copy the bundle again from where it was made, or make it again with `ktdeploy bundle create`")
    return manifest


# -- serving it to the hosts ---------------------------------------------------------------------


def provision_vars(manifest: dict, root: Path, url: str, address: str, chosen: set[str] = frozenset()) -> dict:
    """The role variables that make a run take everything from the bundle at `url` (and root).

    `chosen`: variables the inventory or -e set, which only the defaults here leave alone."""
    c = manifest.get("contents", {})
    out: dict = {}
    if "torch_flash_attn" not in chosen:
        out["torch_flash_attn"] = "sdpa"  # flash-attn's release page is out of the hosts' reach
    if "debs" in c:
        out["base_apt_bundle_url"] = f"{url}/debs/"
    if "wheels" in c:
        out.update(python_env_pip_index_url="", python_env_pip_extra_index_urls=[],
                   python_env_pip_find_links=[f"{url}/wheels/"], python_env_pip_no_index=True,
                   python_env_pip_trusted_hosts=[address.strip("[]")], serve_supervisor_from="pip")
    if "ktransformers" in c:
        kt = c["ktransformers"]
        out.update(ktransformers_source="tarball", ktransformers_tarball=str(Path(root).resolve() / kt["file"]),
                   ktransformers_tarball_sha256=kt["sha256"], plan_kt_version=kt["version"])
    if "models" in c:
        out.update(model_download_source="mirror", model_download_mirror_url=f"{url}/models")
    else:
        out["model_download_enabled"] = False  # the hosts reach no hub: copy the model yourself
    return out


def check_run(manifest: dict, host_settings: dict[str, dict], given: dict) -> None:
    """BadInput when the run does not fit the bundle: -e overriding what the bundle sets, hosts
    asking for another Python than the bundle's wheels are for."""
    clash = sorted(k for k in given if k in BUNDLE_VARS)
    if clash:
        raise BadInput(f"-e {', '.join(clash)} conflicts with --bundle, which sets it",
                       hint="leave it out, or make a bundle with what you want (ktdeploy bundle create)")
    c = manifest.get("contents", {})
    if "wheels" not in c:
        return
    for host, s in sorted(host_settings.items()):
        want = str(s.get("python_env_python_version") or "")
        if want and want != c.get("python_version"):
            raise BadInput(f"{host}: python_env_python_version is {want}, the bundle's wheels are for Python "
                           f"{c.get('python_version')}",
                           hint=f"make the bundle with --python-version {want}, or set python_env_python_version")


def controller_address(targets, given: str | None = None, option: str = "--bundle-address",
                       default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """(address, port) the hosts reach the controller at: `option`'s ADDR[:PORT], else the
    address this machine sends from towards the hosts (the same for all of them, or BadInput)."""
    import socket

    if given:
        from ktdeploy.targets import parse_address

        return parse_address(given, option, default_port,
                             f"give the controller's address as the hosts reach it, e.g. 10.0.0.1 or "
                             f"10.0.0.1:{default_port} ([fd00::1]:{default_port} for IPv6)")
    seen: dict[str, list[str]] = {}
    for t in targets:
        if t.hostvars.get("ansible_connection") == "local":
            seen.setdefault("127.0.0.1", []).append(t.name)
            continue
        try:
            family = socket.AF_INET6 if ":" in t.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((t.host, int(t.port or 22)))
                seen.setdefault(s.getsockname()[0], []).append(t.name)
        except OSError as exc:
            raise BadInput(f"cannot tell which address {t.name} reaches this machine at ({exc})",
                           hint=f"pass {option} ADDRESS[:PORT]") from exc
    if len(seen) != 1:
        detail = "; ".join(f"{a} for {', '.join(n)}" for a, n in sorted(seen.items()))
        raise BadInput(f"the hosts reach this machine at different addresses ({detail})",
                       hint=f"pass {option} with one address every host reaches")
    return next(iter(seen)), default_port


class Server:
    """The bundle over HTTP on address:port for the length of a `with` block: only the manifest's
    files (and the manifest itself), GET and HEAD, byte ranges for resumed downloads."""

    def __init__(self, root: Path, manifest: dict, address: str, port: int):
        self.root, self.address, self.port, self.manifest = Path(root).resolve(), address, port, manifest
        self.files = set(manifest["files"]) | {MANIFEST, SUMS}
        self.served: list[str] = []  # the paths asked for, answered or not (status, path)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def _resolve(self, rel: str) -> Path | None:
        if rel.endswith("/"):  # a folder: its index page (pip's --find-links reads wheels/)
            rel += "index.html"
        return self.root / rel if rel in self.files else None

    def __enter__(self) -> "Server":
        from ktdeploy.hostside.file_server import FileServer

        self.httpd = FileServer(self._resolve, self.address, self.port, name="bundle-server",
                                on_request=lambda status, path, *_: self.served.append(f"{status} {path}"))
        try:
            self.httpd.start()
            self.port = self.httpd.port  # port 0 picks a free one
        except OSError as exc:
            raise BadInput(f"cannot serve the bundle on {self.address}:{self.port} ({exc.strerror or exc})",
                           hint="pass --bundle-address with an address of this machine the hosts reach, and a free port") from exc
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.stop()

    @property
    def requests(self) -> int:
        return len(self.served)
