"""A TCP server that answers, but not as an SSH server: an HTTP-like one (replies to the client's
greeting with an HTTP error) or a silent one (accepts and says nothing)."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager


@contextmanager
def not_ssh_server(kind: str = "http", host: str = "127.0.0.1"):
    """Yields the port of a server bound to host; `kind` is "http" or "silent"."""
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        if kind == "http":
            try:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            conn.close()
        else:
            held.append(conn)  # keep it open, say nothing

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        srv.close()
        for conn in held:
            conn.close()
