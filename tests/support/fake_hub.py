"""A fake ModelScope hub and a plain HTTP mirror, serving generated repos from a directory.

The real modelscope client talks to it through ``MODELSCOPE_ENDPOINT`` (protocol notes:
research/downloads.md §2). Routes:

* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=`` — the listing, with
  ``Size`` and ``Sha256`` per file;
* ``GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=`` — a file, with ``Range`` support;
* ``GET /api/v1/models/{owner}/{name}`` and ``/revisions`` — repo info, for probes and old clients;
* ``GET /api/models/{owner}/{name}/revision/{rev}`` and ``.../tree/{rev}``, ``GET|HEAD
  /{owner}/{name}/resolve/{rev}/{path}`` — the Hugging Face routes (``HF_ENDPOINT``);
* ``GET|HEAD /mirror/{owner}/{name}/[path]`` — the mirror: an HTML directory index, the files
  (``Range`` too), and ``SHA256SUMS`` at the repo root.

Anything else is a 404 with the hub's JSON error shape. Every response is logged in
``requests`` (method, path, file, range start, status, body bytes sent) so tests can count the
bytes a resume fetched again. ``throttle_bps`` slows file bodies; ``corrupt(path)`` serves one
file with flipped bytes while the listing keeps the true sha256.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GGUF_REPO = "unsloth/DeepSeek-R1-GGUF"
CONFIG_REPO = "deepseek-ai/DeepSeek-R1"
VARIANT = "DeepSeek-R1-UD-IQ1_S"
COMMIT = "5ac8e3c0e1b9f4d1c2a7b6e5d4c3b2a190817263"
SEND_BLOCK = 64 * 1024


def shard_paths(variant: str = VARIANT, count: int = 3) -> list[str]:
    return [f"{variant}/{variant}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _fill(path: Path, size: int, seed: str) -> None:
    """Deterministic pseudo-random content; a repeated 1 MiB block keeps generation fast."""
    block = random.Random(seed).randbytes(min(size, 1 << 20) or 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left > 0:
            f.write(block[:left])
            left -= len(block)


def make_gguf_repo(root: Path, shard_size: int = 3_000_001, variant: str = VARIANT,
                   count: int = 3, other_variants: tuple[str, ...] = ("DeepSeek-R1-UD-IQ1_M",)) -> Path:
    """unsloth/DeepSeek-R1-GGUF: ``count`` shards of ``variant`` (sizes differ slightly) plus decoys."""
    repo = root / GGUF_REPO
    for i, rel in enumerate(shard_paths(variant, count)):
        _fill(repo / rel, shard_size - i * 1000, rel)
    for other in other_variants:
        for rel in shard_paths(other, 2):
            _fill(repo / rel, 4096, rel)
    (repo / "README.md").write_text("# DeepSeek-R1-GGUF (fake)\n")
    (repo / "config.json").write_text('{"model_type": "deepseek_v3"}\n')
    return repo


CONFIG_FILES = {
    "config.json": '{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3"}\n',
    "configuration.json": '{"framework": "pytorch", "task": "text-generation"}\n',
    "generation_config.json": '{"temperature": 0.6}\n',
    "tokenizer_config.json": '{"model_max_length": 16384}\n',
    "tokenizer.json": json.dumps({"model": {"vocab": {f"t{i}": i for i in range(2000)}}}),
    "configuration_deepseek.py": "# configuration (fake)\n",
    "modeling_deepseek.py": "# modeling (fake)\n",
    "model.safetensors.index.json": '{"weight_map": {}}\n',
    "LICENSE": "MIT (fake)\n",
    "README.md": "# DeepSeek-R1 (fake)\n",
}


def make_config_repo(root: Path, safetensors: int = 3, safetensors_size: int = 200_000) -> Path:
    """deepseek-ai/DeepSeek-R1: config, tokenizer and code files, plus weights that must be skipped."""
    repo = root / CONFIG_REPO
    repo.mkdir(parents=True, exist_ok=True)
    for rel, text in CONFIG_FILES.items():
        (repo / rel).write_text(text)
    _fill(repo / "figures" / "benchmark.jpg", 20_000, "jpg")
    for i in range(1, safetensors + 1):
        _fill(repo / f"model-{i:05d}-of-{163:06d}.safetensors", safetensors_size, f"st{i}")
    return repo


@dataclass
class Served:
    method: str
    path: str
    file: str | None
    start: int
    status: int
    sent: int


@dataclass
class FakeHub:
    """Serve every repo found two levels below ``root`` (``root/owner/name``)."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    throttle_bps: int | None = None
    requests: list[Served] = field(default_factory=list)
    _corrupt: set[tuple[str, str]] = field(default_factory=set)
    _sha: dict[Path, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mirror_url(self) -> str:
        return f"{self.url}/mirror"

    # -- test controls ---------------------------------------------------------------------
    def corrupt(self, repo_id: str, path: str, on: bool = True) -> None:
        (self._corrupt.add if on else self._corrupt.discard)((repo_id, path))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def bytes_sent(self, file: str | None = None) -> int:
        """Body bytes sent for one file, or for all files (listings and indexes not counted)."""
        with self._lock:
            return sum(r.sent for r in self.requests if r.file and (file is None or r.file == file))

    def file_requests(self, file: str | None = None) -> list[Served]:
        with self._lock:
            return [r for r in self.requests if r.file and (file is None or r.file == file)]

    # -- repo content ----------------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> Path | None:
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
            return None
        d = self.root / parts[0] / parts[1]
        return d if d.is_dir() else None

    def sha256(self, path: Path) -> str:
        key = path.resolve()
        with self._lock:
            known = self._sha.get(key)
        if known is None:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            known = h.hexdigest()
            with self._lock:
                self._sha[key] = known
        return known

    def files(self, repo_id: str) -> list[str]:
        d = self.repo_dir(repo_id)
        if d is None:
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            for name in sorted(filenames):
                out.append(Path(dirpath, name).relative_to(d).as_posix())
        return out

    def listing(self, repo_id: str, root: str = "") -> list[dict]:
        d = self.repo_dir(repo_id)
        assert d is not None
        entries: dict[str, dict] = {}
        for rel in self.files(repo_id):
            if root and not rel.startswith(root.rstrip("/") + "/"):
                continue
            parts = rel.split("/")
            for i in range(1, len(parts)):
                tree = "/".join(parts[:i])
                entries.setdefault(tree, _entry(tree, "tree", 0, ""))
            p = d / rel
            entries[rel] = _entry(rel, "blob", p.stat().st_size, self.sha256(p))
        return list(entries.values())

    def log(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)


@contextmanager
def serving_repos(root: Path, host: str = "127.0.0.1", throttle_bps: int | None = None,
                  **gguf) -> Iterator[FakeHub]:
    """The GGUF repo (make_gguf_repo with `gguf`'s arguments) and the config repo made under root,
    served on host for the length of the block."""
    make_gguf_repo(root, **gguf)
    make_config_repo(root)
    with FakeHub(root, host=host, throttle_bps=throttle_bps) as hub:
        yield hub


def _entry(path: str, kind: str, size: int, sha: str) -> dict:
    return {"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": kind, "Size": size,
            "Sha256": sha, "IsLFS": kind == "blob" and size > 100_000,
            "Mode": "040000" if kind == "tree" else "100644", "Revision": COMMIT,
            "CommitMessage": "upload", "CommittedDate": 1737000000, "CommitterName": "fake",
            "InCheck": False, "Id": hashlib.sha1(path.encode()).hexdigest()}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet; the request log is self.fake.requests
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing ---------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        if parts[:3] == ["api", "v1", "models"] and len(parts) >= 5:
            repo_id = f"{parts[3]}/{parts[4]}"
            rest = parts[5:]
            if self.fake.repo_dir(repo_id) is None:
                return self._json(404, {"Code": 404, "Success": False,
                                        "Message": f"model {repo_id} not found", "RequestId": "0" * 32})
            if rest == ["repo", "files"]:
                files = self.fake.listing(repo_id, query.get("Root", ""))
                return self._json(200, {"Code": 200, "Success": True, "Message": "success",
                                        "RequestId": "0" * 32, "Data": {"Files": files, "IsVisual": 0}})
            if rest == ["repo"] and "FilePath" in query:
                return self._file(repo_id, query["FilePath"], head)
            if rest == ["revisions"]:
                return self._json(200, {"Code": 200, "Success": True, "Data": {"RevisionMap": {
                    "Branches": [{"Revision": "master", "CreatedAt": 1737000000}], "Tags": []}}})
            if not rest:
                return self._json(200, {"Code": 200, "Success": True,
                                        "Data": {"Name": parts[4], "Path": parts[3], "Revision": "master"}})
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            return self._hf_api(f"{parts[2]}/{parts[3]}", parts[4], query)
        if len(parts) >= 5 and parts[2] == "resolve" and self.fake.repo_dir(f"{parts[0]}/{parts[1]}"):
            return self._file(f"{parts[0]}/{parts[1]}", "/".join(parts[4:]), head, hf=True)
        if parts[:1] == ["mirror"] and len(parts) >= 3:
            repo_id = f"{parts[1]}/{parts[2]}"
            if self.fake.repo_dir(repo_id) is not None:
                rel = "/".join(parts[3:])
                if rel == "SHA256SUMS":
                    return self._sums(repo_id, head)
                if rel == "" or url.path.endswith("/"):
                    return self._index(repo_id, rel, head)
                return self._file(repo_id, rel, head)
        return self._json(404, {"Code": 404, "Success": False, "Message": f"{url.path} not found",
                                "RequestId": "0" * 32})

    # -- responses -------------------------------------------------------------------------
    def _send_body(self, status: int, ctype: str, body: bytes, head: bool, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.fake.log(Served(self.command, self.path, None, 0, status, 0 if head else len(body)))

    def _json(self, status: int, doc, headers: dict | None = None) -> None:
        self._send_body(status, "application/json", json.dumps(doc).encode(), head=False, headers=headers)

    def _hf_api(self, repo_id: str, kind: str, query: dict) -> None:
        """The Hugging Face routes `hf download` needs: revision info and the recursive tree."""
        d = self.fake.repo_dir(repo_id)
        if d is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        files = self.fake.files(repo_id)
        if kind == "revision":
            return self._json(200, {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]})
        tree = []
        for rel in files:
            size = (d / rel).stat().st_size
            entry = {"type": "file", "path": rel, "size": size, "oid": hashlib.sha1(rel.encode()).hexdigest()}
            if size > 100_000:
                entry["lfs"] = {"oid": self.fake.sha256(d / rel), "size": size, "pointerSize": 134}
            tree.append(entry)
        self._json(200, tree)

    def _sums(self, repo_id: str, head: bool) -> None:
        d = self.fake.repo_dir(repo_id)
        lines = [f"{self.fake.sha256(d / rel)}  {rel}\n" for rel in self.fake.files(repo_id)]
        self._send_body(200, "text/plain", "".join(lines).encode(), head)

    def _index(self, repo_id: str, rel: str, head: bool) -> None:
        d = self.fake.repo_dir(repo_id) / rel
        if not d.is_dir():
            return self._json(404, {"Code": 404, "Message": "no such directory"})
        links = [f'<a href="{html.escape(p.name)}{"/" if p.is_dir() else ""}">{html.escape(p.name)}</a>'
                 for p in sorted(d.iterdir())]
        body = f"<html><body><pre>\n{chr(10).join(links)}\n</pre></body></html>\n".encode()
        self._send_body(200, "text/html", body, head)

    def _file(self, repo_id: str, rel: str, head: bool, hf: bool = False) -> None:
        d = self.fake.repo_dir(repo_id)
        path = d / rel
        if ".." in rel.split("/") or not path.is_file():
            return self._json(404, {"Code": 404, "Success": False, "Message": f"file {rel} not found",
                                    "RequestId": "0" * 32})
        total = path.stat().st_size
        start, end = 0, total - 1
        status = 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a or 0)
            end = min(int(b), total - 1) if b else total - 1
            if start >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.fake.log(Served(self.command, self.path, rel, start, 416, 0))
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if hf:
            lfs = total > 100_000
            etag = self.fake.sha256(path) if lfs else hashlib.sha1(rel.encode()).hexdigest()
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            if lfs:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(total))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        served = Served(self.command, self.path, rel, start, status, 0)
        self.fake.log(served)
        if head:
            return
        corrupt = (repo_id, rel) in self.fake._corrupt
        began = time.monotonic()
        with path.open("rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                block = f.read(min(SEND_BLOCK, left))
                if not block:
                    break
                if corrupt:
                    block = bytes(b ^ 0xFF for b in block[:16]) + block[16:]
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    break
                served.sent += len(block)
                left -= len(block)
                if self.fake.throttle_bps:
                    ahead = served.sent / self.fake.throttle_bps - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        if left:
            self.close_connection = True


def main() -> None:
    """Run a fake hub from the command line: ``python -m tests.support.fake_hub DIR [PORT]``."""
    import sys

    root = Path(sys.argv[1])
    if not (root / GGUF_REPO).is_dir():
        make_gguf_repo(root)
        make_config_repo(root)
    hub = FakeHub(root, port=int(sys.argv[2]) if len(sys.argv) > 2 else 0).start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
