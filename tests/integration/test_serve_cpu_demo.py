"""The CPU demo end to end on a lab host: llama-cpp-python (GGML_NATIVE=OFF) serving Gemma 3 270M
under systemd, Open WebUI wired to it, a browser logging in; crash and reboot recovery.

One host for the whole module, so Open WebUI (~230 packages) is installed once per run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
from servefixtures import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API,
    MODEL,
    http_json,
    lab_extravars,
    on_host_json,
    provision,
    stock_wheelhouse,
    wait_for,
    write_inventory,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]
KTDEPLOY = str(Path(sys.executable).parent / "ktdeploy")


@pytest.fixture(scope="module")
def demo(lab, tmp_path_factory):
    host = lab.up()
    try:
        stock_wheelhouse(lab, host, webui=True)
        extravars = lab_extravars(lab, serve_webui_host="0.0.0.0")
        started = time.monotonic()
        proc, recap = provision(host, extravars, tmp_path_factory.mktemp("first"))
        seconds = time.monotonic() - started
        assert proc.returncode == 0 and recap.get("failed") == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        print(f"\ncpu-demo converge on a fresh lab host: {seconds:.0f} s")
        yield host, extravars
    finally:
        lab.down(host.index)


def webui(host) -> str:
    return f"http://{host.address}:8080"


def signin(host) -> str:
    return http_json(webui(host) + "/api/v1/auths/signin", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})["token"]


def test_api_answers_a_real_completion(demo):
    host, _ = demo
    models = on_host_json(host, API + "/models")
    assert [m["id"] for m in models["data"]] == [MODEL]
    reply = on_host_json(host, API + "/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0})
    assert reply["choices"][0]["finish_reason"] in ("length", "stop")
    assert reply["usage"]["completion_tokens"] >= 1


def test_api_is_not_reachable_from_the_network(demo):
    host, _ = demo
    r = subprocess.run(["python3", "-c", f"import socket; socket.create_connection(('{host.address}', 10002), 3)"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "refused" in r.stderr.lower()


def test_open_webui_lists_the_model_and_answers(demo):
    host, _ = demo
    token = signin(host)
    models = http_json(webui(host) + "/api/models", token=token)["data"]
    assert MODEL in [m["id"] for m in models]
    reply = http_json(webui(host) + "/api/chat/completions", {
        "model": MODEL, "stream": False, "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello."}]}, token=token, timeout=180)
    assert reply["choices"][0]["message"]["role"] == "assistant"
    config = http_json(webui(host) + "/api/config")
    assert config["features"]["enable_signup"] is False


def test_secrets_are_root_owned_group_readable_and_not_in_units(demo):
    """The services read their secrets (systemd as root, supervisord's helper through the group) but the
    service user cannot rewrite them."""
    host, _ = demo
    r = host.run("stat -c '%a %U %G %n' /etc/ktdeploy/*.env; cat /etc/systemd/system/ktdeploy-*.service", check=True)
    modes = re.findall(r"^(\d+) (\S+) (\S+) (\S+\.env)$", r.stdout, re.M)
    assert len(modes) == 4 and all((m, u, g) == ("640", "root", "ktdeploy") for m, u, g, _ in modes), modes
    assert ADMIN_PASSWORD not in r.stdout
    env = host.run("cat /etc/ktdeploy/ktdeploy-webui.secret.env", check=True).stdout
    assert re.fullmatch(r"WEBUI_SECRET_KEY=[0-9a-f]{64}\n", env)
    as_service = host.run("runuser -u ktdeploy -- sh -c 'cat /etc/ktdeploy/ktdeploy-webui.secret.env >/dev/null "
                          "&& echo x >> /etc/ktdeploy/ktdeploy-api.env'")
    assert as_service.returncode != 0 and "Permission denied" in as_service.stderr, as_service


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="Debian chromium and chromium-driver are not installed (scripts/setup.sh)")
def test_a_person_logs_in_and_sees_the_model(demo, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    host, _ = demo
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(webui(host) + "/auth")
        wait = WebDriverWait(driver, 90)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=email]"))).send_keys(ADMIN_EMAIL)
        driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # After the first login Open WebUI shows its release notes over the chat page.
        try:
            WebDriverWait(driver, 15).until(ec.element_to_be_clickable(
                (By.XPATH, "//button[contains(., \"Okay, Let's Go!\")]"))).click()
        except TimeoutException:
            pass
        shown = wait.until(ec.visibility_of_element_located((By.XPATH, f"//*[contains(text(), '{MODEL}')]")))
        driver.save_screenshot(str(tmp_path / "open-webui.png"))
        assert shown.is_displayed()
    finally:
        driver.quit()


def test_second_run_changes_nothing(demo, tmp_path):
    host, extravars = demo
    started = time.monotonic()
    proc, recap = provision(host, extravars, tmp_path)
    print(f"\ncpu-demo converged re-run: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0 and recap["changed"] == 0, proc.stdout[-4000:]
    # no async install started, so no 15 s poll waited on (the installs are asked about first)
    events = run_events(proc.stdout)
    assert not [e for e in events if e["event"] in ("runner_on_async_poll", "runner_on_async_ok")]
    skipped = {e["event_data"]["task"] for e in events if e["event"] == "runner_on_skipped"}
    assert {"Build or fetch the llama-cpp-python wheel of this version and these CMake flags.",
            "Install Open WebUI into its own venv."} <= skipped
    assert " skipped " not in proc.stdout.split("Recap")[0]  # counted in the recap, listed only with -v


def run_events(stdout: str) -> list[dict]:
    record = Path(re.search(r"^Run record: (.+)$", stdout, re.M).group(1).strip())
    return [json.loads(p.read_text()) for p in (record / "job_events").glob("*.json")]


def test_changed_backend_url_takes_effect_despite_stored_config(demo, tmp_path):
    host, extravars = demo
    new_url = "http://localhost:10002/v1"
    proc, recap = provision(host, extravars, tmp_path, f"serve_webui_backend_url={new_url}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    stored = http_json(webui(host) + "/openai/config", token=signin(host))
    assert stored["OPENAI_API_BASE_URLS"][0] == new_url
    models = http_json(webui(host) + "/api/models", token=signin(host))["data"]
    assert MODEL in [m["id"] for m in models]


def test_a_unit_at_its_start_limit_is_named_by_status_and_recovered_by_provision(demo, tmp_path):
    """A crash loop that hit systemd's start limit: status says so, and provision resets and starts it
    (`systemctl start` alone refuses the unit)."""
    host, extravars = demo
    dropin = "/run/systemd/system/ktdeploy-api.service.d"
    host.run(f"mkdir -p {dropin} && printf '[Service]\\nExecStartPre=/bin/sh -c \"! test -e /run/ktd-crash\"\\n"
             f"RestartSec=100ms\\n' > {dropin}/crash.conf && systemctl daemon-reload && touch /run/ktd-crash",
             check=True)
    try:
        host.run("systemctl restart ktdeploy-api", timeout=120)  # fails: the crash loop begins
        wait_for(lambda: _unit(host, "ktdeploy-api")["ActiveState"] == "failed", 60, "ktdeploy-api at its start limit")
        host.run("rm /run/ktd-crash", check=True)  # the cause is gone, the limit stays
        assert host.run("systemctl start ktdeploy-api", timeout=120).returncode != 0
        inventory = write_inventory(host, extravars, tmp_path / "status" / "inventory.yml")
        r = subprocess.run([KTDEPLOY, "status", "-i", str(inventory), "--plain"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and "ktdeploy-api hit its start limit (5 starts within 1h)" in r.stdout, r.stdout
        proc, _ = provision(host, extravars, tmp_path)
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert _unit(host, "ktdeploy-api")["ActiveState"] == "active"
        assert [m["id"] for m in on_host_json(host, API + "/models")["data"]] == [MODEL]
    finally:
        host.run(f"rm -rf {dropin} /run/ktd-crash && systemctl daemon-reload", timeout=60)


def test_an_admin_password_given_later_is_changed_in_open_webui(demo, tmp_path):
    """Open WebUI reads the stored password only on its first start: a new one given later is changed
    there by the role, so this and every later provision still signs in. (Last of the tests that sign in.)"""
    host, extravars = demo
    new = "lab-Admin-pw-2"
    proc, recap = provision(host, extravars, tmp_path / "change", f"serve_webui_admin_password={new}")
    assert proc.returncode == 0 and recap["changed"] >= 1, proc.stdout[-4000:]
    assert http_json(webui(host) + "/api/v1/auths/signin", {"email": ADMIN_EMAIL, "password": new})["token"]
    with pytest.raises(urllib.error.HTTPError):
        signin(host)  # the old password
    stored = host.run("stat -c '%a %U %G' /etc/ktdeploy/ktdeploy-webui.admin.env; "
                      "cat /etc/ktdeploy/ktdeploy-webui.admin.env", check=True).stdout
    assert re.fullmatch(rf"640 root ktdeploy\nWEBUI_ADMIN_PASSWORD='?{new}'?\n", stored), stored
    again, recap = provision(host, {**extravars, "serve_webui_admin_password": new}, tmp_path / "again")
    assert again.returncode == 0 and recap["changed"] == 0, again.stdout[-4000:]


def _unit(host, unit: str) -> dict:
    out = host.run(f"systemctl show -p MainPID -p NRestarts -p ActiveState {unit}", check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


def test_kill_9_is_restarted_by_systemd(demo):
    host, _ = demo
    before = _unit(host, "ktdeploy-api")
    assert before["ActiveState"] == "active"
    host.run(f"kill -9 {before['MainPID']}", check=True)
    after = wait_for(lambda: (lambda u: u if u["NRestarts"] != before["NRestarts"] and u["ActiveState"] == "active"
                                        else None)(_unit(host, "ktdeploy-api")), 120, "ktdeploy-api restarted")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1 and after["MainPID"] != before["MainPID"]
    assert [m["id"] for m in on_host_json(host, API + "/models")["data"]] == [MODEL]


def test_services_come_back_after_a_reboot(demo):
    host, _ = demo
    host.reboot(timeout=120)
    for unit in ("ktdeploy-api", "ktdeploy-webui"):
        wait_for(lambda: _unit(host, unit)["ActiveState"] == "active", 180, f"{unit} active after reboot")
    assert [m["id"] for m in on_host_json(host, API + "/models")["data"]] == [MODEL]
    wait_for(lambda: http_json(webui(host) + "/health").get("status"), 120, "Open WebUI healthy after reboot")
