import socket

from ktdeploy.remote import on_hosts, run_script
from ktdeploy.targets import parse_target


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_host_is_reported_and_others_kept():
    bad = parse_target(f"nobody@127.0.0.1:{_closed_port()}")

    def fn(t):
        if t is bad:
            return run_script(t, "true")
        return "fine"

    good = parse_target("good-host")
    results = on_hosts([bad, good], fn)
    assert results[0].unreachable and "refused" in results[0].error
    assert results[1].ok and results[1].value == "fine"


def test_non_connection_error_is_not_unreachable():
    def fn(t):
        raise ValueError("boom")

    (r,) = on_hosts([parse_target("h")], fn)
    assert not r.unreachable and r.error == "ValueError: boom"
