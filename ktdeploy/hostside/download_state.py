"""Where a model download stands, computed from files on disk (stdlib only; runs on the host).

A download lives in a job directory (``{base_state_dir}/downloads/<name>/``):

* ``job.json``      what to fetch (written by the role; see download_job.py),
* ``manifest.json`` the expected files: ``{"files": [{"path", "size", "sha256"}], ...}``,
* ``state.json``    phase, error, byte samples for the rate, and the sha256 verification records,
* ``pid``, ``rc``, ``log`` from the detached runner.

Progress is bytes on disk (complete files plus the clients' partial files) against the manifest;
the rate comes from samples the runner appends to ``state.json``. Nothing here parses client output
except the ``error:`` lines shown to the user.

``python3 download_state.py [--json] DOWNLOADS_DIR [NAME...]`` prints the status of every download.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path

PARTIAL_SUFFIXES = (".incomplete", ".parallel_tmp")
OLD_SDK_TEMP = "._____temp"
RATE_WINDOW_S = 60.0
MAX_SAMPLES = 120
HASH_BLOCK = 8 << 20

PHASES = ("planned", "downloading", "verifying", "complete", "failed", "refused")


# -- patterns ----------------------------------------------------------------------------------
def split_patterns(patterns: list[str] | None) -> list[str]:
    """Comma-separated values become several patterns, as the modelscope CLI does."""
    out: list[str] = []
    for p in patterns or []:
        out.extend(x.strip() for x in p.split(",") if x.strip())
    return out


def _one(path: str, pat: str, style: str) -> bool:
    if style == "huggingface":
        if pat.endswith("/"):
            pat += "*"
        return fnmatch.fnmatchcase(path, pat)
    if fnmatch.fnmatchcase(path, pat):
        return True
    return ".*" in pat and fnmatch.fnmatchcase(path, pat.replace(".*", "*"))


def selected(path: str, includes: list[str], excludes: list[str], style: str = "modelscope") -> bool:
    """The client's rule: full repo path, fnmatch (``*`` crosses ``/``), excludes after includes.

    A trailing-slash directory pattern matches nothing for modelscope (as in the client) and the
    whole directory for huggingface.
    """
    inc, exc = split_patterns(includes), split_patterns(excludes)
    if inc and not any(_one(path, p, style) for p in inc):
        return False
    return not any(_one(path, p, style) for p in exc)


def exact_pattern(path: str) -> str:
    """A pattern matching only ``path`` (brackets escaped the fnmatch way)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in path)


# -- manifests from listings -------------------------------------------------------------------
def manifest_files_modelscope(listing: dict, includes, excludes) -> list[dict]:
    files = (listing.get("Data") or {}).get("Files") or []
    out = [{"path": f["Path"], "size": int(f.get("Size") or 0), "sha256": (f.get("Sha256") or "").lower() or None}
           for f in files if f.get("Type") != "tree"
           and selected(f["Path"], includes, excludes, "modelscope")]
    return sorted(out, key=lambda f: f["path"])


def manifest_files_hf(tree: list[dict], includes, excludes) -> list[dict]:
    out = []
    for e in tree:
        if e.get("type") != "file" or not selected(e["path"], includes, excludes, "huggingface"):
            continue
        lfs = e.get("lfs") or {}
        out.append({"path": e["path"], "size": int(e.get("size") or 0),
                    "sha256": (lfs.get("oid") or lfs.get("sha256") or "").lower() or None})
    return sorted(out, key=lambda f: f["path"])


def parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (text or ``*binary`` mode) → {path: sha256}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.lstrip(" ").lstrip("*")
        if len(digest) != 64 or not name:
            raise ValueError(f"not a sha256sum line: {line!r}")
        out[name.removeprefix("./")] = digest.lower()
    return out


def manifest_files_sums(sums: dict[str, str], sizes: dict[str, int], includes, excludes) -> list[dict]:
    return sorted(({"path": p, "size": sizes[p], "sha256": h} for p, h in sums.items()
                   if selected(p, includes, excludes, "modelscope")), key=lambda f: f["path"])


