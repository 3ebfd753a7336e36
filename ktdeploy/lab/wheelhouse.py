"""The wheelhouse: packages the controller downloads, served to lab hosts as a PEP 503 index.

`add([...])` runs the controller's own `pip download` (its pip configuration decides where from)
into `files/`, then regenerates `simple/<project>/index.html`. A small HTTP server serves it on
CONTROLLER_IP:WHEELHOUSE_PORT (and 127.0.0.1); lab hosts use `pip_args` to install from it.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from ktdeploy.lab import daemons
from ktdeploy.lab.locks import file_lock
from ktdeploy.lab.net import port_open
from ktdeploy.lab.paths import CONTROLLER_IP, WHEELHOUSE_PORT

INDEX_URL = f"http://{CONTROLLER_IP}:{WHEELHOUSE_PORT}/simple/"
_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2")

_FETCH_SDISTS = r"""
import hashlib, sys
from pathlib import Path
from pip._internal.commands.download import DownloadCommand
from pip._internal.req.constructors import install_req_from_line

dest, wheelhouse, lines = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
cmd = DownloadCommand("download", "fetch sdists")
opts, _ = cmd.parse_args(["--no-deps", "--no-binary", ":all:", "--find-links", wheelhouse])
with cmd.main_context():
    session = cmd.get_default_session(opts)
    finder = cmd._build_package_finder(opts, session)
    for line in lines:
        req = install_req_from_line(line).req
        best = finder.find_best_candidate(req.name, req.specifier).best_candidate
        if best is None:
            sys.exit(f"no sdist matching {line} on the configured indexes")
        link = best.link
        if link.scheme == "file":
            data = Path(link.file_path).read_bytes()
        else:
            resp = session.get(link.url_without_fragment)
            resp.raise_for_status()
            data = resp.content
        if link.hash_name == "sha256" and hashlib.sha256(data).hexdigest() != link.hash:
            sys.exit(f"{link.filename}: sha256 differs from the index's")
        (dest / link.filename).write_bytes(data)
        print("Saved", link.filename)
