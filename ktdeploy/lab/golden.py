"""The golden rootfs: a Debian 12 minbase with systemd, sshd, python3 and sudo, built once.

Every lab host boots an overlayfs copy of it. Built with mmdebstrap + eatmydata (about 40-65 s),
debootstrap as the fallback, fetching through the apt proxy so the debs land in its cache. Users:
root and `deploy` (passwordless sudo) and `nosudo` (no sudo rights), all with the lab key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from ktdeploy.lab import aptsources, requirements
from ktdeploy.lab.locks import file_lock
from ktdeploy.lab.paths import APT_PROXY_PORT, CONTROLLER_IP, LabPaths

SUITE = "bookworm"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo", "iproute2"]
RECIPE = "3"  # bump when the build below changes: hosts then boot from a freshly built golden
READY = ".ktlab-golden"
EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")
BUILD_PROXY = f"http://127.0.0.1:{APT_PROXY_PORT}"
BUILD_TIMEOUT = 1200  # seconds; a quiet machine needs about 60


class GoldenBuildError(RuntimeError):
    pass


def ensure_key(paths: LabPaths) -> Path:
    if not paths.key.exists():
        paths.root.mkdir(parents=True, exist_ok=True)
        tmp = paths.key.with_name(paths.key.name + f".tmp{os.getpid()}")
        for p in (tmp, tmp.with_suffix(tmp.suffix + ".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            [requirements.tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "ktdeploy-lab", "-f", str(tmp)],
            check=True,
        )
        os.replace(tmp.with_suffix(tmp.suffix + ".pub"), paths.key.with_name(paths.key.name + ".pub"))
        os.replace(tmp, paths.key)
    return paths.key


def version(paths: LabPaths) -> str:
    pub = paths.key.with_name(paths.key.name + ".pub").read_bytes()
    return f"r{RECIPE}-{hashlib.sha256(pub).hexdigest()[:8]}"


def current(paths: LabPaths) -> Path | None:
    gold = paths.golden(version(paths))
    return gold if (gold / READY).exists() else None


def ensure_built(paths: LabPaths, log=print) -> Path:
    """The golden rootfs for the current recipe and key, building it once (under a file lock)."""
    with file_lock(paths.golden_lock):
        ensure_key(paths)
        gold = paths.golden(version(paths))
        if (gold / READY).exists():
            return gold
        tmp = gold.with_name(gold.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        log(f"lab: building the golden rootfs {gold} (once; about a minute)")
        try:
            _bootstrap(tmp)
            _configure(tmp, paths)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / READY).write_text(f"built in {time.monotonic() - t0:.0f} s\n")
        os.rename(tmp, gold)
        log(f"lab: golden rootfs ready in {time.monotonic() - t0:.0f} s")
        _remove_unused_old(paths, keep=gold)
        return gold


def _bootstrap(root: Path) -> None:
    sources = aptsources.controller_sources()
    if not sources:
        raise GoldenBuildError(
            "the controller has no plain-http Debian apt source (/etc/apt/sources.list[.d]) to build the lab "
            "image from; add one (lab hosts reach the mirror only through the controller's apt-cacher-ng)"
        )
    src_file = root.with_name(root.name + ".sources")
    src_file.write_text(sources)
    try:
        if shutil.which("mmdebstrap"):
            argv = [
                "mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                f'--aptopt=Acquire::http::Proxy "{BUILD_PROXY}"',
            ]
            argv += [f"--aptopt={p}" for p in aptsources.apt_conf_files()]
            if EATMYDATA_HOOKS.is_dir() and shutil.which("eatmydata"):
                argv.append(f"--hook-dir={EATMYDATA_HOOKS}")
            argv += [SUITE, str(root), str(src_file)]
            env = None
        else:
            mirror = aptsources.first_mirror(sources, SUITE)
            if mirror is None:
                raise GoldenBuildError(f"no apt source of the controller serves {SUITE}")
            argv = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(root), mirror]
            if shutil.which("eatmydata"):
                argv.insert(0, "eatmydata")
            env = dict(os.environ, http_proxy=BUILD_PROXY)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise GoldenBuildError(
                f"{argv[0]} did not finish within {BUILD_TIMEOUT} s; is the apt proxy reaching the mirror? "
                f"(its log: the lab state dir's acng/log)"
            ) from exc
    finally:
        src_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise GoldenBuildError(f"{argv[0]} failed (exit {proc.returncode}):\n{tail}")


def _chroot(root: Path, *argv: str) -> None:
    subprocess.run(["chroot", str(root), *argv], check=True, capture_output=True)


def _configure(root: Path, paths: LabPaths) -> None:
    etc = root / "etc"
    (etc / "apt/apt.conf.d/99mmdebstrap").unlink(missing_ok=True)  # held the build-time proxy
    (etc / "hostname").write_text("lab\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 lab\n")
    _chroot(root, "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "deploy")
    _chroot(root, "useradd", "-m", "-s", "/bin/bash", "nosudo")
    pub = paths.key.with_name(paths.key.name + ".pub").read_text()
    for user, home in (("root", root / "root"), ("deploy", root / "home/deploy"), ("nosudo", root / "home/nosudo")):
        uid, gid = _ids(root, user)
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(pub)
        (ssh / "authorized_keys").chmod(0o600)
        os.chown(ssh, uid, gid)
        os.chown(ssh / "authorized_keys", uid, gid)
    sudoers = etc / "sudoers.d/deploy"
    sudoers.write_text("deploy ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    # apt inside a lab host: the controller's sources and apt.conf snippets, through the proxy
    for f in (etc / "apt/sources.list.d").glob("*"):
        f.unlink()
    (etc / "apt/sources.list").unlink(missing_ok=True)
    (etc / "apt/sources.list.d/debian.sources").write_text(aptsources.controller_sources())
    for f in aptsources.apt_conf_files():
        shutil.copy2(f, etc / "apt/apt.conf.d" / f.name)
    (etc / "apt/apt.conf.d/01ktlab-proxy").write_text(
        f'Acquire::http::Proxy "http://{CONTROLLER_IP}:{APT_PROXY_PORT}";\n'
    )
    # no background apt run may grab the dpkg lock during a test
    _chroot(root, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer")
    _chroot(root, "apt-get", "clean")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    (etc / "machine-id").write_text("")  # nspawn hands each boot a fresh id


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            return int(f[2]), int(f[3])
    raise GoldenBuildError(f"user {user} missing from the golden rootfs")


def _remove_unused_old(paths: LabPaths, keep: Path) -> None:
    mounts = Path("/proc/mounts").read_text()
    for old in paths.root.glob("golden-*"):
        if old != keep and old.is_dir() and f"lowerdir={old}" not in mounts:
            shutil.rmtree(old, ignore_errors=True)
