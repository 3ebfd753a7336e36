"""`ktdeploy download --fan-out`: the seed, the role variables, the SSH relay (the fan-out itself
runs on lab hosts in tests/integration/test_model_fanout_lab.py)."""

from __future__ import annotations

import time
import urllib.request

import pytest
from click.testing import CliRunner

from ktdeploy import fanout
from ktdeploy.cli import main
from ktdeploy.errors import BadInput, KtdeployError
from ktdeploy.hostside.file_server import FileServer, relative
from ktdeploy.targets import Target

LAB_VARS = {"ansible_user": "deploy", "ansible_ssh_private_key_file": "/k/id", "ansible_port": 2222,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}
HOSTS = [Target("gpu1", "10.0.0.11", hostvars=LAB_VARS), Target("gpu2", "10.0.0.12")]


def test_the_seed_is_the_first_host_or_the_named_one():
    assert fanout.pick_seed(HOSTS, None).name == "gpu1"
    assert fanout.pick_seed(HOSTS, "gpu2").name == "gpu2"
    with pytest.raises(BadInput, match="--seed gpu9 is not one of the hosts"):
        fanout.pick_seed(HOSTS, "gpu9")


def test_role_variables_direct_or_through_the_relay():
    assert fanout.fanout_vars(HOSTS[0], None, None) == {"model_download_fanout": True,
                                                         "model_download_seed": "gpu1"}
    direct = fanout.fanout_vars(HOSTS[0], ("192.168.1.5", 9100), None)
    assert direct["model_download_peer_address"] == "192.168.1.5" and direct["model_download_peer_port"] == 9100
    relayed = fanout.fanout_vars(HOSTS[0], None, ("10.203.0.1", 9000))
    assert relayed["model_download_peer_url"] == "http://10.203.0.1:9000"
    assert relayed["model_download_peer_bind"] == "127.0.0.1"  # only the forward reaches the seed's server
    assert fanout.fanout_vars(HOSTS[0], None, ("fd00::1", 9000))["model_download_peer_url"] == "http://[fd00::1]:9000"
    with pytest.raises(BadInput, match="two ways to the seed"):
        fanout.fanout_vars(HOSTS[0], ("192.168.1.5", 8766), ("10.203.0.1", 9000))


def test_relay_address_and_its_default_port():
    assert fanout.parse_relay("10.203.0.1", 8766) == ("10.203.0.1", 8766)
    assert fanout.parse_relay("[fd00::1]:9000", 8766) == ("fd00::1", 9000)
    assert fanout.parse_relay(None, 8766) is None
    with pytest.raises(BadInput, match="--peer-relay 'a b' is not ADDRESS"):
        fanout.parse_relay("a b", 8766)


def test_the_forward_uses_the_seeds_ssh_settings():
    argv = fanout.ssh_forward_argv(HOSTS[0], ("10.203.0.1", 9000), 8766)
    assert argv[:2] == ["ssh", "-N"] and argv[-1] == "deploy@10.0.0.11"
    assert argv[argv.index("-L") + 1] == "10.203.0.1:9000:127.0.0.1:8766"
    assert argv[argv.index("-i") + 1] == "/k/id" and argv[argv.index("-p") + 1] == "2222"
    assert "UserKnownHostsFile=/dev/null" in argv and "ExitOnForwardFailure=yes" in argv
    assert fanout.ssh_forward_argv(HOSTS[1], ("::1", 9000), 8766)[-1] == "10.0.0.12"
    assert "[::1]:9000:127.0.0.1:8766" in fanout.ssh_forward_argv(HOSTS[1], ("::1", 9000), 8766)


def test_a_relay_that_cannot_connect_fails_with_sshs_reason():
    closed = Target("nohost", "127.0.0.1", port=1, hostvars={"ansible_ssh_common_args": "-o ConnectTimeout=3"})
    t = time.monotonic()
    with pytest.raises(KtdeployError, match="cannot relay 127.0.0.1:.* to nohost over SSH: .*(refused|port 1)"):
        with fanout.relay(closed, ("127.0.0.1", _free_port()), 8766):
            pass
    assert time.monotonic() - t < fanout.RELAY_WAIT_S  # ssh's exit is noticed, not waited out


def test_the_peer_options_go_with_fan_out():
    r = CliRunner().invoke(main, ["download", "gpu1", "--peer-relay", "10.0.0.1"])
    assert r.exit_code == 2 and "go with --fan-out" in r.output


def test_the_seed_port_comes_from_the_role_defaults():
    assert fanout.peer_port(Target("gpu1", "10.0.0.11")) == 8766
    assert fanout.peer_port(Target("gpu1", "10.0.0.11", hostvars={"model_download_peer_port": 9100})) == 9100


def test_request_paths_are_normalised_inside_the_root():
    assert relative("/a/./b") == "a/b" and relative("/wheels/") == "wheels/"
    assert relative("/../x/../../etc/passwd") == "etc/passwd" and relative("/a%20b") == "a b"


def test_the_file_server_keeps_to_max_rate(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 300_000)
    with FileServer({"f": tmp_path / "f"}.get, "127.0.0.1", 0, max_rate=1_000_000) as server:
        t = time.monotonic()
        assert len(urllib.request.urlopen(f"{server.url}/f").read()) == 300_000
        assert time.monotonic() - t >= 0.19  # all but the last block (a tenth of the rate) waited for
        deadline = time.monotonic() + 2
        while server.active and time.monotonic() < deadline:  # the handler ends just after the last byte
            time.sleep(0.01)
        assert server.active == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
