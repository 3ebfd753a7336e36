"""Serve this host's verified model downloads to the other hosts of a fan-out (stdlib only; the
model_download role copies it to the host).

``python3 peer_serve.py start JOBS_DIR NAME... [--bind ADDR] [--port N] [--max-rate BPS] [--idle-exit S]``
    Publish the named downloads, each complete with every file verified, in the layout of the
    mirror source: ``/<owner>/<name>/<path>`` and a ``SHA256SUMS`` per repo written from the
    verified manifest. Takes the port, then serves from a detached process and prints one JSON
    line (url, pid, files, bytes). A server this script left running is stopped first. The server
    exits on ``stop``, or after ``--idle-exit`` seconds without a request in progress.

``python3 peer_serve.py stop JOBS_DIR``
    Stop that server and print what it served (requests, body bytes).

Exit 0, or 2 (a download is not complete, two downloads disagree on a file), 1 (the port cannot
be taken, other). Its pid, request log and sums live in ``JOBS_DIR/.peer/``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

try:
    from . import download_state as ds
    from .file_server import FileServer
except ImportError:  # run as a script on the host
    import download_state as ds  # type: ignore[no-redef]
    from file_server import FileServer  # type: ignore[no-redef]

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
PEER_DIR = ".peer"
SUMS = "SHA256SUMS"


class PeerError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def published(jobs_dir: Path, names: list[str]) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """({url path: file}, {repo: {path: sha256}}) of the named downloads, every one complete and
    verified (its verification records current); PeerError otherwise."""
    files: dict[str, Path] = {}
    sums: dict[str, dict[str, str]] = {}
    for name in names:
        job_dir = jobs_dir / name
        job = ds.read_json(job_dir / "job.json", {}) or {}
        manifest = ds.read_json(job_dir / "manifest.json")
        state = ds.read_json(job_dir / "state.json", {}) or {}
        if not job or not manifest:
            raise PeerError(f"{name}: no download of that name in {jobs_dir}", EXIT_BAD_INPUT)
        dest = Path(job["dest"])
        records = state.get("verified", {})
        if state.get("phase") != "complete" or not ds.all_verified(manifest["files"], dest, records):
            raise PeerError(f"{name}: the download is {state.get('phase', 'not started')}, not complete and "
                            f"verified; the seed serves only verified files", EXIT_BAD_INPUT)
        repo_sums = sums.setdefault(job["repo"], {})
        for f in manifest["files"]:
            digest = f.get("sha256") or records[f["path"]].get("sha256") or ds.sha256_file(dest / f["path"])
            if repo_sums.setdefault(f["path"], digest) != digest:
                raise PeerError(f"{name}: {job['repo']}/{f['path']} has sha256 {digest}, another download "
                                f"of the same repo has {repo_sums[f['path']]}", EXIT_BAD_INPUT)
            files[f"{job['repo']}/{f['path']}"] = dest / f["path"]
    return files, sums


def sums_text(sums: dict[str, str]) -> str:
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(sums.items()))


def write_sums(peer_dir: Path, sums: dict[str, dict[str, str]]) -> dict[str, Path]:
    out = {}
    for repo, entries in sums.items():
        path = peer_dir / "sums" / repo / SUMS
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sums_text(entries))
        out[f"{repo}/{SUMS}"] = path
    return out


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"peer_serve" in cmdline else None


def stop(jobs_dir: Path) -> dict:
    peer_dir = jobs_dir / PEER_DIR
    pid = _alive(peer_dir / "pid")
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(peer_dir / "pid"):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    (peer_dir / "pid").unlink(missing_ok=True)
    served = [json.loads(ln) for ln in _lines(peer_dir / "requests.log")]
    return {"action": "stopped" if pid else "none", "changed": bool(pid), "requests": len(served),
            "bytes_sent": sum(r["sent"] for r in served)}


def _lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def start(jobs_dir: Path, names: list[str], bind: str, port: int, max_rate: int, idle_exit: float) -> dict:
    stop(jobs_dir)
    peer_dir = jobs_dir / PEER_DIR
    peer_dir.mkdir(exist_ok=True)
    files, sums = published(jobs_dir, names)
    files.update(write_sums(peer_dir, sums))
    (peer_dir / "requests.log").write_text("")
    log_lock = threading.Lock()

    def log(status: int, path: str, first: int, sent: int, client: str) -> None:
        line = json.dumps({"t": round(time.time(), 3), "status": status, "path": path, "start": first, "sent": sent,
                           "client": client})
        with log_lock, open(peer_dir / "requests.log", "a") as f:
            f.write(line + "\n")

    server = FileServer(files.get, bind, port, max_rate=max_rate, on_request=log, name="peer-serve")
    try:
        server.bind()
    except OSError as exc:
        raise PeerError(f"cannot serve on {bind}:{port} ({exc.strerror or exc}); free the port or set "
                        f"model_download_peer_port") from exc
    pid = _detach(peer_dir / "pid", lambda: _serve(server, idle_exit))
    return {"action": "serving", "changed": True, "url": server.url, "pid": pid,
            "files": len(files) - len(sums), "bytes": sum(p.stat().st_size for p in files.values())}


def _detach(pid_file: Path, body) -> int:
    """Run body in a daemon (double fork, own session, no inherited stdio); returns its pid."""
    first = os.fork()
    if first == 0:
        os.setsid()
        second = os.fork()
        if second:
            pid_file.write_text(f"{second}\n")
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            body()
        finally:
            os._exit(0)
    os.waitpid(first, 0)
    return int(pid_file.read_text())


def _serve(server: FileServer, idle_exit: float) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    while not done.wait(1.0):
        if idle_exit and server.active == 0 and time.monotonic() - server.idle_since > idle_exit:
            break
    server.stop()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {"--bind": "0.0.0.0", "--port": "8766", "--max-rate": "0", "--idle-exit": "900"}
    rest = []
    while args:
        a = args.pop(0)
        if a in opts and args:
            opts[a] = args.pop(0)
        else:
            rest.append(a)
    if len(rest) < 2 or rest[0] not in ("start", "stop") or (rest[0] == "start" and len(rest) < 3):
        print(__doc__, file=sys.stderr)
        return EXIT_BAD_INPUT
    jobs_dir = Path(rest[1]).resolve()
    try:
        if rest[0] == "stop":
            doc = stop(jobs_dir)
        else:
            doc = start(jobs_dir, rest[2:], opts["--bind"], int(opts["--port"]), int(opts["--max-rate"]),
                        float(opts["--idle-exit"]))
    except PeerError as exc:
        print(json.dumps({"action": "failed", "changed": False, "error": str(exc)}), flush=True)
        return exc.code
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
