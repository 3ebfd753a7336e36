"""The apt caching proxy (apt-cacher-ng) lab hosts and the golden build fetch debs through.

Our own minimal config: the stock one remaps the Debian mirror to other hosts (unreachable here).
Listens on CONTROLLER_IP and 127.0.0.1, port APT_PROXY_PORT.
"""

from __future__ import annotations

from pathlib import Path

from ktdeploy.lab import daemons, requirements
from ktdeploy.lab.net import port_open
from ktdeploy.lab.paths import APT_PROXY_PORT, CONTROLLER_IP

URL = f"http://{CONTROLLER_IP}:{APT_PROXY_PORT}"
LOCAL_URL = f"http://127.0.0.1:{APT_PROXY_PORT}"


def render_config(base: Path) -> str:
    return (
        f"CacheDir: {base / 'cache'}\n"
        f"LogDir: {base / 'log'}\n"
        "SupportDir: /usr/lib/apt-cacher-ng\n"
        f"Port: {APT_PROXY_PORT}\n"
        f"BindAddress: {CONTROLLER_IP} 127.0.0.1\n"
        "ExThreshold: 4\n"
    )


class AptProxy:
    def __init__(self, base: Path):
        self.base = base
        self.pidfile = base / "pid"

    def answering(self) -> bool:
        return port_open(CONTROLLER_IP, APT_PROXY_PORT) and port_open("127.0.0.1", APT_PROXY_PORT)

    def ensure_running(self) -> bool:
        """Start the proxy unless it already runs; True when this call started it."""
        if daemons.running(self.pidfile) and self.answering():
            return False
        if port_open("127.0.0.1", APT_PROXY_PORT) or port_open(CONTROLLER_IP, APT_PROXY_PORT):
            if self.answering():
                return False  # another lab state dir on this machine runs one: share it
            raise requirements.LabUnavailable(
                f"port {APT_PROXY_PORT} is taken by a process the lab did not start (a system apt-cacher-ng?)",
                hint=f"stop it (`service apt-cacher-ng stop`) so the lab can run its own proxy on {CONTROLLER_IP}",
            )
        for sub in ("conf", "cache", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "conf" / "acng.conf").write_text(render_config(self.base))
        argv = [requirements.tool("apt-cacher-ng"), "-c", str(self.base / "conf"), "ForeGround=1"]
        daemons.start(argv, self.pidfile, self.base / "out.log", self.answering)
        return True

    def stop(self) -> bool:
        return daemons.stop(self.pidfile)
