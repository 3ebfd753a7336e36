"""Offline bundles (ktdeploy.bundle, `ktdeploy bundle`, `provision --bundle`) without network or
hosts: what a run needs, the KTransformers archive packed from a git repository with a submodule
(made on the spot), an existing archive checked against its SHA256SUMS, the manifest refusing a
tampered bundle before anything runs, and the HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ktdeploy import bundle, engine, provisioning
from ktdeploy.cli import main
from ktdeploy.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
SHARED_ARCHIVE = ROOT.parent / "shared" / "ktransformers-src" / "ktransformers-0.2.3post2-offline.tar.gz"
ALL_ROLES = provisioning.site_roles()


def contents(roles, **settings):
    return bundle.wanted([bundle.settings({}, settings)], bundle.site_roles(roles, [], ALL_ROLES))


# -- what a run needs --------------------------------------------------------------------------


def test_the_default_run_needs_the_base_packages_the_build_helpers_and_the_server_runtime():
    c = contents([])
    defaults = yaml.safe_load((ROOT / "roles/base/defaults/main.yml").read_text())["base_packages"]
    assert set(defaults) | {"patch", "tar", "gzip", "util-linux"} == set(c.debs)
    assert {"transformers==4.43.2", "cpufeature", "supervisor==4.3.0", "open-webui==0.12.4"} <= set(c.requirements)
    assert c.kt_version == "v0.2.3post2" and c.python_version == "3.11" and c.webui


def test_only_base_and_python_env_needs_their_packages_only():
    c = contents(["base", "python_env"], base_packages=["tmux"], python_env_packages=["fire==0.7.1"])
    assert (c.debs, c.requirements, c.kt_version, c.model_variant) == (["tmux"], ["fire==0.7.1"], None, None)


def test_webui_off_and_the_settings_of_a_profile():
    c = contents(["serve"], serve_webui_enabled="false", serve_supervisor_version="4.2.5")
    assert c.requirements == ["supervisor==4.2.5"] and not c.webui
    with pytest.raises(BadInput, match="cannot carry llama-cpp-python"):
        contents(["serve"], plan_engine="llama.cpp")


def test_hosts_asking_for_different_pythons_are_refused():
    with pytest.raises(BadInput, match="different Python versions"):
        bundle.wanted([bundle.settings({}, {"python_env_python_version": v}) for v in ("3.11", "3.12")], ["python_env"])


def test_platform_tags_cover_glibc_2_17_to_2_36():
    tags = bundle.platforms()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags


# -- the KTransformers source --------------------------------------------------------------------


def git(*args, cwd):
    subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
                        "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def kt_repo(tmp_path_factory):
    """A repository with a submodule (itself with a nested one), tagged v9.9.9: file:// URLs."""
    base = tmp_path_factory.mktemp("git")
    for name in ("nested", "lib", "kt"):
        (base / name).mkdir()
        git("init", "-q", "-b", "main", cwd=base / name)
    (base / "nested/deep.txt").write_text("deep\n")
    git("add", ".", cwd=base / "nested")
    git("commit", "-q", "-m", "nested", cwd=base / "nested")
    (base / "lib/lib.c").write_text("int lib;\n")
    git("add", ".", cwd=base / "lib")
    git("submodule", "add", "-q", f"file://{base / 'nested'}", "nested", cwd=base / "lib")
    git("commit", "-q", "-m", "lib", cwd=base / "lib")
    (base / "kt/setup.py").write_text("print('kt')\n")
    (base / "kt/run.sh").write_text("#!/bin/sh\n")
    (base / "kt/run.sh").chmod(0o755)
    git("add", ".", cwd=base / "kt")
    git("submodule", "add", "-q", f"file://{base / 'lib'}", "third_party/lib", cwd=base / "kt")
    git("commit", "-q", "-m", "kt", cwd=base / "kt")
    git("tag", "v9.9.9", cwd=base / "kt")
    (base / "kt/later.txt").write_text("after the tag\n")
    git("add", ".", cwd=base / "kt")
    git("commit", "-q", "-m", "later", cwd=base / "kt")
    return f"file://{base / 'kt'}"


