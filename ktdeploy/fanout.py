"""Model fan-out (`ktdeploy download --fan-out`): the seed host fetches from the source once, every
other host from the seed (model_download's `model_download_fanout`, docs in its README).

Where the hosts reach one another, they fetch from the seed's address. Where they reach only this
machine (the lab; sites whose hosts are fenced from each other), `--peer-relay ADDR[:PORT]` holds an
SSH local forward on this machine, ADDR:PORT to the seed's server, for the length of the run, and
the hosts fetch through it.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ktdeploy.errors import BadInput, KtdeployError
from ktdeploy.targets import Target, parse_address

RELAY_WAIT_S = 15.0
CONTROLLER_PORT = 8766  # as model_download_peer_port's default


def prepare(stack: contextlib.ExitStack, targets: list[Target], extravars: dict, *, variant: str | None,
            source: str, endpoint: str | None, verify: bool, seed: str | None, peer_address: str | None,
            peer_relay: str | None, controller_dir: Path | None, say) -> None:
    """The role variables of a `download --fan-out` run into extravars, and on the stack what this
    machine holds for the run: the relay to the seed, or (controller_dir) its own server."""
    if controller_dir:
        if seed or peer_relay:
            raise BadInput("--controller-seed makes this machine the seed; --seed and --peer-relay name another",
                           hint="leave them out, or leave out --controller-seed")
        from ktdeploy import bundle, controller_seed, downloads

        names = controller_seed.download(controller_dir, variant, source, endpoint, say)
        address, port = bundle.controller_address(targets, peer_address, "--peer-address", CONTROLLER_PORT)
        server = stack.enter_context(controller_seed.serve(controller_dir, names, address, port))
        say(f"fan-out: serving {controller_dir} at {server.url} for this run")
        extravars.update(downloads.download_extravars(variant, "mirror", server.url, verify))
        return
    the_seed = pick_seed(targets, seed)
    port = peer_port(the_seed)
    relay_to = parse_relay(peer_relay, port)
    direct = parse_address(peer_address, "--peer-address", port, "give the seed's address as the other hosts "
                           "reach it, e.g. 192.168.1.11 or 192.168.1.11:8766") if peer_address else None
    extravars.update(fanout_vars(the_seed, direct, relay_to))
    if relay_to:
        stack.enter_context(relay(the_seed, relay_to, port))
        say(f"fan-out: {relay_to[0]}:{relay_to[1]} on this machine relays to {the_seed.name}'s server for this run")


def pick_seed(targets: list[Target], name: str | None) -> Target:
    if not name:
        return targets[0]
    for t in targets:
        if t.name == name:
            return t
    raise BadInput(f"--seed {name} is not one of the hosts of the run",
                   hint=f"name one of {', '.join(t.name for t in targets)}")


def peer_port(seed: Target) -> int:
    from ktdeploy import rolevars

    return int(rolevars.host_vars(seed.name, seed.hostvars)["model_download_peer_port"])


def fanout_vars(seed: Target, peer_address: tuple[str, int] | None, relay: tuple[str, int] | None) -> dict:
    """The role variables of a fan-out from seed, reached at peer_address (its server listens on
    that port) or through the relay."""
    if peer_address and relay:
        raise BadInput("--peer-address and --peer-relay name two ways to the seed", hint="pass one of them")
    out: dict = {"model_download_fanout": True, "model_download_seed": seed.name}
    if peer_address:
        out.update(model_download_peer_address=peer_address[0], model_download_peer_port=peer_address[1])
    if relay:
        host = f"[{relay[0]}]" if ":" in relay[0] else relay[0]
        out.update(model_download_peer_url=f"http://{host}:{relay[1]}", model_download_peer_bind="127.0.0.1")
    return out


def parse_relay(text: str | None, default_port: int) -> tuple[str, int] | None:
    if not text:
        return None
    return parse_address(text, "--peer-relay", default_port,
                         "give an address of this machine the hosts reach, e.g. 10.0.0.1 or 10.0.0.1:8766")


def ssh_forward_argv(seed: Target, listen: tuple[str, int], remote_port: int) -> list[str]:
    """OpenSSH holding a local forward listen -> the seed's 127.0.0.1:remote_port, with the seed's
    connection settings (user, port, key, ansible_ssh_common_args)."""
    hv = seed.hostvars
    bind = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
    argv = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15",
            "-L", f"{bind}:{listen[1]}:127.0.0.1:{remote_port}"]
    key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
    if key:
        argv += ["-i", str(key)]
    port = seed.port or hv.get("ansible_port")
    if port:
        argv += ["-p", str(port)]
    argv += shlex.split(str(hv.get("ansible_ssh_common_args") or ""))
    user = seed.user or hv.get("ansible_user")
    return argv + [f"{user}@{seed.host}" if user else seed.host]


@contextlib.contextmanager
def relay(seed: Target, listen: tuple[str, int], remote_port: int) -> Iterator[subprocess.Popen]:
    """The SSH forward, up (its port answers) for the length of the block; stopped afterwards."""
    errors = tempfile.TemporaryFile("w+")  # not a pipe: nobody drains it while the run goes on
    proc = subprocess.Popen(ssh_forward_argv(seed, listen, remote_port), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=errors, text=True)
    try:
        deadline = time.monotonic() + RELAY_WAIT_S
        while not _answers(listen):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise KtdeployError(f"cannot relay {listen[0]}:{listen[1]} to {seed.name} over SSH: "
                                    f"{_stop(proc, errors) or 'no answer in time'}",
                                    hint="pass --peer-relay with an address of this machine and a free port")
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc, errors)
        errors.close()


def _answers(listen: tuple[str, int]) -> bool:
    try:
        socket.create_connection(listen, timeout=0.5).close()
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen, errors) -> str:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    proc.kill()  # only if it ignored the TERM: an exited process is not signalled
    proc.wait()
    errors.seek(0)
    return errors.read().strip()
