"""The run display, fed with job events recorded from real runs (fixtures/events/record.py)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from ktdeploy.display import LiveDisplay, PlainDisplay, RunState, make_display
from ktdeploy.engine import RunResult, _host_stats

FIXTURES = Path(__file__).parent / "fixtures" / "events"


def recorded(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["events"]


def result_of(events: list[dict], status: str = "failed") -> RunResult:
    stats = next(e["event_data"] for e in events if e["event"] == "playbook_on_stats")
    return RunResult(status=status, rc=2, artifact_dir=Path("/runs/20261129-site-abcd"), hosts=_host_stats(stats))


def plain_run(events: list[dict], **kw) -> str:
    out = io.StringIO()
    display = PlainDisplay(out, **kw)  # verbose=False: skipped tasks are counted, not listed
    for event in events:
        display.event(event)
    display.finish(result_of(events))
    return out.getvalue()


def test_plain_prints_one_line_per_task_result_and_host():
    lines = plain_run(recorded("converge"), verbose=True).splitlines()
    assert lines[0] == "PLAY Exercise every kind of event"
    assert lines[1].startswith("alpha  changed     Write a marker file (")
    assert lines[2] == "alpha  skipped     Skip this on every host"
    assert lines[3].startswith("alpha  ok          Wait for a slow command (")
    assert lines[5].startswith("alpha  failed      Fail on purpose (") and lines[5].endswith("exit 3: boom")


def test_skipped_tasks_are_counted_not_listed_unless_verbose():
    text = plain_run(recorded("converge"))
    assert " skipped " not in text.split("Recap")[0]
    assert "1 skipped task not listed (-v lists them)" in text
    assert "alpha  skipped     Skip this on every host" in plain_run(recorded("converge"), verbose=True)


def test_plain_dumps_failures_and_ends_with_recap_and_run_record():
    text = plain_run(recorded("converge"))
    dump = text[text.index("FAILED: alpha: Fail on purpose"):]
    assert "msg: non-zero return code" in dump and "rc: 3" in dump
    assert "stderr: boom" in dump and "stdout: partial output" in dump
    recap = text[text.index("Recap"):].splitlines()
    assert recap[1:3] == ["host   ok  changed  failed  unreachable  skipped",
                          "alpha   3        1       1            0        1"]
    assert text.rstrip().endswith("Run record: /runs/20261129-site-abcd")


def test_failed_loop_items_each_name_their_cause():
    """A looped task (service start, download start) fails per item: each failed item and why, not
    Ansible's "One or more items failed"."""
    text = plain_run(recorded("loop_failures"))
    assert "One or more items failed" not in text
    alpha = next(ln for ln in text.splitlines() if ln.startswith("alpha  failed"))
    assert alpha.endswith(": ktdeploy-api: exit 1: Job for ktdeploy-api.service failed: start-limit-hit; "
                          "ktdeploy-extra: exit 5: ktdeploy-extra.service not found")
    beta = next(ln for ln in text.splitlines() if ln.startswith("beta  failed"))
    assert beta.endswith(": DeepSeek-R1-UD-IQ1_S: DeepSeek-R1-UD-IQ1_S: cannot reach http://10.0.0.9/: Connection refused")
    dump = text[text.index("FAILED: alpha: Start each service"):text.index("FAILED: beta")].splitlines()
    assert dump[1:] == ["  item ktdeploy-api:", "    msg: non-zero return code", "    rc: 1",
                        "    stderr: Job for ktdeploy-api.service failed: start-limit-hit",
                        "    stdout: starting ktdeploy-api",
                        "  item ktdeploy-extra:", "    msg: non-zero return code", "    rc: 5",
                        "    stderr: ktdeploy-extra.service not found", "    stdout: starting ktdeploy-extra", ""]


def test_async_polls_are_heartbeats_when_the_interval_has_passed():
    # the recorded polls came 3.6 s and 5.9 s into the task
    assert "running" not in plain_run(recorded("converge"), heartbeat=30)
    lines = [ln for ln in plain_run(recorded("converge"), heartbeat=2).splitlines() if " running " in ln]
    assert lines == ["alpha  running     Wait for a slow command (3.6s, poll 1)",
                     "alpha  running     Wait for a slow command (5.9s, poll 2)"]


def test_timer_gives_heartbeats_during_a_silent_task():
    events = recorded("converge")
    start = next(i for i, e in enumerate(events) if e["event"] == "runner_on_start"
                 and e["event_data"]["task"] == "Wait for a slow command")
    out = io.StringIO()
    now = [0.0]
    display = PlainDisplay(out, heartbeat=30, clock=lambda: now[0])
    for event in events[: start + 1]:
        display.event(event)
    began = display.state.hosts["alpha"].since
    for offset in (10, 31, 40, 62, 125):
        now[0] = began + offset
        display.tick()
    beats = [ln for ln in out.getvalue().splitlines() if " running " in ln]
    assert beats == ["alpha  running     Wait for a slow command (31.0s)",
                     "alpha  running     Wait for a slow command (1m02s)",
                     "alpha  running     Wait for a slow command (2m05s)"]


def test_retries_show_the_attempt():
    state = RunState()
    notes = []
    for event in recorded("converge"):
        kind, host = state.apply(event)
        if kind == "heartbeat" and event["event"] == "runner_retry":
            notes.append(state.hosts[host].note)
    assert notes == ["attempt 1 of 5", "attempt 2 of 5"]


def test_unreachable_host_line_names_the_cause():
    text = plain_run(recorded("unreachable"))
    line = next(ln for ln in text.splitlines() if ln.startswith("down  unreachable"))
    assert "Connection refused" in line
    assert "UNREACHABLE: down: Write a marker file" in text


def test_ignored_failures_are_shown_but_not_dumped():
    events = copy.deepcopy(recorded("converge"))
    for event in events:
        if event["event"] == "runner_on_failed":
            event["event_data"]["ignore_errors"] = True
    text = plain_run(events)
    assert "alpha  ignored     Fail on purpose" in text and "FAILED:" not in text


def test_live_display_shows_the_running_task_and_its_heartbeat():
    events = recorded("converge")
    first_poll = next(i for i, e in enumerate(events) if e["event"] == "runner_on_async_poll")
    out = io.StringIO()
    display = LiveDisplay(Console(file=out, force_terminal=True, width=120, color_system=None))
    try:
        for event in events[: first_poll + 1]:
            display.event(event)
        row = render(display._table())
        assert "alpha" in row and "running" in row and "Wait for a slow command" in row and "poll 1" in row
        for event in events[first_poll + 1:]:
            display.event(event)
    finally:
        display.finish(result_of(events))
    text = out.getvalue()
    assert "alpha: failed Fail on purpose: exit 3: boom" in text
    assert "FAILED: alpha: Fail on purpose" in text and "Run record: /runs/20261129-site-abcd" in text


@pytest.mark.parametrize("plain", [True, False])
def test_plain_lines_when_not_a_terminal(plain):
    assert isinstance(make_display(plain=plain, out=io.StringIO()), PlainDisplay)


def render(table) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(table)
    return console.file.getvalue()