def test_a_tag_is_packed_with_its_submodules_into_one_top_folder_the_same_bytes_each_time(kt_repo, tmp_path):
    first = bundle.pack_git(kt_repo, "v9.9.9", tmp_path / "a.tar.gz")
    second = bundle.pack_git(kt_repo, "v9.9.9", tmp_path / "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("ktransformers-9.9.9/third_party/lib/nested/deep.txt").read() == b"deep\n"
    assert {"ktransformers-9.9.9/setup.py", "ktransformers-9.9.9/third_party/lib/lib.c"} <= set(members)
    assert "ktransformers-9.9.9/later.txt" not in members  # the tag, not the branch
    assert members["ktransformers-9.9.9/run.sh"].mode & 0o111 and members["ktransformers-9.9.9/setup.py"].uid == 0
    assert list(members) == sorted(members)
    assert gzip.open(first).read() and first.read_bytes()[4:8] == b"\0\0\0\0"  # no time in the gzip header


def test_a_moved_upstream_tag_is_refused(kt_repo, tmp_path, monkeypatch):
    monkeypatch.setitem(bundle.build.KNOWN_TAG_COMMITS, "v9.9.9", "0" * 40)
    with pytest.raises(Exception, match="the mirror's tag moved"):
        bundle.pack_git(kt_repo, "v9.9.9", tmp_path / "a.tar.gz")


def test_bundle_create_packs_the_source_and_writes_the_manifest(kt_repo, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["bundle", "create", str(out), "--only", "ktransformers", "--no-debs",
                                       "--no-wheels", "--kt-git", kt_repo, "--kt-version", "v9.9.9"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    kt = manifest["contents"]["ktransformers"]
    archive = out / kt["file"]
    assert kt["version"] == "v9.9.9" and kt["file"] == "ktransformers/ktransformers-9.9.9-offline.tar.gz"
    assert kt["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest() == manifest["files"][kt["file"]]["sha256"]
    assert (out / "SHA256SUMS").read_text() == f"{kt['sha256']}  {kt['file']}\n"
    assert "all matching manifest.json" in result.output
    again = CliRunner().invoke(main, ["bundle", "create", str(out), "--only", "ktransformers", "--no-debs", "--no-wheels",
                                      "--kt-git", kt_repo, "--kt-version", "v9.9.9"])
    assert again.exit_code == 2 and "exists and is not an empty directory" in again.output


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="no shared KTransformers archive beside the checkout")
def test_an_existing_archive_is_checked_against_its_sha256sums(tmp_path):
    assert bundle.check_archive(SHARED_ARCHIVE, "v0.2.3post2") == \
        (SHARED_ARCHIVE.parent / "SHA256SUMS").read_text().split()[0]
    with pytest.raises(BadInput, match=r"holds ktransformers-0.2.3post2/, not ktransformers-0.2.1.post1/"):
        bundle.check_archive(SHARED_ARCHIVE, "v0.2.1.post1")
    copy = tmp_path / SHARED_ARCHIVE.name
    shutil.copyfile(SHARED_ARCHIVE, copy)
    with pytest.raises(BadInput, match="no SHA256SUMS beside it"):
        bundle.check_archive(copy, "v0.2.3post2")
    shutil.copyfile(SHARED_ARCHIVE.parent / "SHA256SUMS", tmp_path / "SHA256SUMS")
    with open(copy, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BadInput, match="fetch the archive again|has sha256"):
        bundle.check_archive(copy, "v0.2.3post2")


def test_model_files_are_looked_for_before_anything_is_downloaded(tmp_path):
    (tmp_path / "models/DeepSeek-R1-GGUF").mkdir(parents=True)
    result = CliRunner().invoke(main, ["bundle", "create", str(tmp_path / "b"), "--model-dir", str(tmp_path / "models")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'models/DeepSeek-R1-GGUF'} holds no file of unsloth/DeepSeek-R1-GGUF" in result.output
    bad = CliRunner().invoke(main, ["bundle", "create", str(tmp_path / "b"), "--python-version", "311"])
    assert bad.exit_code == 2 and "'311' is not like 3.11" in bad.output
    assert not (tmp_path / "b").exists()


def test_kt_archive_is_checked_before_anything_is_downloaded(tmp_path):
    bad = tmp_path / "kt.tar.gz"
    bad.write_bytes(b"not it")
    result = CliRunner().invoke(main, ["bundle", "create", str(tmp_path / "b"), "--kt-archive", str(bad),
                                       "--kt-sha256", "0" * 64])
    assert result.exit_code == 2, result.output
    assert f"{bad} has sha256" in result.output and not (tmp_path / "b").exists()


# -- the manifest: a tampered bundle is refused ----------------------------------------------------


@pytest.fixture
def small_bundle(tmp_path):
    root = tmp_path / "bundle"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels/pkg-1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (root / "debs").mkdir()
    (root / "debs/pkg_1.0_all.deb").write_bytes(b"deb bytes" * 1000)
    bundle.write_wheel_index(root / "wheels")
    bundle.write_manifest(root, {"python_version": "3.11", "wheels": {}, "debs": {}})
    return root


def test_an_intact_bundle_verifies(small_bundle):
    result = CliRunner().invoke(main, ["bundle", "verify", str(small_bundle)])
    assert result.exit_code == 0, result.output
    assert "3 files" in result.output and "all matching manifest.json" in result.output


@pytest.mark.parametrize(("tamper", "problem"), [
    (lambda r: (r / "wheels/pkg-1.0-py3-none-any.whl").write_bytes(b"wheel byteZ"), "wheels/pkg-1.0-py3-none-any.whl: sha256 "),
    (lambda r: (r / "debs/pkg_1.0_all.deb").write_bytes(b"short"), "debs/pkg_1.0_all.deb: 5 bytes, the manifest says 9000"),
    (lambda r: (r / "debs/pkg_1.0_all.deb").unlink(), "debs/pkg_1.0_all.deb: missing"),
    (lambda r: (r / "debs/evil_1.0_all.deb").write_bytes(b"x"), "debs/evil_1.0_all.deb: not in the manifest"),
    (lambda r: (r / "manifest.json").write_text("{"), "manifest.json is not valid JSON"),
])
def test_a_tampered_bundle_is_refused_naming_the_file(small_bundle, tamper, problem):
    tamper(small_bundle)
    result = CliRunner().invoke(main, ["bundle", "verify", str(small_bundle)])
    assert result.exit_code == 2, result.output
    assert problem in result.output and "fix:" in result.output


def test_provision_refuses_a_tampered_bundle_before_anything_runs(small_bundle, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(provisioning.connect, "check_hosts", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(engine, "run_playbook", lambda *a, **k: calls.append(a))
    (small_bundle / "wheels/pkg-1.0-py3-none-any.whl").write_bytes(b"changed")
    result = CliRunner().invoke(main, ["provision", "gpu1", "--bundle", str(small_bundle)])
    assert result.exit_code == 2, result.output
    assert "does not match its manifest; nothing was changed" in result.output
    assert calls == []


def test_provision_refuses_a_run_that_does_not_fit_the_bundle(small_bundle, monkeypatch):
    calls = []
    monkeypatch.setattr(provisioning.connect, "check_hosts", lambda *a, **k: calls.append(a) or [])
    clash = CliRunner().invoke(main, ["provision", "gpu1", "--bundle", str(small_bundle), "-e", "python_env_pip_no_index=false"])
    assert clash.exit_code == 2 and "-e python_env_pip_no_index conflicts with --bundle" in clash.output
    python = CliRunner().invoke(main, ["provision", "gpu1", "--bundle", str(small_bundle), "-e", "python_env_python_version=3.12"])
    assert python.exit_code == 2 and "the bundle's wheels are for Python 3.11" in python.output
    for bad in ("10.0.0.1:99999", "no such host!"):
        address = CliRunner().invoke(main, ["provision", "gpu1", "--bundle", str(small_bundle), "--bundle-address", bad])
        assert address.exit_code == 2 and f"--bundle-address {bad!r} is not ADDRESS[:PORT]" in address.output
    assert calls == []


# -- serving it ---------------------------------------------------------------------------------


def test_the_server_serves_the_manifest_files_only_with_ranges(small_bundle):
    manifest = bundle.verify(small_bundle)
    with bundle.Server(small_bundle, manifest, "127.0.0.1", 0) as server:
        index = urllib.request.urlopen(f"{server.url}/wheels/").read().decode()
        assert 'href="pkg-1.0-py3-none-any.whl#sha256=' in index
        part = urllib.request.urlopen(urllib.request.Request(f"{server.url}/debs/./pkg_1.0_all.deb",
                                                             headers={"Range": "bytes=3-8"}))
        assert part.status == 206 and part.read() == b" bytes"
        for path in ("/../manifest.json/../../etc/passwd", "/debs/", "/nothing"):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(server.url + path)
    assert server.served[:2] == ["200 /wheels/", "206 /debs/./pkg_1.0_all.deb"]


def test_the_roles_are_pointed_at_the_bundle(small_bundle):
    v = bundle.provision_vars(bundle.verify(small_bundle), small_bundle, "http://10.0.0.1:8765", "10.0.0.1")
    assert v["base_apt_bundle_url"] == "http://10.0.0.1:8765/debs/"
    assert v["python_env_pip_find_links"] == ["http://10.0.0.1:8765/wheels/"] and v["python_env_pip_no_index"] is True
    assert v["python_env_pip_trusted_hosts"] == ["10.0.0.1"] and v["python_env_pip_index_url"] == ""
    assert v["model_download_enabled"] is False and "ktransformers_source" not in v
    assert v["torch_flash_attn"] == "sdpa"  # the release page is out of reach
    assert set(v) - {"model_download_enabled", "torch_flash_attn"} <= set(bundle.BUNDLE_VARS)
    chosen = bundle.provision_vars(bundle.verify(small_bundle), small_bundle, "http://h:1", "h", {"torch_flash_attn"})
    assert "torch_flash_attn" not in chosen


def test_the_controller_address_is_the_one_the_hosts_are_reached_from():
    from ktdeploy.targets import parse_targets

    assert bundle.controller_address(parse_targets(["127.0.0.1", "127.0.0.2:2222"])) == ("127.0.0.1", bundle.DEFAULT_PORT)
    assert bundle.controller_address([], "10.0.0.1:9000") == ("10.0.0.1", 9000)
    assert bundle.controller_address([], "[fd00::1]:9000") == ("fd00::1", 9000)
