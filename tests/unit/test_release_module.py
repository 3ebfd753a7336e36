"""The release module of the release role (roles/release/library/ktdeploy_release.py) on real files:
records, ids, pruning with the kept wheels, and rollbacks (to the release before, or back to the
last recorded one after a converge that stopped part-way)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from ktdeploy.resources import share_dir

MODULE = share_dir() / "roles" / "release" / "library" / "ktdeploy_release.py"
spec = importlib.util.spec_from_file_location("ktdeploy_release", MODULE)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)


class Host:
    """A host's live files under tmp_path: a unit, an env file, a stage record and the engine marker."""

    def __init__(self, tmp_path):
        self.base = tmp_path
        self.root = str(tmp_path / "state" / "releases")
        self.unit = tmp_path / "etc" / "ktdeploy-api.service"
        self.env = tmp_path / "etc" / "ktdeploy-api.env"
        self.record = tmp_path / "state" / "stages" / "serve.json"
        self.marker = tmp_path / "venv" / "ktdeploy-engine"
        for p in (self.unit, self.env, self.record, self.marker):
            p.parent.mkdir(parents=True, exist_ok=True)
        self.installed: list[tuple[str, str]] = []

    def converge(self, model: str, build: str, env: str = "KTDEPLOY_API_KEY=s3cret\n") -> None:
        self.unit.write_text(f"ExecStart=server --model {model}\n")
        self.env.write_text(env)
        os.chmod(self.env, 0o600)
        self.record.write_text(json.dumps({"model": model}))
        self.marker.write_text(build + "\n")

    def wheel(self, build: str) -> str:
        folder = self.base / "wheels" / build
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"llama_cpp_python-{build}-py3-none-any.whl"
        path.write_text(build)
        return str(path)

    def params(self, build: str, keep: int = 2) -> dict:
        return {"engine": "llamacpp", "engine_key": build, "wheel": self.wheel(build), "python": "/venv/bin/python",
                "marker": str(self.marker), "manager": "systemd", "api_unit": "ktdeploy-api",
                "files": [str(self.unit), str(self.env), str(self.record), str(self.marker)], "keep": keep}

    def releases(self):
        return mod.Releases(self.root)

    def record_release(self, model: str, build: str, keep: int = 2) -> dict:
        self.converge(model, build)
        return self.releases().present(self.params(build, keep))

    def rollback(self, check_mode: bool = False) -> dict:
        return self.releases().rollback(lambda python, wheel: self.installed.append((python, wheel)), check_mode)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_the_same_live_files_are_the_same_release(host):
    first = host.record_release("old", "b1")
    assert first["changed"] and first["previous"] == ""
    again = host.releases().present(host.params("b1"))
    assert again == {"changed": False, "release": first["release"], "previous": "", "pruned": []}
    assert oct(os.stat(host.root).st_mode & 0o777) == "0o700"
    copy = json.loads((host.base / "state" / "releases" / first["release"] / "release.json").read_text())
    assert [f["path"] for f in copy["files"]] == host.params("b1")["files"]
    env_copy = host.base / "state" / "releases" / first["release"] / copy["files"][1]["copy"]
    assert env_copy.read_text() == "KTDEPLOY_API_KEY=s3cret\n" and oct(env_copy.stat().st_mode & 0o777) == "0o600"


def test_ids_are_salted_per_host(tmp_path):
    a, b = Host(tmp_path / "a"), Host(tmp_path / "b")
    assert a.record_release("m", "b1")["release"] != b.record_release("m", "b1")["release"]


def test_a_new_release_keeps_the_one_before_and_prunes_older_ones_with_their_wheels(host):
    r1 = host.record_release("m1", "b1")["release"]
    r2 = host.record_release("m2", "b2")
    assert r2["changed"] and r2["previous"] == r1
    r3 = host.record_release("m3", "b3")
    assert r3["previous"] == r2["release"] and r3["pruned"] == [r1]
    state = json.loads((host.base / "state" / "releases" / "state.json").read_text())
    assert state == {"format": 1, "history": [r3["release"], r2["release"]], "rolled_back": False}
    assert not (host.base / "state" / "releases" / r1).exists()
    assert not (host.base / "wheels" / "b1").exists()  # only the dropped release used it
    assert (host.base / "wheels" / "b2").exists() and (host.base / "wheels" / "b3").exists()


