"""Status over a fleet: every host is probed at once, not in waves (docs/benchmarks.md, "Status")."""

import threading

from ktdeploy import status as st
from ktdeploy.targets import parse_target

FLEET = 40  # more hosts than the 16 threads `on_hosts` used to have


def test_forty_hosts_are_probed_at_the_same_time(monkeypatch):
    # Each probe returns only once every host's probe has started: with fewer threads than hosts the
    # barrier breaks (after its timeout) and the hosts come back failed.
    barrier = threading.Barrier(FLEET, timeout=10)

    def probe(target, cfg, **kw):
        barrier.wait()
        return {"host": {"hostname": target.name}, "errors": [], "stages": {}, "services": [], "api": None,
                "webui": None, "deep": None, "download": {"state": "none"}}

    monkeypatch.setattr(st, "run_probe", probe)
    statuses = st.collect([parse_target(f"gpu{i}") for i in range(FLEET)])
    assert [s.verdict for s in statuses] == ["ok"] * FLEET, {s.name: s.error for s in statuses if s.error}
    assert [s.name for s in statuses] == [f"gpu{i}" for i in range(FLEET)]  # in the order given
