"""The lab boots real systemd hosts reached over real SSH, isolated except for the controller."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse

import pytest

from ktdeploy.lab import CONTROLLER_IP, golden, hosts, net
from ktdeploy.lab.locks import file_lock
from ktdeploy.lab.paths import ALLOC_LOCK, netns_name, veth_names

pytestmark = pytest.mark.lab


def _system_state(host, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = host.run("systemctl is-system-running", timeout=30).stdout.strip()
        if state not in ("initializing", "starting") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def test_ssh_as_deploy_and_root_with_systemd_running(lab_host):
    assert lab_host.run("id -un", user="deploy").stdout.strip() == "deploy"
    assert lab_host.run("id -u", user="root").stdout.strip() == "0"
    assert _system_state(lab_host) == "running", lab_host.run("systemctl --failed --no-legend").stdout
    assert lab_host.run("hostname").stdout.strip() == lab_host.name
    assert lab_host.run("systemd-detect-virt").stdout.strip() == "systemd-nspawn"


def test_sudo_for_deploy_and_refused_for_nosudo(lab_host):
    ok = lab_host.run("sudo -n id -u", user="deploy")
    assert (ok.returncode, ok.stdout.strip()) == (0, "0")
    refused = lab_host.run("sudo -n true", user="nosudo")
    assert refused.returncode != 0
    assert "password is required" in refused.stderr
    assert lab_host.run("id -nG", user="nosudo").stdout.split() == ["nosudo"]


def test_fabric_and_ansible_reach_the_host(lab_host, tmp_path):
    from ktdeploy.remote import connection
    from ktdeploy.resources import ansible_bin

    with connection(lab_host.target()) as conn:
        assert conn.run("id -un", in_stream=False).stdout.strip() == "deploy"
        assert conn.sudo("id -u", in_stream=False).stdout.strip() == "0"
    ansible = subprocess.run(
        [ansible_bin("ansible"), "all", "-i", str(lab_host.inventory_path()), "-m", "command", "-a", "id -u"],
        capture_output=True, text=True, timeout=120,
        env={"ANSIBLE_LOCAL_TEMP": str(tmp_path), "ANSIBLE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert ansible.returncode == 0, ansible.stdout + ansible.stderr
    assert re.search(rf"{lab_host.name} \| CHANGED \| rc=0 >>\s+0\b", ansible.stdout)


def test_apt_and_pip_go_through_the_controller(lab, lab_host):
    update = lab_host.run("apt-get update", timeout=180)
    # apt-get update exits 0 even when a source failed: the warnings are the real signal
    assert update.returncode == 0 and "W:" not in update.stderr + update.stdout, update.stdout + update.stderr
    install = lab_host.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv", timeout=300)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr
    lab.wheelhouse.add(["six==1.16.0"], no_deps=True)
    pip = " ".join(lab.wheelhouse.pip_args)
    r = lab_host.run(
        f"python3 -m venv /opt/v && /opt/v/bin/pip install -q --disable-pip-version-check {pip} six==1.16.0"
        " && /opt/v/bin/python -c 'import six; print(six.__version__)'",
        timeout=180,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "1.16.0"), r.stderr


def test_reboot_comes_back_with_state_kept(lab_host):
    from ktdeploy.resources import ansible_bin

    lab_host.run("echo kept > /etc/lab-marker", check=True)
    first = lab_host.boot_id()
    lab_host.reboot()
    second = lab_host.boot_id()
    assert second != first
    # what roles use: ansible.builtin.reboot waits for the host to come back by itself
    r = subprocess.run([ansible_bin("ansible"), "all", "-i", str(lab_host.inventory_path()), "-m", "ansible.builtin.reboot"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and '"rebooted": true' in r.stdout, r.stdout + r.stderr
    assert lab_host.boot_id() not in (first, second)
    assert lab_host.run("cat /etc/lab-marker").stdout.strip() == "kept"
    assert _system_state(lab_host) == "running"


CONNECT = (
    "python3 -c 'import socket,sys\n"
    "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print(\"open\")\n"
    "except OSError as e: print(type(e).__name__, e.errno)' {addr} {port}"
)


def _connect_from(host, addr: str, port: int) -> str:
    return host.run(CONNECT.format(addr=addr, port=port), timeout=30).stdout.strip()


def test_hosts_reach_only_the_controller_address(lab_hosts):
    a, b = lab_hosts(2)
    assert _connect_from(a, CONTROLLER_IP, 3142) == "open"  # the apt proxy: the one way out
    unreachable = [
        (b.address, 22),  # another lab host
        (f"10.203.{b.index}.1", 22),  # the controller's end of the other host's veth
        ("10.203.0.2", 22),  # controller side, not served
        ("10.255.255.1", 9),  # any other private address
    ]
    for addr, port in unreachable:
        got = _connect_from(a, addr, port)
        assert got != "open" and ("101" in got or "timeout" in got.lower()), f"{a.name} -> {addr}:{port}: {got}"
    routes = a.run("ip -4 route show").stdout
    assert "default" not in routes and f"{CONTROLLER_IP} via" in routes


def test_down_leaves_no_mount_netns_or_process(lab):
    host = lab.up()
    d = lab.paths.host_dir(host.index)
    pgid = int((d / "pid").read_text().split()[0])
    assert hosts.group_members(pgid)
    with file_lock(ALLOC_LOCK):  # no other session may take the index again while we look
        lab.down(host.index)
        assert not d.exists()
        assert str(d / "root") not in open("/proc/self/mounts").read()
        assert not net.netns_exists(host.index)
        assert net.ip("link", "show", veth_names(host.index)[0], check=False).returncode != 0
        assert hosts.group_members(pgid) == []
        assert host.name not in lab.inventory_path().read_text()
        assert netns_name(host.index) not in net.ip("netns", "list").stdout.split()


def test_wheelhouse_serves_wheels_and_sdists_on_both_addresses(lab):
    import hashlib
    import urllib.request

    got = lab.wheelhouse.add(["six==1.16.0"], no_deps=True, sdist=True)
    assert got == ["six-1.16.0.tar.gz"]
    lab.wheelhouse.add(["six==1.16.0"], no_deps=True)
    for host in ("127.0.0.1", CONTROLLER_IP):
        page = urllib.request.urlopen(f"http://{host}:3141/simple/six/", timeout=5).read().decode()
        links = dict(re.findall(r'href="([^"#]+)#sha256=([0-9a-f]{64})"', page))
        names = {url.rsplit("/", 1)[1] for url in links}
        assert {"six-1.16.0.tar.gz", "six-1.16.0-py2.py3-none-any.whl"} <= names
    url, digest = next((u, d) for u, d in links.items() if u.endswith(".tar.gz"))
    body = urllib.request.urlopen(urllib.parse.urljoin(f"http://{CONTROLLER_IP}:3141/simple/six/", url), timeout=5).read()
    assert hashlib.sha256(body).hexdigest() == digest


def test_hosts_left_by_a_dead_process_are_reaped(lab):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    n = hosts.reserve(lab.paths, None, owner=f"{dead.stdout.strip()} 1")
    try:
        hosts.boot(lab.paths, n, golden.current(lab.paths))
        assert hosts.owner_gone(lab.paths, n)
        lab.ensure_ready()
        assert not lab.paths.host_dir(n).exists()
    finally:
        if lab.paths.host_dir(n).exists():
            lab.down(n)


RESERVE = """
import sys
from ktdeploy.lab import hosts
from ktdeploy.lab.paths import LabPaths
print(hosts.reserve(LabPaths.default(), None, owner=sys.argv[1]))
"""


def test_parallel_reservations_get_distinct_indexes(lab):
    from ktdeploy.lab import daemons

    owner = daemons.record_of(os.getpid())
    procs = [subprocess.Popen([sys.executable, "-c", RESERVE, owner], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    got = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=60)
            if p.returncode == 0:
                got.append(int(out))
        assert len(got) == 4 and len(set(got)) == 4, got
        assert all(net.netns_exists(n) for n in got)
    finally:
        for n in got:
            hosts.shutdown(lab.paths, n)
