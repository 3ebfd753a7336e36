"""The probe's own small HTTP client (it does not import http.client: docs/benchmarks.md, "Status"),
against raw sockets that answer as the servers it meets do: Content-Length (llama.cpp, FastAPI JSON),
chunked (uvicorn's and llama.cpp's streams, lines split across chunks), close-delimited (HTTP/1.0),
and the broken cases (not HTTP, closed mid-body, silent)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from ktdeploy import status as st
from ktdeploy.hostside import status_probe as sp


class RawServer:
    """Accepts connections on loopback and answers each with the given raw bytes (a list: sent apart)."""

    def __init__(self, reply: list[bytes], pause: float = 0.0, hold: float = 0.0, waits: dict[int, float] | None = None):
        self.reply, self.pause, self.hold, self.waits = reply, pause, hold, waits or {}
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(v) for k, v in (ln.split(b":", 1) for ln in head.split(b"\r\n")[1:])
                               if k.strip().lower() == b"content-length"), 0)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest)
                try:
                    for i, part in enumerate(self.reply):
                        conn.sendall(part)
                        time.sleep(self.pause + self.waits.get(i, 0.0))
                except OSError:  # the client hung up mid-reply
                    continue
                time.sleep(self.hold)

    def spec(self):
        return {"port": self.port, "unit": "none"}

    def close(self):
        self.sock.close()


@pytest.fixture
def raw():
    made = []

    def make(reply, **kw):
        made.append(RawServer(reply, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def chunked(*parts: bytes) -> list[bytes]:
    return [b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\nX-Trailer: t\r\n\r\n"]


MODELS = json.dumps({"object": "list", "data": [{"id": "DeepSeek-R1"}]}).encode()


def test_content_length_reply_and_the_request_it_sent(raw, tmp_path):
    srv = raw([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(MODELS), MODELS])
    env = tmp_path / "api.env"
    env.write_text("KTDEPLOY_API_KEY=sekret\n")
    out = sp.check_api(dict(srv.spec(), env_file=str(env)), "DeepSeek-R1", 3)
    assert out["ok"] and out["listed"] and out["status"] == 200 and out["models"] == ["DeepSeek-R1"]
    req = srv.requests[0].decode()
    assert req.startswith("GET /v1/models HTTP/1.1\r\n") and f"Host: 127.0.0.1:{srv.port}\r\n" in req
    assert "Authorization: Bearer sekret\r\n" in req and "Connection: close\r\n" in req


def test_the_fixed_model_list_of_an_unpatched_ktransformers_0_2_1_is_named(raw):
    # recorded from ktransformers 0.2.1.post1 on an H200 host, started with --model_name DeepSeek-V3-tiny
    body = b'[{"id":"0","name":"ktranformers-model"}]'
    srv = raw([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body), body])
    out = sp.check_api(srv.spec(), "DeepSeek-V3-tiny", 3)
    assert out["ok"] and not out["listed"] and out["models"] == ["0"] and out["bare_list"]
    (check,) = [c for c in st.evaluate({"api": out, "services": [{"role": "api", "unit": "u", "state": "active"}],
                                         "services_declared": True}) if c.name == "api"]
    assert check.level == "failed" and check.detail.startswith("/v1/models lists 0, not DeepSeek-V3-tiny")
    assert "patch 0004" in check.detail


def test_post_body_and_a_chunked_json_reply_split_anywhere(raw):
    body = json.dumps({"choices": [{"finish_reason": "length"}]}).encode()
    srv = raw([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *chunked(body[:7], body[7:])], pause=0.01)
    status, data, _ = sp.http_json(srv.spec(), "POST", "/v1/chat/completions", 3, {"max_tokens": 1})
    assert status == 200 and data["choices"][0]["finish_reason"] == "length"
    head, _, sent = srv.requests[0].partition(b"\r\n\r\n")
    assert json.loads(sent) == {"max_tokens": 1} and b"Content-Length: %d" % len(sent) in head


def sse(*objs) -> list[bytes]:
    return [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs] + [b"data: [DONE]\n\n"]


def test_stream_in_chunks_that_split_lines_counts_every_token(raw):
    events = sse(*({"choices": [{"delta": {"content": w}}]} for w in ("one", " two", " three")),
                 {"choices": [], "usage": {"completion_tokens": 3}})
    blob = b": ping\n\n" + b"".join(events)
    cuts = [blob[i:i + 5] for i in range(0, len(blob), 5)]  # chunk borders fall inside lines
    srv = raw([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
               *chunked(*cuts)])
    out = sp.stream_check(srv.spec(), "m", 5, 16)
    assert out["ok"] and out["content_deltas"] == 3 and out["completion_tokens"] == 3, out
    assert out["status"] == 200 and out["ttft_s"] >= 0


def ktransformers_chunk(text: str) -> bytes:
    # the shape of KTransformers 0.2.1.post1's stream, recorded on an H200 host ("data:" without a space)
    return b"data:" + json.dumps({"id": "1f7f", "object": "chat.completion.chunk", "created": 1796163514,
                                  "choices": [{"index": 0, "delta": {"content": text, "role": "assistant"},
                                               "finish_reason": None}]}).encode() + b"\n\n"


def test_deep_check_hangs_up_on_an_engine_that_ignores_max_tokens(raw):
    # 200 tokens, 50 ms apart, and no end: what a KTransformers server does with max_tokens 1 (it runs to
    # its --max_new_tokens); the probe must take its tokens and go, not wait for 10 s of generation
    srv = raw([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
               *chunked(*(ktransformers_chunk(f"t{i} ") for i in range(200)))], pause=0.05)
    started = time.monotonic()
    out = sp.deep_check(srv.spec(), "DeepSeek-V3-tiny", 30, 4, "ktransformers")
    assert time.monotonic() - started < 5, out
    assert out["completion"]["ok"] and out["completion"]["first_token_only"] and out["completion"]["elapsed_s"] >= 0
    assert out["stream"]["ok"] and out["stream"]["stopped_after"] == 4 and out["stream"]["completion_tokens"] == 4
    bodies = [json.loads(r.partition(b"\r\n\r\n")[2]) for r in srv.requests]
    assert [b["stream"] for b in bodies] == [True, True] and bodies[0]["messages"][0]["content"] == "ping"
    checks = {c.name: c for c in st.evaluate({"deep": out})}
    assert checks["completion"].level == "ok" and "this engine ignores max_tokens" in checks["completion"].detail
    # KTransformers' streamer sends text at word ends and no usage chunk: what is counted is chunks, and said so
    assert out["stream"]["counts"] == "chunks"
    assert checks["stream"].level == "ok" and "(4 streamed chunks, no token count sent, stopped there)" in checks["stream"].detail
    assert " chunks/s " in checks["stream"].detail


def test_the_think_tag_a_ktransformers_server_sends_before_prefill_is_not_the_first_token(raw):
    # --force_think: KTransformers 0.2.1.post1 and v0.2.3post2 stream "<think>\n" first, then prefill (recorded
    # on the H200: 0.06 s to that chunk, seconds to the first token on a fresh server); 0.5 s of prefill here
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = chunked(ktransformers_chunk("<think>\n"), *(ktransformers_chunk(f"t{i} ") for i in range(50)))
    srv = raw([head, *parts], pause=0.01, waits={1: 0.5})
    out = sp.deep_check(srv.spec(), "DeepSeek-V3-tiny", 30, 4, "ktransformers")
    assert out["completion"]["ok"] and out["completion"]["forced_prefix"] and out["completion"]["elapsed_s"] >= 0.5, out
    stream = out["stream"]
    assert stream["ok"] and stream["forced_prefix"] and stream["ttft_s"] >= 0.5 and stream["completion_tokens"] == 4
    assert stream["stopped_after"] == 4 and stream["tokens_per_s"] > 10  # 3 gaps of ~10 ms, not the prefill's 0.5 s
    checks = {c.name: c for c in st.evaluate({"deep": out})}
    assert "after the server's own <think>" in checks["completion"].detail
    # other engines: a <think> the model streams is its token
    srv = raw([head, *parts], pause=0.01, waits={1: 0.5})
    out = sp.stream_check(srv.spec(), "m", 30, 4, hang_up=True)
    assert out["ok"] and "forced_prefix" not in out and out["ttft_s"] < 0.5 and out["completion_tokens"] == 4


def test_deep_check_of_other_engines_waits_for_the_servers_end(raw):
    srv = raw([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
               *chunked(*(ktransformers_chunk(f"t{i} ") for i in range(6)), b"data: [DONE]\n\n")])
    out = sp.stream_check(srv.spec(), "m", 5, 4)
    assert out["ok"] and out["content_deltas"] == 6 and "stopped_after" not in out


def test_the_engine_comes_from_the_release_else_the_serve_record():
    serve = {"serve": {"record": {"settings": {"engine": "llama.cpp"}}}}
    assert sp.served_engine(serve, None) == "llama.cpp"
    assert sp.served_engine(serve, {"engine": "ktransformers"}) == "ktransformers"
    assert sp.served_engine({}, {"current": "r1"}) is None


def test_close_delimited_stream_of_an_http_1_0_server(raw):
    srv = raw([b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
               *sse({"choices": [{"delta": {"content": "a"}}]}, {"choices": [{"delta": {"content": "b"}}]})])
    out = sp.stream_check(srv.spec(), "m", 5, 16)
    assert out["ok"] and out["content_deltas"] == 2


def test_http_error_status_with_its_body(raw):
    srv = raw([b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 24\r\n\r\n", b'{"error":"invalid key"} '])
    out = sp.check_api(srv.spec(), None, 3)
    assert not out["ok"] and out["status"] == 401 and out["error"].startswith("HTTP 401: {'error': 'invalid key'}")
    (check,) = [c for c in st.evaluate({"api": out, "services": [{"role": "api", "unit": "u", "state": "active"}],
                                         "services_declared": True}) if c.name == "api"]
    assert check.level == "failed"


@pytest.mark.parametrize("reply, words", [
    ([b"SSH-2.0-OpenSSH_9.2\r\n"], "not an HTTP/1.x reply"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b'{"data": ['], "closed 90 bytes before the end"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], "bad chunk size"),
    ([b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n"], "bad header line"),
    ([], "closed before the reply was complete"),
])
def test_broken_replies_are_errors_not_crashes(raw, reply, words):
    srv = raw(reply)
    out = sp.check_health(srv.spec(), 3)
    assert not out["ok"] and out["error"].startswith("HTTPException: ") and words in out["error"], out


def test_silent_server_times_out_and_closed_port_is_refused(raw):
    srv = raw([], hold=3)
    t0 = time.monotonic()
    assert sp.check_health(srv.spec(), 0.3)["error"] == "timed out"
    assert time.monotonic() - t0 < 2
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert sp.check_health({"port": port}, 1)["error"] == "connection refused (nothing listens on the port)"


def test_the_probe_does_not_import_http_client():
    """What this client is for: the probe's start-up without the email package and ssl."""
    code = ("import runpy, sys; runpy.run_path(%r); "  # loads the module without running main()
            "print(sorted(m for m in ('http.client', 'email.parser', 'ssl') if m in sys.modules))" % sp.__file__)
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
