"""Start, resume and run one model download on the host (stdlib only; the role copies it there).

``python3 download_job.py ensure JOB_DIR [--rehash]``
    Decide and act, printing one JSON line: ``running`` (a runner holds the job; nothing started),
    ``complete`` (every file in place and verified; nothing fetched, the source not asked; a state
    left ``refused``/``failed`` by an earlier run is set back to complete), or ``started`` (a detached
    tmux/screen session now runs the job). Before starting it lists the source, writes the
    manifest and refuses when the listing is empty or the disk lacks room for what is left.
    Exit 0, or 2 (bad input: unknown repo, nothing matched), 5 (not enough disk), 1 (other).

``python3 download_job.py run JOB_DIR [--rehash]``
    The session's body: fetch what is missing, sample bytes on disk into ``state.json``, then verify
    (size always, sha256 once per file) and write ``rc``. ModelScope goes through the pinned
    modelscope client; Hugging Face (``resolve`` URLs of the Hub or an HF_ENDPOINT mirror) and plain
    mirrors go through the resumable fetcher here: ``hf download`` (huggingface_hub 2.4) names its
    partial files per process, so a killed download starts over, and it does not check sha256.

``job.json`` keys: name, source (modelscope|huggingface|mirror), repo, revision, includes,
excludes, dest, endpoint, client, cache_dir, env, unset_proxy, total_timeout, max_workers,
disk_reserve_bytes, sample_interval.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

try:
    from . import download_state as ds
except ImportError:  # run as a script on the host
    import download_state as ds  # type: ignore[no-redef]

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NO_DISK = 1, 2, 5
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
DEFAULT_ENDPOINTS = {"modelscope": "https://modelscope.cn", "huggingface": "https://huggingface.co"}
HTTP_TIMEOUT = 60
SESSION_ATTEMPTS = 20
CHUNK = 1 << 20


class JobError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


# -- job files ---------------------------------------------------------------------------------
def load_job(job_dir: Path) -> dict:
    job = ds.read_json(job_dir / "job.json")
    if not isinstance(job, dict) or not job.get("repo") or not job.get("dest"):
        raise JobError(f"{job_dir}/job.json is missing or has no repo/dest", EXIT_BAD_INPUT)
    job.setdefault("source", "modelscope")
    job.setdefault("includes", [])
    job.setdefault("excludes", [])
    job.setdefault("revision", "main" if job["source"] == "huggingface" else "master")
    return job


def job_digest(job: dict) -> str:
    """What the job puts where. Not the endpoint: verified files stay complete whichever mirror (or an
    unreachable one) a later run names, so a re-run never lists or fetches them again."""
    keys = ("source", "repo", "revision", "includes", "excludes", "dest")
    return hashlib.sha256(json.dumps({k: job.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


STATE_LOCK = threading.RLock()  # the runner's threads (sampler, fetchers) share state.json


def update_state(job_dir: Path, **changes) -> dict:
    with STATE_LOCK:
        state = ds.read_json(job_dir / "state.json", {}) or {}
        state.update(changes)
        ds.write_json(job_dir / "state.json", state)
        return state


# -- listings ----------------------------------------------------------------------------------
def _opener(job: dict):
    if job.get("unset_proxy"):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _get(job: dict, url: str, headers: dict | None = None, method: str = "GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        return _opener(job).open(req, timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            raise JobError(f"{job['repo']}: {url} answered {exc.code}; check the repo id "
                           f"(and the token for a private repo)", EXIT_BAD_INPUT) from exc
        raise JobError(f"{url} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JobError(f"cannot reach {url}: {reason}; check the network, proxy settings and endpoint") from exc


def _endpoint(job: dict) -> str:
    return (job.get("endpoint") or DEFAULT_ENDPOINTS.get(job["source"], "")).rstrip("/")


def list_modelscope(job: dict) -> list[dict]:
    q = urllib.parse.urlencode({"Revision": job["revision"], "Recursive": "True"})
    url = f"{_endpoint(job)}/api/v1/models/{job['repo']}/repo/files?{q}"
    with _get(job, url, _auth_headers(job)) as r:
        listing = json.load(r)
    return ds.manifest_files_modelscope(listing, job["includes"], job["excludes"])


def list_huggingface(job: dict) -> list[dict]:
    rev = urllib.parse.quote(job["revision"], safe="")
    url = f"{_endpoint(job)}/api/models/{job['repo']}/tree/{rev}?recursive=true"
    headers = _auth_headers(job)
    tree: list[dict] = []
    for _ in range(10_000):  # pages; bounded
        with _get(job, url, headers) as r:
            tree.extend(json.load(r))
            link = r.headers.get("Link", "")
        nxt = [p.split(";")[0].strip(" <>") for p in link.split(",") if 'rel="next"' in p]
        if not nxt:
            break
        url = nxt[0]
    return ds.manifest_files_hf(tree, job["includes"], job["excludes"])


def _mirror_local(job: dict) -> Path | None:
    ep = _endpoint(job)
    if ep.startswith("file://"):
        return Path(urllib.parse.urlsplit(ep).path)
    if ep.startswith("/"):
        return Path(ep)
    return None


def list_mirror(job: dict) -> list[dict]:
    local = _mirror_local(job)
    if local is not None:
        sums_path = local / job["repo"] / "SHA256SUMS"
        if not sums_path.is_file():
            raise JobError(f"{sums_path} not found; a local mirror needs a SHA256SUMS file per repo "
                           f"(create it with `sha256sum` run inside the repo directory)", EXIT_BAD_INPUT)
        sums = ds.parse_sha256sums(sums_path.read_text())
        pick = {p: h for p, h in sums.items() if ds.selected(p, job["includes"], job["excludes"])}
        sizes = {p: (local / job["repo"] / p).stat().st_size for p in pick}
    else:
        base = f"{_endpoint(job)}/{job['repo']}"
        with _get(job, f"{base}/SHA256SUMS") as r:
            sums = ds.parse_sha256sums(r.read().decode())
        pick = {p: h for p, h in sums.items() if ds.selected(p, job["includes"], job["excludes"])}
        sizes = {}
        for p in pick:
            with _get(job, file_url(job, p), method="HEAD") as r:
                sizes[p] = int(r.headers["Content-Length"])
    return ds.manifest_files_sums(pick, sizes, [], [])


LISTERS = {"modelscope": list_modelscope, "huggingface": list_huggingface, "mirror": list_mirror}


def make_manifest(job: dict) -> dict:
    if job["source"] not in LISTERS:
        raise JobError(f"unknown source {job['source']!r}; use modelscope, huggingface or mirror", EXIT_BAD_INPUT)
    files = LISTERS[job["source"]](job)
    if not files:
        hint = ""
        if any(p.endswith("/") for p in ds.split_patterns(job["includes"])):
            hint = " (a directory pattern needs a trailing '*', e.g. 'DIR/*')"
        raise JobError(f"no file of {job['repo']} matches include {job['includes']} / exclude "
                       f"{job['excludes']}{hint}; check the patterns against the repo's file list",
                       EXIT_BAD_INPUT)
    return {"repo": job["repo"], "source": job["source"], "revision": job["revision"], "dest": job["dest"],
            "job_digest": job_digest(job), "files": files, "total_bytes": sum(f["size"] for f in files)}


# -- ensure ------------------------------------------------------------------------------------
def _try_lock(job_dir: Path):
    fd = os.open(job_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def session_name(job: dict) -> str:
    return "ktd-dl-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in job["name"])


def _start_detached(name: str, body: str, cwd: Path) -> None:
    """Run `sh -c body` in a detached tmux (else screen) session called `name`.

    `tmux new-session` fails with "server exited unexpectedly" when it reaches the user's tmux server
    just as that server exits (another download's session ended); that is retried, a bounded number
    of times.
    """
    if shutil.which("tmux"):
        subprocess.run(["tmux", "kill-session", "-t", f"={name}"], capture_output=True)
        cmd = ["tmux", "new-session", "-d", "-s", name, "sh", "-c", body]
    elif shutil.which("screen"):
        cmd = ["screen", "-dmS", name, "sh", "-c", body]
    else:
        raise JobError("neither tmux nor screen is installed; install one of them (the role does)")
    why = ""
    for attempt in range(SESSION_ATTEMPTS):
        r = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True)
        if r.returncode == 0:
            return
        why = (r.stderr or r.stdout).strip() or f"exit status {r.returncode}"
        if "duplicate session" in why:  # another ensure started it a moment ago
            return
        time.sleep(0.05 * (attempt + 1))
    raise JobError(f"{cmd[0]} could not start session {name} ({SESSION_ATTEMPTS} attempts): {why}; "
                   f"check that `{cmd[0]}` works for this user, then run the role again")


def start_session(job_dir: Path, job: dict, rehash: bool) -> str:
    name = session_name(job)
    me = shlex.quote(str(Path(__file__).resolve()))
    body = (f"{shlex.quote(sys.executable)} {me} run {shlex.quote(str(job_dir))}{' --rehash' if rehash else ''}"
            f" >>{shlex.quote(str(job_dir / 'log'))} 2>&1; rc=$?; [ -s {shlex.quote(str(job_dir / 'rc'))} ]"
            f" || echo $rc >{shlex.quote(str(job_dir / 'rc'))}")
    (job_dir / "rc").unlink(missing_ok=True)
    _start_detached(name, body, job_dir)
    for _ in range(200):  # until the runner holds the lock (or already finished)
        if ds.runner_alive(job_dir) or (job_dir / "rc").exists():
            break
        time.sleep(0.05)
    return name


def ensure(job_dir: Path, rehash: bool = False) -> dict:
    job = load_job(job_dir)
    fd = _try_lock(job_dir)
    if fd is None:
        state = ds.read_json(job_dir / "state.json", {}) or {}
        return {"action": "running", "changed": False, "session": state.get("session")}
    try:
        state = ds.read_json(job_dir / "state.json", {}) or {}
        manifest = ds.read_json(job_dir / "manifest.json")
        dest = Path(job["dest"])
        if (not rehash and manifest and manifest.get("job_digest") == job_digest(job)
                and ds.all_verified(manifest["files"], dest, state.get("verified", {}))):
            stale = state.get("phase") != "complete" or state.get("error")  # e.g. refused by an earlier run
            if stale:
                update_state(job_dir, phase="complete", error=None)
            return {"action": "complete", "changed": bool(stale), "files": len(manifest["files"]),
                    "total_bytes": manifest["total_bytes"]}
        try:
            manifest = make_manifest(job)
            ds.write_json(job_dir / "manifest.json", manifest)
            dest.mkdir(parents=True, exist_ok=True)
            need = ds.remaining_bytes(manifest["files"], dest)
            reserve = int(job.get("disk_reserve_bytes") or 0)
            problem = ds.disk_problem(need, ds.free_bytes(dest), reserve, str(dest))
            if problem:
                raise JobError(problem, EXIT_NO_DISK)
        except JobError as exc:  # refused before fetching anything; status shows why
            update_state(job_dir, phase="refused", error=str(exc))
            raise
        update_state(job_dir, phase="planned", error=None)
    finally:
        os.close(fd)
    session = start_session(job_dir, job, rehash)
    return {"action": "started", "changed": True, "session": session, "files": len(manifest["files"]),
            "total_bytes": manifest["total_bytes"], "remaining_bytes": need}


# -- run ---------------------------------------------------------------------------------------
def client_env(job: dict) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (job.get("env") or {}).items()})
    if job.get("unset_proxy"):
        for k in PROXY_VARS:
            env.pop(k, None)
    env.setdefault("TQDM_MININTERVAL", "10")
    if job["source"] == "modelscope":
        if job.get("endpoint"):
            env["MODELSCOPE_ENDPOINT"] = job["endpoint"]
        env["MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT"] = str(job.get("total_timeout") or 86400)
        if job.get("cache_dir"):
            env["MODELSCOPE_CACHE"] = job["cache_dir"]
    return env


def client_command(job: dict, todo: list[dict]) -> list[str]:
    """The modelscope command line, scoped to exactly the files still missing."""
    exact = [ds.exact_pattern(f["path"]) for f in todo]
    return [job.get("client") or "modelscope", "download", job["repo"], "--revision", job["revision"],
            "--local-dir", job["dest"], "--max-workers", str(job.get("max_workers") or 4), "--include", *exact]


def file_url(job: dict, path: str) -> str:
    rel = urllib.parse.quote(path)
    if job["source"] == "huggingface":
        return f"{_endpoint(job)}/{job['repo']}/resolve/{urllib.parse.quote(job['revision'], safe='')}/{rel}"
    return f"{_endpoint(job)}/{job['repo']}/{rel}"


def _auth_headers(job: dict) -> dict:
    var = {"modelscope": "MODELSCOPE_API_TOKEN", "huggingface": "HF_TOKEN"}.get(job["source"])
    token = var and ((job.get("env") or {}).get(var) or os.environ.get(var))
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch_http(job_dir: Path, job: dict, todo: list[dict], log) -> None:
    """Resumable fetch into ``<path>.incomplete``; renamed to the final path only when sha256 matches.

    Files are fetched ``max_workers`` at a time. The digest is computed while streaming, so each
    file is recorded as verified right away.
    """
    from concurrent.futures import ThreadPoolExecutor

    local = _mirror_local(job)
    dest = Path(job["dest"])
    def one(f: dict) -> None:
        for attempt in range(1, 4):
            digest = _fetch_one(job, local, dest, f)
            if digest:
                with STATE_LOCK:
                    state = ds.read_json(job_dir / "state.json", {}) or {}
                    records = {**state.get("verified", {}),
                               f["path"]: {"sha256": f.get("sha256") and digest, **ds._stamp(dest / f["path"])}}
                    update_state(job_dir, verified=records)
                return
            log(f"ktdeploy: sha256 mismatch for {f['path']} (attempt {attempt}/3)")
        raise JobError(f"{f['path']}: sha256 does not match the listing after 3 attempts; "
                       f"the source serves corrupt data")

    with ThreadPoolExecutor(max_workers=int(job.get("max_workers") or 4)) as pool:
        errors = [f.exception() for f in [pool.submit(one, f) for f in todo]]
    errors = [e for e in errors if e is not None]
    if errors:
        raise errors[0] if isinstance(errors[0], JobError) else JobError(str(errors[0]))


def _fetch_one(job: dict, local: Path | None, dest: Path, f: dict) -> str | None:
    final = dest / f["path"]
    part = Path(str(final) + ".incomplete")
    final.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > f["size"]:
        part.unlink()
        have = 0
    h = hashlib.sha256()
    if have:
        with part.open("rb") as p:
            while block := p.read(CHUNK):
                h.update(block)
    if local is not None:
        src = (local / job["repo"] / f["path"]).open("rb")
        src.seek(have)
    else:
        headers = {**_auth_headers(job), **({"Range": f"bytes={have}-"} if have else {})}
        src = _get(job, file_url(job, f["path"]), headers)
        if have and getattr(src, "status", 200) != 206:
            have, h = 0, hashlib.sha256()
            part.unlink(missing_ok=True)
    with src, part.open("ab" if have else "wb") as out:
        while have < f["size"] and (block := src.read(CHUNK)):
            out.write(block)
            h.update(block)
            have += len(block)
    if have != f["size"]:
        raise JobError(f"{f['path']}: transfer ended at {have} of {f['size']} bytes")
    if f.get("sha256") and h.hexdigest() != f["sha256"]:
        part.unlink()
        return None
    os.replace(part, final)
    return h.hexdigest()


class Sampler(threading.Thread):
    """Appends (time, bytes on disk) to state.json every interval while the client runs."""

    def __init__(self, job_dir: Path, files: list[dict], dest: Path, interval: float):
        super().__init__(daemon=True)
        self.job_dir, self.files, self.dest, self.interval = job_dir, files, dest, interval
        self.stop = threading.Event()

    def sample(self) -> None:
        nbytes = ds.bytes_on_disk(self.files, self.dest)
        with STATE_LOCK:
            state = ds.read_json(self.job_dir / "state.json", {}) or {}
            update_state(self.job_dir, samples=ds.add_sample(state.get("samples", []), time.time(), nbytes))

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()


def run(job_dir: Path, rehash: bool = False) -> int:
    fd = _try_lock(job_dir)
    if fd is None:
        print("ktdeploy: another runner holds this job; not starting a second one", flush=True)
        return 0
    (job_dir / "pid").write_text(f"{os.getpid()}\n")
    job = load_job(job_dir)
    dest = Path(job["dest"])
    manifest = ds.read_json(job_dir / "manifest.json")
    t0 = time.time()
    update_state(job_dir, phase="downloading", error=None, started=t0, finished=None,
                 session=session_name(job), samples=[[t0, ds.bytes_on_disk(manifest["files"], dest)]])
    print(f"ktdeploy: {job['source']} {job['repo']} -> {dest} ({len(manifest['files'])} files,"
          f" {ds.fmt_bytes(manifest['total_bytes'])})", flush=True)
    try:
        todo = [m for m, f in zip(ds.measure(manifest["files"], dest), manifest["files"]) if not m["complete"]]
        todo = [f for f in manifest["files"] if f["path"] in {m["path"] for m in todo}]
        if todo:
            _fetch(job_dir, job, manifest, todo)
        update_state(job_dir, phase="verifying", verify_done_bytes=0)
        _verify(job_dir, job, manifest, rehash)
    except JobError as exc:
        print(f"ktdeploy: error: {exc}", flush=True)
        update_state(job_dir, phase="failed", error=str(exc), finished=time.time())
        (job_dir / "rc").write_text(f"{EXIT_FAILED}\n")
        return EXIT_FAILED
    update_state(job_dir, phase="complete", error=None, finished=time.time())
    print(f"ktdeploy: complete in {time.time() - t0:.1f}s", flush=True)
    (job_dir / "rc").write_text("0\n")
    return 0


def _fetch(job_dir: Path, job: dict, manifest: dict, todo: list[dict]) -> None:
    sampler = Sampler(job_dir, manifest["files"], Path(job["dest"]), float(job.get("sample_interval") or 2))
    sampler.start()
    try:
        if job["source"] != "modelscope":
            fetch_http(job_dir, job, todo, lambda msg: print(msg, flush=True))
            return
        cmd = client_command(job, todo)
        print("ktdeploy: running " + shlex.join(cmd), flush=True)
        proc = subprocess.Popen(cmd, env=client_env(job), stdin=subprocess.DEVNULL)
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        rc = proc.wait()
        if rc != 0:
            errors = ds.error_lines(job_dir / "log")
            raise JobError(f"{Path(cmd[0]).name} exited {rc}" + (f": {errors[-1]}" if errors else ""))
        record_client_verified(job_dir, Path(job["dest"]), todo)
    finally:
        sampler.stop.set()
        sampler.join()
        sampler.sample()


def record_client_verified(job_dir: Path, dest: Path, fetched: list[dict]) -> None:
    """The modelscope client (snapshot mode) hashes while streaming and renames a file into place only
    when its sha256 matches the listing, so a file it just put there is recorded without hashing again."""
    with STATE_LOCK:
        records = dict((ds.read_json(job_dir / "state.json", {}) or {}).get("verified", {}))
        for f in fetched:
            path = dest / f["path"]
            if f.get("sha256") and path.is_file() and path.stat().st_size == f["size"]:
                records[f["path"]] = {"sha256": f["sha256"], **ds._stamp(path)}
        update_state(job_dir, verified=records)


def _verify(job_dir: Path, job: dict, manifest: dict, rehash: bool) -> None:
    dest = Path(job["dest"])
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] // (256 << 20) != (done[0] - n) // (256 << 20):
            update_state(job_dir, verify_done_bytes=done[0])

    records = (ds.read_json(job_dir / "state.json", {}) or {}).get("verified", {})
    records, problems = ds.verify(manifest["files"], dest, records, rehash, progress)
    update_state(job_dir, verified=records, verify_done_bytes=done[0])
    if problems:
        for p in problems:  # a corrupt file must not stay at its final path
            bad = dest / p.split(":", 1)[0]
            if "sha256" in p and bad.is_file():
                bad.unlink()
        raise JobError(f"{len(problems)} file(s) failed verification: " + "; ".join(problems[:3]))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    rehash = "--rehash" in args
    args = [a for a in args if a != "--rehash"]
    if len(args) != 2 or args[0] not in ("ensure", "run"):
        print(__doc__, file=sys.stderr)
        return EXIT_BAD_INPUT
    job_dir = Path(args[1]).resolve()
    try:
        if args[0] == "run":
            return run(job_dir, rehash)
        print(json.dumps(ensure(job_dir, rehash)), flush=True)
        return 0
    except JobError as exc:
        print(json.dumps({"action": "failed", "changed": False, "error": str(exc)}), flush=True)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
