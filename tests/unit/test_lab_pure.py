"""Pure parts of ktdeploy.lab: index allocation, inventory, wheelhouse index, apt sources, preflight."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy.cli import main
from ktdeploy.lab import aptsources, hosts, inventory, requirements, wheelhouse
from ktdeploy.lab.bootloop import nspawn_argv
from ktdeploy.lab.paths import LabPaths, host_address, netns_name, state_dir


def test_allocate_picks_lowest_free_index():
    assert hosts.allocate(set()) == 1
    assert hosts.allocate({1, 2, 4}) == 3
    assert hosts.allocate({2}) == 1


def test_allocate_fails_clearly_when_full():
    with pytest.raises(hosts.HostError, match="in use"):
        hosts.allocate(set(range(1, 255)))


def test_host_naming():
    assert host_address(7) == "10.203.7.2"
    assert netns_name(7) == "ktlab7"


def test_state_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KTDEPLOY_LAB_DIR", str(tmp_path / "x"))
    assert state_dir() == tmp_path / "x"
    monkeypatch.delenv("KTDEPLOY_LAB_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert state_dir() == tmp_path / "c" / "ktdeploy" / "lab"


def test_inventory_renders_ansible_connection_vars(tmp_path):
    key = tmp_path / "id_ed25519"
    path = inventory.write(tmp_path / "inv.yml", [("lab1", "10.203.1.2"), ("lab3", "10.203.3.2")], key)
    data = yaml.safe_load(path.read_text())
    hosts_ = data["all"]["children"]["lab"]["hosts"]
    assert list(hosts_) == ["lab1", "lab3"]
    assert hosts_["lab3"] == {
        "ansible_host": "10.203.3.2",
        "ansible_user": "deploy",
        "ansible_become": True,
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def test_inventory_points_pip_at_the_lab_wheelhouse(tmp_path):
    """Lab hosts reach no package index but the wheelhouse: the inventory `lab up` prints says so, as the
    demo's does, or provisioning it fails at the first pip install."""
    from ktdeploy.lab import demo

    path = inventory.write(tmp_path / "inv.yml", [("lab1", "10.203.1.2")], tmp_path / "k")
    group_vars = yaml.safe_load(path.read_text())["all"]["children"]["lab"]["vars"]
    assert group_vars == demo.pip_vars(type("Lab", (), {"wheelhouse": wheelhouse.Wheelhouse})())


def test_inventory_is_read_by_ansible(tmp_path):
    from ktdeploy.targets import targets_from_inventory

    path = inventory.write(tmp_path / "inv.yml", [("lab2", "10.203.2.2")], tmp_path / "k")
    (t,) = targets_from_inventory(path)
    assert (t.name, t.host, t.user) == ("lab2", "10.203.2.2", "deploy")
    assert t.hostvars["ansible_ssh_private_key_file"] == str(tmp_path / "k")


def test_lab_host_target_for_root_does_not_become(tmp_path):
    from ktdeploy.lab import LabHost

    h = LabHost(4, tmp_path / "k", tmp_path / "run" / "4")
    assert h.target("root").hostvars["ansible_become"] is False
    t = h.target()
    assert (t.name, t.host, t.user) == ("lab4", "10.203.4.2", "deploy")
    assert h.ssh_argv()[-1] == "deploy@10.203.4.2"


@pytest.mark.parametrize(
    "filename,project",
    [
        ("Jinja2-3.1.4-py3-none-any.whl", "jinja2"),
        ("zope.interface-6.0-cp311-cp311-manylinux_2_17_x86_64.whl", "zope-interface"),
        ("ruamel_yaml-0.18.6.tar.gz", "ruamel-yaml"),
        ("backports.tarfile-1.2.0.tar.gz", "backports-tarfile"),
        ("notes.txt", None),
    ],
)
def test_project_of_distribution_files(filename, project):
    assert wheelhouse.project_of(filename) == project


