"""A small OpenAI-compatible chat server for tests (stdlib only, so it also runs on lab hosts).

Routes: GET /v1/models, POST /v1/chat/completions (JSON or SSE stream), GET /health (Open WebUI's
shape). The reply is a fixed text, one word per token, with an optional delay per token. It binds
loopback (or a lab address given explicitly) and serves until it is stopped.

    python3 fake_openai.py --port 10002 --model test-model [--port-file F] [--token-delay 0.01]
    python3 fake_openai.py --wait-for http://127.0.0.1:10002/v1/models   # exit 0 once it answers (10 s max)
"""

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_REPLY = "<think>\nThe user wants a greeting. I will greet.\n</think>\n\nHello! I am a small test model."


def tokens(text):
    return re.findall(r"\s*\S+", text) or [text]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1"

    def log_message(self, fmt, *args):  # one line per request on stderr (journal when run as a unit)
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self):
        key = self.server.cfg.api_key
        if key and self.headers.get("Authorization") != "Bearer " + key:
            self._json(401, {"error": {"message": "invalid api key"}})
            return False
        return True

    def do_GET(self):
        cfg = self.server.cfg
        if self.path.startswith("/v1/") and not self._authorized():
            return
        if self.path == "/v1/models":
            data = [{"id": cfg.model, "object": "model", "created": 0, "owned_by": "ktdeploy-tests"}]
            self._json(200, {"object": "list", "data": data})
        elif self.path == "/health":
            self._json(200, {"status": True})
        else:
            self._json(404, {"error": {"message": "no route %s" % self.path}})

    def do_POST(self):
        cfg = self.server.cfg
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "no route %s" % self.path}})
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)  # read before any answer, so a kept-alive connection stays in step
        if not self._authorized():
            return
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON"}})
            return
        if req.get("model") not in (None, cfg.model):
            self._json(404, {"error": {"message": "model %r not found" % req.get("model")}})
            return
        toks = tokens(cfg.reply)
        limit = req.get("max_tokens") or req.get("max_completion_tokens")
        finish = "stop"
        if limit is not None and int(limit) < len(toks):
            toks, finish = toks[: int(limit)], "length"
        usage = {"prompt_tokens": 8, "completion_tokens": len(toks), "total_tokens": 8 + len(toks)}
        if req.get("stream"):
            self._stream(toks, finish, usage if (req.get("stream_options") or {}).get("include_usage") else None)
            return
        time.sleep(cfg.token_delay * len(toks))
        message = {"role": "assistant", "content": "".join(toks)}
        self._json(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                         "model": cfg.model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                         "usage": usage})

    def _stream(self, toks, finish, usage):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(obj):
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.server.cfg.model}
        self.wfile.write(b": keep-alive\n\n")
        send(dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        for tok in toks:
            time.sleep(self.server.cfg.token_delay)
            send(dict(base, choices=[{"index": 0, "delta": {"content": tok}, "finish_reason": None}]))
        send(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
        if usage:
            send(dict(base, choices=[], usage=usage))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(host="127.0.0.1", port=0, model="test-model", reply=DEFAULT_REPLY, token_delay=0.0, api_key=None):
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.cfg = argparse.Namespace(model=model, reply=reply, token_delay=token_delay, api_key=api_key)
    return server


def serve_in_thread(**kwargs):
    """Start a server on a free loopback port in a thread; call .shutdown() to stop it."""
    server = make_server(**kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_for(url, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return 0
        except OSError:
            time.sleep(0.1)
    sys.stderr.write("%s did not answer within %.0f s\n" % (url, timeout))
    return 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="test-model")
    ap.add_argument("--reply", default=DEFAULT_REPLY)
    ap.add_argument("--token-delay", type=float, default=0.0, help="seconds per streamed token")
    ap.add_argument("--api-key", help="require this bearer token on /v1/ routes")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("--wait-for", metavar="URL", help="only wait until URL answers 200 (10 s at most), then exit")
    args = ap.parse_args(argv)
    if args.wait_for:
        sys.exit(wait_for(args.wait_for))
    server = make_server(args.host, args.port, args.model, args.reply, args.token_delay, args.api_key)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(server.server_address[1]))
        os.replace(tmp, args.port_file)
    sys.stderr.write("fake-openai serving %s on %s:%d\n" % (args.model, args.host, server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