def test_a_wheel_a_kept_release_still_uses_stays(host):
    host.record_release("m1", "b1")
    host.record_release("m2", "b1")  # a new model, the same build
    host.record_release("m3", "b1")
    assert (host.base / "wheels" / "b1").exists()


def test_keep_must_leave_something_to_roll_back_to(host):
    host.converge("m", "b1")
    with pytest.raises(mod.ReleaseError, match="keep must be at least 2"):
        host.releases().present(host.params("b1", keep=1))


def test_rollback_restores_the_release_before_with_its_wheel_then_changes_nothing(host):
    r1 = host.record_release("old", "b1")["release"]
    r2 = host.record_release("new", "b2")["release"]
    os.chmod(host.env, 0o644)
    out = host.rollback()
    assert out["changed"] and out["release"] == r1 and out["rolled_back_from"] == r2 and out["reinstalled"]
    assert host.installed == [("/venv/bin/python", host.wheel("b1"))]
    assert host.unit.read_text() == "ExecStart=server --model old\n" and host.marker.read_text() == "b1\n"
    assert oct(host.env.stat().st_mode & 0o777) == "0o600"  # the recorded mode comes back too
    state = json.loads((host.base / "state" / "releases" / "state.json").read_text())
    assert state["history"] == [r1, r2] and state["rolled_back"] is True
    again = host.rollback()
    assert not again["changed"] and again["release"] == r1 and len(host.installed) == 1


def test_rollback_of_a_config_change_keeps_the_installed_build(host):
    host.record_release("old", "b1")
    host.record_release("new", "b1")
    out = host.rollback()
    assert out["changed"] and not out["reinstalled"] and host.installed == []


def test_a_converge_that_stopped_part_way_goes_back_to_the_last_recorded_release(host):
    r1 = host.record_release("old", "b1")["release"]
    host.unit.write_text("ExecStart=server --model broken\n")  # rewritten, the release never recorded
    out = host.rollback()
    assert out["release"] == r1 and out["rolled_back_from"] == r1 and not out["reinstalled"]
    assert host.unit.read_text() == "ExecStart=server --model old\n"
    assert not host.rollback()["changed"]


def test_a_file_absent_from_the_release_is_removed_again(host):
    host.converge("old", "b1")
    host.record.unlink()
    r1 = host.releases().present(host.params("b1"))["release"]
    host.record_release("new", "b2")
    host.rollback()
    assert not host.record.exists()
    assert json.loads((host.base / "state" / "releases" / r1 / "release.json").read_text())["files"][2]["absent"]


def test_rollback_refuses_without_an_earlier_release_or_its_wheel(host):
    with pytest.raises(mod.ReleaseError, match="nothing to roll back to"):
        host.rollback()
    host.record_release("old", "b1")
    with pytest.raises(mod.ReleaseError, match="no earlier release"):
        host.rollback()
    host.record_release("new", "b2")
    os.unlink(host.wheel("b1"))
    before = host.unit.read_text()
    with pytest.raises(mod.ReleaseError, match="its wheel .* is not kept on this host.*nothing was changed"):
        host.rollback()
    assert host.unit.read_text() == before and host.installed == []


def test_check_mode_writes_nothing(host):
    host.converge("old", "b1")
    out = host.releases().present(host.params("b1"), check_mode=True)
    assert out["changed"] and not os.path.exists(os.path.join(host.root, "state.json"))
    host.record_release("old", "b1")
    host.record_release("new", "b2")
    out = host.rollback(check_mode=True)
    assert out["changed"] and host.unit.read_text() == "ExecStart=server --model new\n" and host.installed == []