def test_build_index_writes_pep503_pages(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "Foo_Bar-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (files / "foo-bar-1.1.tar.gz").write_bytes(b"sdist")
    (files / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"six")
    got = wheelhouse.build_index(files, tmp_path / "simple")
    assert got == {"foo-bar": ["Foo_Bar-1.0-py3-none-any.whl", "foo-bar-1.1.tar.gz"],
                   "six": ["six-1.16.0-py2.py3-none-any.whl"]}
    page = (tmp_path / "simple" / "foo-bar" / "index.html").read_text()
    import hashlib

    digest = hashlib.sha256(b"sdist").hexdigest()
    assert f'href="../../files/foo-bar-1.1.tar.gz#sha256={digest}"' in page
    root = (tmp_path / "simple" / "index.html").read_text()
    assert 'href="foo-bar/"' in root and 'href="six/"' in root


def test_wheelhouse_pip_args_point_at_controller():
    w = wheelhouse.Wheelhouse(Path("/nonexistent"))
    assert w.index_url == "http://10.203.0.1:3141/simple/"
    assert w.pip_args == ["--index-url", w.index_url, "--trusted-host", "10.203.0.1"]


def test_wheelhouse_add_skips_a_request_already_fulfilled(tmp_path, monkeypatch):
    w = wheelhouse.Wheelhouse(tmp_path)
    w.files.mkdir()
    (w.files / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"x")
    w.records.write_text(
        '{"%s": ["six-1.16.0-py2.py3-none-any.whl"]}' % wheelhouse.request_key(["six==1.16.0"], False, False).replace('"', '\\"')
    )

    def no_pip(*a, **k):
        raise AssertionError("pip download ran although the request was already fulfilled")

    monkeypatch.setattr(wheelhouse.subprocess, "run", no_pip)
    assert w.add(["six==1.16.0"]) == ["six-1.16.0-py2.py3-none-any.whl"]


DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

# a comment
Types: deb
URIs: https://secure.example/apt
Suites: nodistro
Components: main

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
"""


def test_apt_sources_keep_plain_http_binary_entries(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc / "sources.list.d" / "old.list.disabled").write_text("deb http://x.example/ bookworm main\n")
    (etc / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://sec.example/debian-security bookworm-security main\n"
        "deb https://tls.example/ x main\n"
    )
    text = aptsources.controller_sources(etc)
    assert "https://" not in text and "x.example" not in text and "deb-src" not in text
    assert "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates" in text
    assert "URIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /k.gpg" in text
    assert aptsources.first_mirror(text, "bookworm") == "http://mirror.example/debian"
    assert aptsources.first_mirror(text, "trixie") is None


def test_apt_sources_empty_when_nothing_usable(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    assert aptsources.controller_sources(tmp_path) == ""


def test_nspawn_runs_without_machined():
    argv = nspawn_argv("/r", "lab1", "/run/netns/ktlab1")
    assert {"--register=no", "--keep-unit", "--boot", "--network-namespace-path=/run/netns/ktlab1"} <= set(argv)


def test_nspawn_without_systemd_runs_sshd_as_the_main_process():
    argv = nspawn_argv("/r", "lab1", "/run/netns/ktlab1", systemd=False)
    assert "--boot" not in argv and "--as-pid2" in argv
    assert argv[-1].endswith("exec /usr/sbin/sshd -D -e")


def test_requirements_name_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t, path=None: None if t in ("systemd-nspawn", "mmdebstrap", "debootstrap") else real(t))
    gaps = requirements.missing()
    assert any(g.startswith("root") for g in gaps)
    assert any("systemd-nspawn" in g and "systemd-container" in g for g in gaps)
    assert any("mmdebstrap or debootstrap" in g for g in gaps)


def test_lab_cli_without_root_exits_2_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("KTDEPLOY_LAB_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["lab", "up"])
    assert result.exit_code == 2
    assert "root" in result.output and "scripts/setup.sh" in result.output
    assert not any(tmp_path.iterdir())  # nothing was changed


def test_lab_down_needs_index_or_all():
    result = CliRunner().invoke(main, ["lab", "down"])
    assert result.exit_code == 2 and "--all" in result.output


def test_lab_paths_layout(tmp_path):
    p = LabPaths(tmp_path)
    assert p.host_dir(3) == tmp_path / "run" / "3"
    assert p.golden("r1-abc") == tmp_path / "golden-r1-abc"


def test_lab_commands_on_a_host_that_is_not_up_are_bad_input(monkeypatch, tmp_path):
    monkeypatch.setenv("KTDEPLOY_LAB_DIR", str(tmp_path))
    commands = [["lab", "ssh", "9"], ["lab", "inventory", "9"]]
    if os.geteuid() == 0:  # `down` checks the controller can run the lab first
        commands.append(["lab", "down", "9"])
    for args in commands:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "lab9 is not up" in result.output
