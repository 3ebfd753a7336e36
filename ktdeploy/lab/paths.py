"""Where the lab keeps its state, and the fixed addresses of the lab network.

One state dir per machine (`~/.cache/ktdeploy/lab`, or `$KTDEPLOY_LAB_DIR`), shared by every
worktree and test session. Host indexes and netns names are machine-wide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LAB_RANGE = "10.203.0.0/16"  # every lab address: the controller's and each host's /30
CONTROLLER_IP = "10.203.0.1"  # on the controller's lo; the only address lab hosts can reach
APT_PROXY_PORT = 3142
WHEELHOUSE_PORT = 3141
MAX_INDEX = 254
NETNS_PREFIX = "ktlab"
NETNS_DIR = Path("/run/netns")
# Host indexes are allocated machine-wide, whichever state dir a process uses.
ALLOC_LOCK = Path("/run/lock/ktdeploy-lab.lock")


def state_dir() -> Path:
    env = os.environ.get("KTDEPLOY_LAB_DIR")
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ktdeploy" / "lab"


def host_name(n: int) -> str:
    return f"lab{n}"


def netns_name(n: int) -> str:
    return f"{NETNS_PREFIX}{n}"


def host_address(n: int) -> str:
    return f"10.203.{n}.2"


def gateway_address(n: int) -> str:
    """The controller's end of host n's veth pair."""
    return f"10.203.{n}.1"


def veth_names(n: int) -> tuple[str, str]:
    """(controller side, host side) of host n's veth pair."""
    return f"ktl{n}-h", f"ktl{n}-c"


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @classmethod
    def default(cls) -> "LabPaths":
        return cls(state_dir())

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def golden_lock(self) -> Path:
        return self.root / "golden.lock"

    def golden(self, version: str) -> Path:
        return self.root / f"golden-{version}"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def host_dir(self, n: int) -> Path:
        return self.run / str(n)

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yml"

    @property
    def acng(self) -> Path:
        return self.root / "acng"

    @property
    def wheelhouse(self) -> Path:
        return self.root / "wheelhouse"

    @property
    def leases(self) -> Path:
        return self.root / "leases"

    @property
    def daemons_lock(self) -> Path:
        return self.root / "daemons.lock"

    @property
    def lo_address_marker(self) -> Path:
        """Present when the lab added CONTROLLER_IP to lo (so it removes it again)."""
        return self.root / "lo-address-added"