"""


class WheelhouseError(RuntimeError):
    pass


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str | None:
    """The normalized project a distribution file belongs to; None for other files."""
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

    try:
        if filename.endswith(".whl"):
            return normalize(parse_wheel_filename(filename)[0])
        if filename.endswith((".tar.gz", ".zip")):
            return normalize(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        pass
    if filename.endswith(_ARCHIVES):  # legacy names packaging rejects: name-version.ext
        stem = filename.split(".tar.")[0].rsplit(".", 1)[0] if ".tar." in filename else filename.rsplit(".", 1)[0]
        name, _, version = stem.rpartition("-")
        if name and version[:1].isdigit():
            return normalize(name)
    return None


def render_project_page(project: str, files: list[tuple[str, str]]) -> str:
    """files: (filename, sha256) pairs; links point at ../../files/."""
    links = "\n".join(
        f'<a href="../../files/{html.escape(f)}#sha256={digest}">{html.escape(f)}</a><br>' for f, digest in sorted(files)
    )
    return f"<!DOCTYPE html>\n<html><head><title>Links for {project}</title></head><body>\n{links}\n</body></html>\n"


def render_root_page(projects: list[str]) -> str:
    links = "\n".join(f'<a href="{p}/">{p}</a><br>' for p in sorted(projects))
    return f"<!DOCTYPE html>\n<html><head><title>Simple index</title></head><body>\n{links}\n</body></html>\n"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_index(files_dir: Path, simple_dir: Path) -> dict[str, list[str]]:
    """(Re)write simple/ from the files in files_dir; returns project -> filenames."""
    projects: dict[str, list[tuple[str, str]]] = {}
    for f in sorted(files_dir.iterdir()) if files_dir.is_dir() else []:
        project = project_of(f.name)
        if project:
            projects.setdefault(project, []).append((f.name, _sha256(f)))
    simple_dir.mkdir(parents=True, exist_ok=True)
    for project, files in projects.items():
        (simple_dir / project).mkdir(exist_ok=True)
        _write(simple_dir / project / "index.html", render_project_page(project, files))
    _write(simple_dir / "index.html", render_root_page(list(projects)))
    return {p: [f for f, _ in files] for p, files in projects.items()}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def request_key(requirements: list[str], no_deps: bool, sdist: bool) -> str:
    return json.dumps([sorted(requirements), no_deps, sdist])


class Wheelhouse:
    index_url = INDEX_URL
    trusted_host = CONTROLLER_IP

    def __init__(self, base: Path):
        self.base = base
        self.files = base / "files"
        self.simple = base / "simple"
        self.pidfile = base / "server.pid"
        self.records = base / "downloaded.json"

    @property
    def pip_args(self) -> list[str]:
        """pip options that make a lab host install from this wheelhouse only."""
        return ["--index-url", self.index_url, "--trusted-host", self.trusted_host]

    def add(self, requirements: list[str], *, no_deps: bool = False, sdist: bool = False) -> list[str]:
        """Download requirements (and their dependencies unless no_deps) into the wheelhouse.

        sdist=True fetches source distributions only. A request already fulfilled is not
        downloaded again. Returns the file names the request resolved to.
        """
        if not requirements:
            raise ValueError("wheelhouse.add needs at least one requirement")
        key = request_key(requirements, no_deps, sdist)
        known = self._recorded(key)
        if known is not None:
            return known
        # Download outside the lock (a big request elsewhere must not hold this one up), then
        # move the files in and rewrite the index under it.
        self.files.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix="incoming-", dir=self.base))
        try:
            got = self._download(requirements, no_deps, sdist, incoming)
            with file_lock(self.base / "lock"):
                for f in incoming.iterdir():
                    if not (self.files / f.name).exists():
                        os.replace(f, self.files / f.name)
                build_index(self.files, self.simple)
                records = self._records()
                records[key] = got
                _write(self.records, json.dumps(records, indent=1, sort_keys=True))
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return got

    def _records(self) -> dict:
        return json.loads(self.records.read_text()) if self.records.exists() else {}

    def _recorded(self, key: str) -> list[str] | None:
        with file_lock(self.base / "lock"):
            known = self._records().get(key)
        if known and all((self.files / f).exists() for f in known):
            return known
        return None

    def _download(self, requirements: list[str], no_deps: bool, sdist: bool, dest: Path) -> list[str]:
        """The controller's own `pip download` (its pip config picks the index); files already in
        the wheelhouse are reused through --find-links."""
        if sdist and no_deps:
            return self._fetch_sdists(requirements, dest)
        argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                "--dest", str(dest), "--find-links", str(self.files)]
        if no_deps:
            argv.append("--no-deps")
        if sdist:
            argv += ["--no-binary", ":all:"]
        proc = subprocess.run([*argv, *requirements], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise WheelhouseError(f"pip download {' '.join(requirements)} failed:\n{tail}")
        names = re.findall(r"(?:Saved|File was already downloaded) (\S+)", proc.stdout)
        return sorted({Path(n).name for n in names})

    def _fetch_sdists(self, requirements: list[str], dest: Path) -> list[str]:
        """Sdists fetched as files: `pip download` builds an sdist's metadata first, which runs its
        setup.py (KTransformers' imports torch and calls nvcc). pip's own finder and session pick
        the file, so the pip configuration still decides where from; the index's sha256 is checked."""
        proc = subprocess.run([sys.executable, "-c", _FETCH_SDISTS, str(dest), str(self.files), *requirements],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise WheelhouseError(f"fetching the sdists {' '.join(requirements)} failed:\n{tail}")
        return sorted(set(re.findall(r"^Saved (\S+)$", proc.stdout, flags=re.M)))


    # -- the HTTP server -------------------------------------------------------------------------

    def _identity(self) -> str:
        return str(self.base.resolve())

    def _serves_us(self, host: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{WHEELHOUSE_PORT}/wheelhouse-id.txt", timeout=2) as r:
                return r.read().decode().strip() == self._identity()
        except OSError:
            return False

    def serving(self) -> bool:
        return self._serves_us(CONTROLLER_IP) and self._serves_us("127.0.0.1")

    def ensure_serving(self) -> bool:
        """Start the server unless ours already runs; True when this call started it."""
        if self.serving():
            return False
        if port_open(CONTROLLER_IP, WHEELHOUSE_PORT) or port_open("127.0.0.1", WHEELHOUSE_PORT):
            from ktdeploy.lab.requirements import LabUnavailable

            raise LabUnavailable(
                f"port {WHEELHOUSE_PORT} is taken by another server (another lab state dir's wheelhouse?)",
                hint="use one lab state dir per machine (unset KTDEPLOY_LAB_DIR), or stop that server",
            )
        self.simple.mkdir(parents=True, exist_ok=True)
        self.files.mkdir(parents=True, exist_ok=True)
        if not (self.simple / "index.html").exists():
            build_index(self.files, self.simple)
        _write(self.base / "wheelhouse-id.txt", self._identity() + "\n")
        argv = [sys.executable, "-m", "ktdeploy.lab.wheelserver", str(self.base), str(WHEELHOUSE_PORT),
                CONTROLLER_IP, "127.0.0.1"]
        daemons.start(argv, self.pidfile, self.base / "server.log", self.serving)
        return True

    def stop(self) -> bool:
        return daemons.stop(self.pidfile)
