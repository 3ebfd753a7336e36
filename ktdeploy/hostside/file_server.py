"""A read-only HTTP file server (stdlib only): GET and HEAD of the files a `resolve` function names,
byte ranges for resumed downloads, 404 for anything else.

The controller serves offline bundles with it (`ktdeploy.bundle.Server`); a seed host serves its
verified model files to the other hosts with it (`peer_serve.py`, copied there by model_download).
"""

from __future__ import annotations

import posixpath
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

BLOCK = 1 << 20
# resolve(relative path, without the leading "/"; a folder ends with "/") -> the file, or None
Resolve = Callable[[str], "Path | None"]
# on_request(status, raw path, first byte, body bytes sent, client address)
OnRequest = Callable[[int, str, int, int, str], None]


def relative(raw_path: str) -> str:
    """The request path made relative and normalised ("/a/./b" -> "a/b"); a folder keeps its "/"."""
    raw = unquote(urlsplit(raw_path).path)
    rel = posixpath.normpath(raw).lstrip("/")
    return rel + "/" if raw.endswith("/") and rel != "." else rel


class FileServer:
    """Serve on address:port (0: any free port) for the length of a `with` block, or start()/stop().

    `max_rate`: bytes per second per response (0: no limit). `active` and `idle_since` tell
    whether a transfer is going on and since when none has been."""

    def __init__(self, resolve: Resolve, address: str, port: int, *, max_rate: int = 0,
                 on_request: OnRequest | None = None, name: str = "file-server"):
        self.resolve, self.address, self.port, self.max_rate = resolve, address, port, max_rate
        self.on_request = on_request or (lambda *_: None)
        self.name = name
        self.active = 0
        self.idle_since = time.monotonic()
        self._lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def bind(self) -> "FileServer":
        """Take the port (OSError when it cannot); serving starts with start() or serve_forever()."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET

        class _Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = _Server((self.address, self.port), _handler(self))
        self.port = self.httpd.server_address[1]
        return self

    def start(self) -> "FileServer":
        if self.httpd is None:
            self.bind()
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=self.name, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _busy(self, delta: int) -> None:
        with self._lock:
            self.active += delta
            self.idle_since = time.monotonic()


def _handler(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self._send(body=False)

        def do_GET(self):  # noqa: N802
            self._send(body=True)

        def _send(self, body: bool) -> None:
            server._busy(+1)
            try:
                self._answer(body)
            finally:
                server._busy(-1)

        def _answer(self, body: bool) -> None:
            path = server.resolve(relative(self.path))
            if path is None or not path.is_file():
                server.on_request(404, self.path, 0, 0, self.client_address[0])
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end, status = 0, size - 1, 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if m and int(m.group(1)) < size:
                start, end, status = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1), 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Type", "text/html" if path.suffix == ".html" else "application/octet-stream")
            self.end_headers()
            sent = self._body(path, start, end - start + 1) if body else 0
            server.on_request(status, self.path, start, sent, self.client_address[0])

        def _body(self, path: Path, start: int, left: int) -> int:
            sent, began = 0, time.monotonic()
            step = max(16384, min(BLOCK, server.max_rate // 10)) if server.max_rate else BLOCK
            with open(path, "rb") as f:
                f.seek(start)
                while left > 0 and (block := f.read(min(step, left))):
                    if server.max_rate and (ahead := sent / server.max_rate - (time.monotonic() - began)) > 0:
                        time.sleep(ahead)
                    try:
                        self.wfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                        break
                    sent += len(block)
                    left -= len(block)
            return sent

    return Handler
