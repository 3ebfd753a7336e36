"""`ktdeploy chat`: one prompt to a host's API through an SSH tunnel, reasoning kept apart.

`open_client` finds the API from a status probe and reaches it; `reply` asks for a whole answer,
`stream_reply` yields it as ("reasoning"|"answer", text) parts; `api_errors` turns the OpenAI
client's errors into one line naming the cause and the fix.

The API binds 127.0.0.1 on the host, so the OpenAI client talks to a local port that Fabric forwards
to the host's loopback. DeepSeek-R1 writes its reasoning between `<think>` and `</think>`; the
tutorial pulls it out with `re.search(r'<think>(.*?)</think>', text, re.DOTALL)`. `split_think` does
the same for a whole reply, `ThinkSplitter` for a stream.
"""

from __future__ import annotations

import re
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from ktdeploy.errors import KtdeployError

OPEN, CLOSE = "<think>", "</think>"
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole reply.

    As the tutorial's regex: the text between the first `<think>`/`</think>` pair is the reasoning.
    R1 served without --force_think emits no opening tag (the chat template put it in the prompt), so
    a lone `</think>` also ends the reasoning. Without tags, everything is answer.
    """
    m = _THINK.search(text)
    if m:
        return m.group(1).strip(), (text[: m.start()] + text[m.end() :]).strip()
    if CLOSE in text:
        before, after = text.split(CLOSE, 1)
        return before.replace(OPEN, "").strip(), after.strip()
    if text.lstrip().startswith(OPEN):  # cut off while still thinking
        return text.lstrip()[len(OPEN) :].strip(), ""
    return "", text.strip()


class ThinkSplitter:
    """Feed streamed text pieces; get back ("reasoning"|"answer", text) parts as soon as they are known.

    A tag may arrive split over several pieces, so text that could still be the start of a tag is held
    back until the next piece (or `flush`).
    """

    def __init__(self) -> None:
        self.mode = "start"  # start -> reasoning -> answer, or start -> answer
        self.buf = ""
        self.after_close = False  # drop the blank lines between </think> and the answer

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.buf += piece
        out: list[tuple[str, str]] = []
        while True:
            if self.mode == "start":
                head = self.buf.lstrip()
                if head.startswith(OPEN):
                    self.buf, self.mode = head[len(OPEN) :], "reasoning"
                    continue
                if OPEN.startswith(head):  # empty, or a partial "<thi"
                    return out
                self.mode = "answer"
                continue
            tag = CLOSE if self.mode == "reasoning" else None
            if tag and tag in self.buf:
                before, self.buf = self.buf.split(tag, 1)
                if before:
                    out.append(("reasoning", before))
                self.mode, self.after_close = "answer", True
                continue
            keep = _partial_tag_len(self.buf, tag) if tag else 0
            text, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
            if self.mode == "answer" and self.after_close:
                text = text.lstrip("\n")
                self.after_close = not text
            if text:
                out.append((self.mode, text))
            return out

    def flush(self) -> list[tuple[str, str]]:
        text, self.buf = self.buf, ""
        if not text:
            return []
        return [("answer" if self.mode == "start" else self.mode, text)]


def _partial_tag_len(buf: str, tag: str) -> int:
    """How many trailing characters of buf could be the beginning of tag."""
    for n in range(min(len(tag) - 1, len(buf)), 0, -1):
        if tag.startswith(buf[-n:]):
            return n
    return 0


def free_local_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextmanager
def tunnel(conn, remote_host: str, remote_port: int, wait_s: float = 5.0) -> Iterator[int]:
    """Forward a free local port to remote_host:remote_port as seen from the host; yields the local port."""
    conn.open()
    local = free_local_port()
    with conn.forward_local(local, remote_port=remote_port, remote_host=remote_host, local_host="127.0.0.1"):
        deadline = time.monotonic() + wait_s
        while True:  # the forwarder binds in its own thread
            try:
                socket.create_connection(("127.0.0.1", local), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield local


@contextmanager
def api_port(target, remote_host: str, remote_port: int) -> Iterator[int]:
    """A port on this machine that reaches the API: the API's own for a local-connection target,
    else a forward over SSH."""
    if target.hostvars.get("ansible_connection") == "local":
        yield int(remote_port)
        return
    from ktdeploy.remote import connection

    with connection(target) as conn, tunnel(conn, remote_host, remote_port) as port:
        yield port


@contextmanager
def api_errors(host: str):
    """OpenAI client errors as one line naming the cause and the fix."""
    import openai

    try:
        yield
    except openai.AuthenticationError:
        raise KtdeployError(f"{host}: the API wants a key", hint="pass --api-key or set KTDEPLOY_API_KEY") from None
    except openai.APIStatusError as exc:
        raise KtdeployError(f"{host}: the API answered HTTP {exc.status_code}: {exc.message}") from None
    except openai.APIError as exc:
        raise KtdeployError(f"{host}: the API request failed: {exc}", hint=f"see `ktdeploy status {host}`") from None


def ready_api(target, probe: dict, spec: str | None = None) -> dict:
    """The probe's API entry when it answers; else KtdeployError naming why and where to look
    (`ktdeploy status SPEC`, SPEC being how the user named the host)."""
    api = probe.get("api")
    if not api or not api.get("ok"):
        why = (api or {}).get("error") or "no API service on this host"
        raise KtdeployError(f"{target.name}: the API is not ready ({why})",
                            hint=f"see `ktdeploy status {spec or target.name}`")
    return api


def default_model(api: dict) -> str | None:
    """The model the serving stage recorded, else the first one the API lists."""
    return api.get("expected_model") or (api.get("models") or [None])[0]


@contextmanager
def open_client(target, api: dict, *, api_key: str | None, timeout: float):
    """An OpenAI client for the host's API (through an SSH port forward unless the target is local)."""
    with api_port(target, api.get("address", "127.0.0.1"), api["port"]) as port:
        from openai import OpenAI

        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key or "ktdeploy", timeout=timeout)


def reply(client, model: str, prompt: str, max_tokens: int) -> dict:
    """One whole reply: {model, reasoning, answer, usage} (`ktdeploy chat --json`)."""
    messages = [{"role": "user", "content": prompt}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
    msg = r.choices[0].message
    reasoning, answer = split_think(msg.content or "")
    reasoning = getattr(msg, "reasoning_content", None) or reasoning
    usage = r.usage.model_dump() if r.usage else None
    return {"model": model, "reasoning": reasoning, "answer": answer, "usage": usage}


def stream_reply(client, model: str, prompt: str, max_tokens: int) -> Iterator[tuple[str, str]]:
    """A streamed reply as ("reasoning"|"answer", text) parts, as soon as each is known.

    A server's `reasoning_content` deltas are reasoning; content is split at `<think>`/`</think>`.
    """
    messages = [{"role": "user", "content": prompt}]
    splitter = ThinkSplitter()
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True)
    for chunk in stream:
        for choice in chunk.choices or []:
            delta = choice.delta
            extra = getattr(delta, "reasoning_content", None)
            if extra:
                yield "reasoning", extra
            if delta.content:
                yield from splitter.feed(delta.content)
    yield from splitter.flush()
