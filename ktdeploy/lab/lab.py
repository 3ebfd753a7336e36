"""The Lab facade: what tests and `ktdeploy lab` call."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ktdeploy.lab import daemons, golden, hosts, inventory, limits, net, requirements
from ktdeploy.lab.host import LabHost
from ktdeploy.lab.locks import file_lock
from ktdeploy.lab.paths import ALLOC_LOCK, LabPaths, host_address, host_name
from ktdeploy.lab.proxy import AptProxy
from ktdeploy.lab.wheelhouse import Wheelhouse


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Lab:
    def __init__(self, state_dir: str | Path | None = None, log=_log):
        self.paths = LabPaths(Path(state_dir)) if state_dir else LabPaths.default()
        self.proxy = AptProxy(self.paths.acng)
        self.wheelhouse = Wheelhouse(self.paths.wheelhouse)
        self.log = log
        self.made: set[int] = set()  # hosts this Lab object brought up and that are still up
        self.created: set[int] = set()  # every host index this Lab object reserved
        self._ready = False
        self._owner_record = daemons.record_of(os.getpid())

    # -- readiness ---------------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Controller checks, apt proxy + wheelhouse server running, golden rootfs built."""
        requirements.check()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        daemons.take_lease(self.paths.leases)
        with file_lock(self.paths.daemons_lock):
            if net.add_controller_ip():
                self.paths.lo_address_marker.write_text("")
            net.fence_lab_range()
            self.proxy.ensure_running()
            self.wheelhouse.ensure_serving()
            limits.ensure_inotify_instances(self.log)
        golden.ensure_built(self.paths, log=self.log)
        self._reap_orphans()
        self._ready = True

    def _reap_orphans(self) -> None:
        """Take down hosts whose owning process died without tearing them down."""
        for n in hosts.indexes(self.paths):
            if hosts.owner_gone(self.paths, n):
                self.log(f"lab: taking down {host_name(n)}, left behind by a process that is gone")
                try:
                    self.down(n)
                except hosts.HostError:
                    pass  # another process reaped it first

    # -- hosts ---------------------------------------------------------------------------------------

    def up(self, n: int | None = None, *, keep: bool = False, systemd: bool = True) -> LabHost:
        """Boot a fresh host (index n, or the lowest free one); returns when ssh and systemd are up.

        systemd=False: no init system at all, sshd is the main process (container platforms).

        The host belongs to this process (taken down by close(), or by the next ensure_ready()
        after this process died) unless keep=True (stays until `down`).
        """
        if not self._ready:
            self.ensure_ready()
        gold = golden.current(self.paths) or golden.ensure_built(self.paths, log=self.log)
        n = hosts.reserve(self.paths, n, owner=None if keep else self._owner_record)
        self.made.add(n)
        self.created.add(n)
        try:
            hosts.boot(self.paths, n, gold, systemd=systemd)
        except BaseException:
            self.down(n)
            raise
        self._write_inventory()
        return self.host(n)

    def down(self, n: int) -> None:
        hosts.shutdown(self.paths, n)
        self.made.discard(n)
        self._write_inventory()

    def down_all(self) -> list[int]:
        """Take down every host of this state dir, then the daemons unless another process uses them."""
        gone = []
        for n in hosts.indexes(self.paths):
            self.down(n)
            gone.append(n)
        self._stop_daemons_if_unused()
        return gone

    def close(self) -> None:
        """Take down the hosts this object made; stop the daemons when nothing else needs them."""
        for n in sorted(self.made):
            try:
                self.down(n)
            except hosts.HostError:
                pass
        self._stop_daemons_if_unused()

    def _stop_daemons_if_unused(self) -> None:
        self._ready = False  # the lease goes: a later up() takes it again
        with file_lock(self.paths.daemons_lock):
            daemons.drop_lease(self.paths.leases)
            others = daemons.other_live_leases(self.paths.leases)
            if others or hosts.indexes(self.paths):
                return
            self.proxy.stop()
            self.wheelhouse.stop()
            if self.paths.lo_address_marker.exists():
                net.remove_controller_ip()
                self.paths.lo_address_marker.unlink()

    def leftovers(self) -> list[int]:
        """Hosts this object created whose netns is still there (an index reused since is not ours)."""

        def ours(n: int) -> bool:
            return not self.paths.host_dir(n).exists() or hosts.owner_record(self.paths, n) == self._owner_record

        with file_lock(ALLOC_LOCK):
            return [n for n in sorted(self.created) if net.netns_exists(n) and ours(n)]

    def list(self) -> list[LabHost]:
        return [self.host(n) for n in hosts.indexes(self.paths)]

    def states(self) -> list[hosts.HostState]:
        return [hosts.state(self.paths, n) for n in hosts.indexes(self.paths)]

    def host(self, n: int) -> LabHost:
        return LabHost(n, self.paths.key, self.paths.host_dir(n))

    def join_lan(self, members: list[LabHost]) -> None:
        """These hosts reach one another from now on, as on a LAN (net.join_lan)."""
        net.join_lan([h.index for h in members])

    def ssh_argv(self, n: int, user: str = "deploy") -> list[str]:
        return self.host(n).ssh_argv(user)

    def inventory_path(self) -> Path:
        """The YAML inventory of every host of this state dir that is up (rewritten on up/down).

        Other sessions' hosts are in it too; to provision only your own, use LabHost.inventory_path().
        """
        if not self.paths.inventory.exists():
            self._write_inventory()
        return self.paths.inventory

    def _write_inventory(self) -> None:
        with file_lock(self.paths.root / "inventory.lock"):
            ns = hosts.indexes(self.paths)
            inventory.write(self.paths.inventory, [(host_name(n), host_address(n)) for n in ns], self.paths.key)
