"""`ktdeploy bundle create` then `provision --bundle` on lab hosts that reach nothing but the
bundle's port on the controller: their apt proxy and the lab wheelhouse are cut off (policy routing
in their network namespace), so the Debian packages, the wheels and the model files the real roles
install (`--only base,python_env,model_download`) can only come from the bundle. The model is a
stand-in for the catalog's default variant (small files where its shards and config go), as a
download on the controller would have left it."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy.cli import main
from ktdeploy.lab.paths import APT_PROXY_PORT, CONTROLLER_IP, WHEELHOUSE_PORT, netns_name

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# The run the bundle is made for: a few Debian packages with dependencies the golden image lacks
# (tmux: libevent, libutempter; python3-venv: ensurepip's wheels), and a wheel with a dependency.
RUN_VARS = {"base_packages": ["python3-venv", "python3-packaging", "tmux"], "python_env_packages": ["fire==0.7.1"],
            "plan_force": True}
ROLES = "base,python_env,model_download"
# base_model_dir of a controller that downloaded the default variant: its shard and the config files.
MODEL_FILES = {"DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00001.gguf": 3_000_000,
               "DeepSeek-R1/config.json": 1_000, "DeepSeek-R1/tokenizer.json": 2_000}


@pytest.fixture(scope="module")
def made_bundle(tmp_path_factory):
    """The bundle for that run, made from an inventory's settings (no host is asked)."""
    base = tmp_path_factory.mktemp("bundle")
    inventory = base / "settings.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"any": {}}, "vars": RUN_VARS}}))
    models = base / "models"
    for rel, size in MODEL_FILES.items():
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(hashlib.sha256(rel.encode()).digest() * (size // 32))
    result = CliRunner().invoke(main, ["bundle", "create", str(base / "b"), "-i", str(inventory), "--only", ROLES,
                                       "--model-dir", str(models)])
    assert result.exit_code == 0, result.output
    return base / "b", models


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def reach_only(host, port: int) -> None:
    """The host answers SSH and reaches the controller's `port`; every other destination is prohibited."""
    ns = netns_name(host.index)
    for rule in (["priority", "90", "ipproto", "tcp", "sport", "22", "lookup", "main"],
                 ["priority", "91", "to", CONTROLLER_IP, "ipproto", "tcp", "dport", str(port), "lookup", "main"],
                 ["priority", "92", "prohibit"]):
        subprocess.run(["ip", "-n", ns, "rule", "add", *rule], check=True, capture_output=True)


PROBE = ("import socket, sys\n"
         "for port in map(int, sys.argv[1:]):\n"
         "    try:\n"
         "        socket.create_connection(('" + CONTROLLER_IP + "', port), 3).close(); print(port, 'open')\n"
         "    except OSError as e:\n"
         "        print(port, 'closed', e.errno)\n")


def test_hosts_that_reach_nothing_but_the_bundle_converge_from_it(lab_hosts, isolated, made_bundle):
    made_bundle, models = made_bundle
    manifest = json.loads((made_bundle / "manifest.json").read_text())
    assert {"python3-venv", "tmux"} <= set(manifest["contents"]["debs"]["packages"])
    assert any(f.startswith("fire-0.7.1") for f in manifest["contents"]["wheels"]["files"])
    assert any(f.startswith("termcolor-") for f in manifest["contents"]["wheels"]["files"])  # fire's dependency

    hosts = lab_hosts(2)
    port = free_port(CONTROLLER_IP)
    for h in hosts:
        reach_only(h, port)
    with socket.socket() as listener:  # something listens on the bundle port, so "open" is a real answer
        listener.bind((CONTROLLER_IP, port))
        listener.listen()
        probe = hosts[0].run(["python3", "-c", PROBE, str(APT_PROXY_PORT), str(WHEELHOUSE_PORT), str(port)], timeout=60)
    assert probe.stdout.split("\n")[:3] == [f"{APT_PROXY_PORT} closed 13", f"{WHEELHOUSE_PORT} closed 13",
                                            f"{port} open"], probe.stdout + probe.stderr
    inventory = isolated / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {h.name: h.hostvars("deploy") for h in hosts}, "vars": RUN_VARS}}))

    result = CliRunner().invoke(main, ["provision", "-i", str(inventory), "--plain", "--only", ROLES,
                                       "--bundle", str(made_bundle), "--bundle-address", f"{CONTROLLER_IP}:{port}"])
    assert result.exit_code == 0, result.output
    assert f"bundle: serving {made_bundle} at http://{CONTROLLER_IP}:{port} for this run" in result.output
    assert "Hosts: 2 in the run: 2 ok" in result.output
    assert f"bundle: {hosts[0].name}: the model is complete (DeepSeek-R1-UD-IQ1_S, DeepSeek-R1-config)" in result.output
    for h in hosts:
        check = h.run("dpkg-query -W -f '${Status}\\n' tmux python3-venv && /srv/ktdeploy/venv-env/bin/python -c "
                      "'import fire, termcolor; print(fire.__version__)' && cat /srv/ktdeploy/venv-env/pip.conf",
                      timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count("install ok installed") == 2 and "0.7.1" in check.stdout
        assert f"http://{CONTROLLER_IP}:{port}/wheels/" in check.stdout  # pip.conf: the bundle, no index
        # the host's own apt sources were never refreshed: they are out of reach
        assert h.run("test -e /var/lib/apt/periodic/update-success-stamp", timeout=30).returncode == 1
        sums = h.run("cd /srv/ktdeploy/models && sha256sum " + " ".join(MODEL_FILES), timeout=60)
        assert sums.returncode == 0, sums.stderr
        assert sums.stdout == "".join(f"{hashlib.sha256((models / rel).read_bytes()).hexdigest()}  {rel}\n"
                                      for rel in MODEL_FILES)
