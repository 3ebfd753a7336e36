"""Serve a directory over HTTP on several addresses (the wheelhouse's simple index).

`python -m ktdeploy.lab.wheelserver DIR PORT ADDR [ADDR...]`; stops on SIGTERM.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # one line per request would flood the log
        pass


def main(argv: list[str]) -> int:
    directory, port, *addrs = argv
    handler = functools.partial(_QuietHandler, directory=directory)
    servers = [ThreadingHTTPServer((a, int(port)), handler) for a in addrs]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"wheelserver: serving {directory} on port {port} of {', '.join(addrs)}", flush=True)
    stop.wait()
    for s in servers:
        s.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