# -- bytes on disk -----------------------------------------------------------------------------
def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def partial_bytes(dest: Path, rel: str) -> int:
    """Bytes of ``rel`` held in partial files, in every layout the supported clients use."""
    target = dest / rel
    n = sum(_size(Path(str(target) + s)) for s in PARTIAL_SUFFIXES)
    n += sum(_size(Path(p)) for p in glob.glob(glob.escape(str(target)) + "_*_*"))  # parallel parts
    n += _size(dest / OLD_SDK_TEMP / rel)
    return n


def measure(files: list[dict], dest: Path) -> list[dict]:
    out = []
    for f in files:
        final = _size(dest / f["path"]) if (dest / f["path"]).is_file() else -1
        complete = final == f["size"]
        part = 0 if complete else partial_bytes(dest, f["path"])
        out.append({"path": f["path"], "size": f["size"], "complete": complete,
                    "final_size": final, "on_disk": f["size"] if complete else min(part, f["size"])})
    return out


def bytes_on_disk(files: list[dict], dest: Path) -> int:
    return sum(m["on_disk"] for m in measure(files, dest))


def remaining_bytes(files: list[dict], dest: Path) -> int:
    return sum(m["size"] - m["on_disk"] for m in measure(files, dest))


# -- rate and ETA ------------------------------------------------------------------------------
def add_sample(samples: list, now: float, nbytes: int) -> list:
    return (list(samples) + [[round(now, 3), int(nbytes)]])[-MAX_SAMPLES:]


def rate(samples: list, window: float = RATE_WINDOW_S) -> float | None:
    """Bytes per second over the last ``window`` seconds of samples; None with fewer than two."""
    if len(samples) < 2:
        return None
    t_last, b_last = samples[-1]
    first = next((s for s in samples if t_last - s[0] <= window), samples[-2])
    if first is samples[-1]:
        first = samples[-2]
    dt = t_last - first[0]
    if dt <= 0:
        return None
    return max(0.0, (b_last - first[1]) / dt)


def eta(remaining: int, bps: float | None) -> float | None:
    if remaining <= 0:
        return 0.0
    if not bps:
        return None
    return remaining / bps


# -- verification ------------------------------------------------------------------------------
def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
    return h.hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_is_current(record: dict | None, path: Path, expected: dict) -> bool:
    """A verification record still holds when the file has not changed since it was hashed."""
    if not record or not path.is_file():
        return False
    return (record.get("sha256") == expected.get("sha256") and record.get("size") == expected["size"]
            and record == {**record, **_stamp(path)})


def verify(files: list[dict], root: Path, records: dict, rehash: bool = False, progress=None) -> tuple[dict, list[str]]:
    """Check every file under ``root``: size always, sha256 unless a current record says it matched.

    Returns (new records, problems). A file without a listed sha256 is checked by size only.
    """
    records = dict(records)
    problems = []
    for f in files:
        path = root / f["path"]
        if not path.is_file():
            problems.append(f"{f['path']}: missing")
            records.pop(f["path"], None)
            continue
        size = path.stat().st_size
        if size != f["size"]:
            problems.append(f"{f['path']}: size {size} != expected {f['size']}")
            records.pop(f["path"], None)
            continue
        if not f.get("sha256"):
            records[f["path"]] = {"sha256": None, **_stamp(path)}
            continue
        if not rehash and record_is_current(records.get(f["path"]), path, f):
            if progress:
                progress(size)
            continue
        digest = sha256_file(path, progress)
        if digest != f["sha256"]:
            problems.append(f"{f['path']}: sha256 {digest} != expected {f['sha256']}")
            records.pop(f["path"], None)
        else:
            records[f["path"]] = {"sha256": digest, **_stamp(path)}
    return records, problems


def all_verified(files: list[dict], root: Path, records: dict) -> bool:
    """Every file is in place with its size and a current record (no hashing)."""
    for f in files:
        path = root / f["path"]
        rec = records.get(f["path"])
        if not path.is_file() or path.stat().st_size != f["size"]:
            return False
        if f.get("sha256") and not record_is_current(rec, path, f):
            return False
        if not f.get("sha256") and not rec:
            return False
    return True


