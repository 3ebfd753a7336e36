"""`ktdeploy download --fan-out --controller-seed DIR`: this machine is the seed. It downloads the
items into DIR with the hosts' own job runner (in this process: fetch, then sha256 of every file),
then serves the verified files over HTTP while every host fetches them with the mirror source.
A second run finds DIR complete and does not ask the source again.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ktdeploy import downloads
from ktdeploy.errors import KtdeployError
from ktdeploy.hostside import download_job as dj
from ktdeploy.hostside import download_state as ds
from ktdeploy.hostside import peer_serve
from ktdeploy.hostside.file_server import FileServer


def _client() -> str:
    return shutil.which("modelscope") or str(Path(sys.executable).with_name("modelscope"))


def download(root: Path, variant: str | None, source: str, endpoint: str | None,
             say: Callable[[str], None]) -> list[str]:
    """Every item of the variant complete and verified under root (fetched where it is not);
    their job names. KtdeployError naming the item that failed."""
    root = root.resolve()
    names = []
    for item in downloads.download_items(variant, source, str(root / "models")):
        job_dir = root / "jobs" / item["name"]
        job_dir.mkdir(parents=True, exist_ok=True)
        ds.write_json(job_dir / "job.json", {**item, "source": source, "endpoint": endpoint or "", "client": _client(),
                                             "cache_dir": str(root / "cache" / source), "max_workers": 4,
                                             "unset_proxy": source == "modelscope"})
        names.append(item["name"])
        job = dj.load_job(job_dir)
        manifest = ds.read_json(job_dir / "manifest.json")
        state = ds.read_json(job_dir / "state.json", {}) or {}
        if (manifest and manifest.get("job_digest") == dj.job_digest(job) and state.get("phase") == "complete"
                and ds.all_verified(manifest["files"], Path(job["dest"]), state.get("verified", {}))):
            say(f"fan-out: {item['name']} is complete in {job['dest']}")
            continue
        try:
            ds.write_json(job_dir / "manifest.json", dj.make_manifest(job))
        except dj.JobError as exc:
            raise KtdeployError(f"fan-out: {item['name']}: {exc}") from exc
        with contextlib.redirect_stdout(sys.stderr):  # the runner's lines; stdout may hold JSON
            rc = dj.run(job_dir)
        if rc != 0:
            error = (ds.read_json(job_dir / "state.json", {}) or {}).get("error")
            raise KtdeployError(f"fan-out: the download of {item['name']} on this machine failed: {error}",
                                hint="run the same command again: it resumes")
    return names


@contextlib.contextmanager
def serve(root: Path, names: list[str], address: str, port: int) -> Iterator[FileServer]:
    """The verified files of the named downloads under root, in the mirror layout, for the block."""
    jobs = root.resolve() / "jobs"
    try:
        files, sums = peer_serve.published(jobs, names)
    except peer_serve.PeerError as exc:
        raise KtdeployError(f"fan-out: {exc}") from exc
    files.update(peer_serve.write_sums(jobs / peer_serve.PEER_DIR, sums))
    server = FileServer(files.get, address, port, name="controller-seed")
    try:
        server.start()
    except OSError as exc:
        raise KtdeployError(f"cannot serve the model on {address}:{port} ({exc.strerror or exc})",
                            hint="pass --peer-address with an address of this machine the hosts reach, "
                                 "and a free port") from exc
    try:
        yield server
    finally:
        server.stop()
