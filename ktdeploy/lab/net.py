"""Network plumbing: one netns per host, a veth pair into it, and the controller address on lo.

Inside netns ktlabN the host has 10.203.N.2/30 and a single /32 route to CONTROLLER_IP through the
controller's end of the veth; no default route, so it reaches nothing else (not other lab hosts,
unless `join_lan` routes a group of them to one another through the controller, as on a LAN).
On the controller the whole lab range is an `unreachable` route: the address of a host that is down
fails at once with "no route to host" instead of leaving through the default route (where a
transparent proxy may answer on any port).
"""

from __future__ import annotations

import subprocess

from ktdeploy.lab.paths import (
    CONTROLLER_IP,
    LAB_RANGE,
    NETNS_DIR,
    NETNS_PREFIX,
    gateway_address,
    host_address,
    netns_name,
    veth_names,
)


class NetError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def netns_exists(n: int) -> bool:
    return (NETNS_DIR / netns_name(n)).exists()


def lab_netns_indexes() -> set[int]:
    """Indexes of every ktlabN netns on this machine, whoever made it."""
    out = set()
    if NETNS_DIR.is_dir():
        for p in NETNS_DIR.iterdir():
            tail = p.name[len(NETNS_PREFIX):]
            if p.name.startswith(NETNS_PREFIX) and tail.isdigit():
                out.add(int(tail))
    return out


def create_netns(n: int) -> None:
    """Create netns ktlabN; fails if it exists (the allocation reservation)."""
    ip("netns", "add", netns_name(n))


def wire_netns(n: int) -> None:
    ns = netns_name(n)
    outer, inner = veth_names(n)
    ip("link", "del", outer, check=False)  # a leftover from a crashed run would block the add
    ip("link", "add", outer, "type", "veth", "peer", "name", inner)
    ip("link", "set", inner, "netns", ns)
    ip("addr", "add", f"{gateway_address(n)}/30", "dev", outer)
    ip("link", "set", outer, "up")
    ip("-n", ns, "addr", "add", f"{host_address(n)}/30", "dev", inner)
    ip("-n", ns, "link", "set", inner, "up")
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "route", "add", f"{CONTROLLER_IP}/32", "via", gateway_address(n))


def join_lan(indexes: list[int]) -> None:
    """Let these hosts reach one another (and nothing more) through the controller: a /32 route in
    each to every other, and forwarding on their veths only (the machine's ip_forward stays as it
    is). It all goes with the hosts' veths and netns."""
    for n in indexes:
        outer = veth_names(n)[0]
        with open(f"/proc/sys/net/ipv4/conf/{outer}/forwarding", "w") as f:
            f.write("1\n")
        for other in indexes:
            if other != n:
                ip("-n", netns_name(n), "route", "replace", f"{host_address(other)}/32", "via", gateway_address(n))


def delete_netns(n: int) -> None:
    """Delete netns ktlabN (which removes the veth pair with it)."""
    ip("netns", "del", netns_name(n), check=False)
    ip("link", "del", veth_names(n)[0], check=False)


def lo_has_controller_ip() -> bool:
    out = ip("-4", "-o", "addr", "show", "dev", "lo").stdout
    return f" {CONTROLLER_IP}/" in out


def add_controller_ip() -> bool:
    """Put CONTROLLER_IP on lo; True when this call added it."""
    if lo_has_controller_ip():
        return False
    added = ip("addr", "add", f"{CONTROLLER_IP}/32", "dev", "lo", check=False)
    if added.returncode != 0 and not lo_has_controller_ip():  # else another process was faster
        raise NetError(f"cannot add {CONTROLLER_IP} to lo: {added.stderr.strip()}")
    return added.returncode == 0


def remove_controller_ip() -> None:
    if lo_has_controller_ip():
        ip("addr", "del", f"{CONTROLLER_IP}/32", "dev", "lo", check=False)
    ip("route", "del", "unreachable", LAB_RANGE, check=False)


def fence_lab_range() -> None:
    """Make the lab range unreachable from the controller except through a host's own /30."""
    ip("route", "replace", "unreachable", LAB_RANGE)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