# -- disk --------------------------------------------------------------------------------------
def free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def disk_problem(need: int, free: int, reserve: int, where: str) -> str | None:
    if free - reserve >= need:
        return None
    return (f"not enough disk space on {where}: {fmt_bytes(need)} left to fetch, {fmt_bytes(free)} free"
            f" (keeping {fmt_bytes(reserve)} in reserve); free {fmt_bytes(need + reserve - free)} or"
            f" point the model directory at a bigger disk")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# -- job directory -----------------------------------------------------------------------------
def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, doc) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def runner_alive(job_dir: Path) -> bool:
    """The detached runner is alive when its pid exists and still runs download_job.py."""
    try:
        pid = int((job_dir / "pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"download_job" in cmdline and str(job_dir).encode() in cmdline


def error_lines(log: Path, limit: int = 5) -> list[str]:
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines()]
    return [ln for ln in lines if ln.startswith(("error:", "Error:", "ERROR", "ktdeploy:"))][-limit:]


def status(job_dir: Path, now: float | None = None) -> dict:
    """The JSON status of one download (what ``ktdeploy download --wait`` and ``status`` show)."""
    now = time.time() if now is None else now
    job = read_json(job_dir / "job.json", {})
    manifest = read_json(job_dir / "manifest.json")
    state = read_json(job_dir / "state.json", {})
    rc_text = (job_dir / "rc").read_text().strip() if (job_dir / "rc").is_file() else ""
    alive = runner_alive(job_dir)
    phase = state.get("phase", "planned" if manifest else "unknown")
    if phase in ("downloading", "verifying") and not alive:
        phase = "interrupted"
    out = {"name": job_dir.name, "source": job.get("source"), "repo": job.get("repo"),
           "dest": job.get("dest"), "phase": phase, "running": alive,
           "rc": int(rc_text) if rc_text.lstrip("-").isdigit() else None,
           "error": state.get("error"), "session": state.get("session")}
    if not manifest or phase == "refused":  # refused before fetching: an older manifest is not its progress
        return {**out, "files": 0, "total_bytes": None, "done_bytes": None, "percent": None,
                "rate_bps": None, "eta_s": None}
    files = manifest["files"]
    dest = Path(job.get("dest", manifest.get("dest", "")))
    total = sum(f["size"] for f in files)
    m = measure(files, dest)
    done = sum(x["on_disk"] for x in m)
    live = alive and phase == "downloading"
    samples = add_sample(state.get("samples", []), now, done) if live else state.get("samples", [])
    bps = rate(samples) if live else None
    verified = state.get("verified", {})
    out.update({
        "files": len(files), "files_complete": sum(x["complete"] for x in m),
        "files_verified": sum(1 for f in files if f["path"] in verified),
        "total_bytes": total, "done_bytes": done,
        "percent": round(100.0 * done / total, 2) if total else 100.0,
        "rate_bps": bps, "eta_s": eta(total - done, bps) if phase == "downloading" else None,
        "verify_done_bytes": state.get("verify_done_bytes"),
    })
    if phase in ("failed", "interrupted") and not out["error"]:
        out["error"] = "; ".join(error_lines(job_dir / "log")) or None
    return out


def status_all(downloads_dir: Path, names: list[str] | None = None, now: float | None = None) -> list[dict]:
    if not downloads_dir.is_dir():
        return []
    dirs = sorted(p for p in downloads_dir.iterdir() if (p / "job.json").is_file())
    if names:
        dirs = [d for d in dirs if d.name in names]
    return [status(d, now) for d in dirs]


def _human(s: dict) -> str:
    pct = "?" if s.get("percent") is None else f"{s['percent']:.1f}%"
    rate_s = f" {fmt_bytes(s['rate_bps'])}/s" if s.get("rate_bps") else ""
    eta_s = f" eta {int(s['eta_s'])}s" if s.get("eta_s") else ""
    err = f"  {s['error']}" if s.get("error") else ""
    return f"{s['name']}: {s['phase']} {pct}{rate_s}{eta_s}{err}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    if not args:
        print("usage: download_state.py [--json] DOWNLOADS_DIR [NAME...]", file=sys.stderr)
        return 2
    result = status_all(Path(args[0]), args[1:] or None)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        for s in result:
            print(_human(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
