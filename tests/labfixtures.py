"""Pytest fixtures for lab hosts (registered from tests/conftest.py).

- `lab` (session): a ready ktdeploy.lab.Lab; skips with the reason when this machine cannot run
  the lab (not root, host tools missing: `scripts/setup.sh` installs them). At session end it
  takes down the hosts the session made and stops the daemons if no one else uses them, then
  fails loudly if a ktlab netns this session created is still there.
- `lab_host` (function): a freshly booted LabHost, taken down afterwards even when the test fails.
- `lab_hosts` (function): a factory, `lab_hosts(k)` -> k fresh hosts, all taken down afterwards.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lab():
    from ktdeploy.lab import Lab, requirements

    gaps = requirements.missing()
    if gaps:
        pytest.skip("lab unavailable: missing " + "; ".join(gaps) + f" ({requirements.FIX})")
    the_lab = Lab()
    try:
        the_lab.ensure_ready()
        yield the_lab
    finally:
        the_lab.close()
        _assert_no_leftovers(the_lab)


def _assert_no_leftovers(the_lab) -> None:
    from ktdeploy.lab.paths import netns_name

    left = the_lab.leftovers()
    if left:
        pytest.fail("lab teardown left network namespaces behind: " + ", ".join(netns_name(n) for n in left))


@pytest.fixture
def lab_host(lab):
    host = lab.up()
    try:
        yield host
    finally:
        lab.down(host.index)


@pytest.fixture
def lab_hosts(lab):
    made = []

    def make(k: int):
        hosts = []
        for _ in range(k):
            host = lab.up()
            made.append(host)
            hosts.append(host)
        return hosts

    try:
        yield make
    finally:
        errors = []
        for host in made:
            try:
                lab.down(host.index)
            except Exception as exc:  # take every host down before reporting
                errors.append(f"{host.name}: {exc}")
        if errors:
            pytest.fail("lab teardown failed: " + "; ".join(errors))
