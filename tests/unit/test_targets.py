import pytest

from ktdeploy.errors import BadInput
from ktdeploy.targets import inventory_from_targets, parse_target, parse_targets, targets_from_inventory


@pytest.mark.parametrize(
    "spec,host,user,port",
    [
        ("gpu1", "gpu1", None, None),
        ("root@10.0.0.5", "10.0.0.5", "root", None),
        ("deploy@gpu1.example.org:2222", "gpu1.example.org", "deploy", 2222),
        ("[::1]:22", "::1", None, 22),
        ("me@[fe80::1]", "fe80::1", "me", None),
    ],
)
def test_parse_target_forms(spec, host, user, port):
    t = parse_target(spec)
    assert (t.host, t.user, t.port) == (host, user, port)


@pytest.mark.parametrize("spec", ["", "a@@b", "host:", "host:99999", "user@", "ho st", "host:0"])
def test_parse_target_rejects(spec):
    with pytest.raises(BadInput) as e:
        parse_target(spec)
    assert "fix:" in str(e.value.message)


def test_duplicate_targets_rejected():
    with pytest.raises(BadInput, match="named twice"):
        parse_targets(["a", "a"])


def test_inventory_from_targets():
    inv = inventory_from_targets(parse_targets(["u@h1:2200", "h2"]))
    hosts = inv["all"]["children"]["ktdeploy"]["hosts"]
    assert hosts["h1:2200"] == {"ansible_host": "h1", "ansible_user": "u", "ansible_port": 2200}
    assert hosts["h2"] == {"ansible_host": "h2"}


def test_inventory_file_and_limit(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    a:\n      ansible_host: 10.1.1.1\n      ansible_port: 2201\n    b: {}\n")
    ts = targets_from_inventory(inv)
    assert [(t.name, t.host, t.port) for t in ts] == [("a", "10.1.1.1", 2201), ("b", "b", None)]
    assert [t.name for t in targets_from_inventory(inv, ["b"])] == ["b"]
    with pytest.raises(BadInput, match="c not in inventory"):
        targets_from_inventory(inv, ["c"])


def test_malformed_inventory(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts: [unclosed\n")
    with pytest.raises(BadInput, match="cannot be read"):
        targets_from_inventory(inv)


def test_missing_inventory(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        targets_from_inventory(tmp_path / "nope.yml")


def test_local_means_this_machine_over_a_local_connection(monkeypatch):
    import sys

    from ktdeploy import targets

    monkeypatch.setattr(targets.shutil, "which", lambda name: None)
    monkeypatch.setattr(targets.os, "geteuid", lambda: 0)
    t = targets.parse_target("local")
    assert (t.name, t.host) == ("local", "localhost")
    assert t.hostvars["ansible_connection"] == "local"
    assert t.hostvars["ansible_python_interpreter"] == sys.executable
    # root without sudo: su, with a shell for nologin service accounts
    assert t.hostvars["ansible_become_method"] == "su" and t.hostvars["ansible_become_flags"] == "-s /bin/sh"
    monkeypatch.setattr(targets.shutil, "which", lambda name: "/usr/bin/sudo")
    assert "ansible_become_method" not in targets.parse_target("local").hostvars


@pytest.mark.parametrize("port", ["abc", 99999, 0, -1, "22x"])
def test_inventory_port_that_is_no_port_is_bad_input(tmp_path, port):
    inv = tmp_path / "hosts.yml"
    inv.write_text(f"all:\n  hosts:\n    gpu1:\n      ansible_host: 10.1.1.1\n      ansible_port: {port}\n")
    with pytest.raises(BadInput) as e:
        targets_from_inventory(inv)
    assert f"gpu1: ansible_port {str(port)!r} in inventory {inv} is not a port" in e.value.message
    assert "fix: set ansible_port to the host's SSH port, a number from 1 to 65535" in e.value.message


def test_inventory_port_as_a_string_of_digits_is_a_port(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    gpu1:\n      ansible_port: '2222'\n")
    assert targets_from_inventory(inv)[0].port == 2222
