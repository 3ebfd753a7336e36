"""The patch-series applier module of the ktransformers role, run for real with GNU patch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktdeploy import build
from ktdeploy.resources import share_dir

MODULE = share_dir() / "roles" / "ktransformers" / "library" / "ktdeploy_patch_series.py"
SERIES_ROOT = share_dir() / "patches" / "ktransformers"

spec = importlib.util.spec_from_file_location("ktdeploy_patch_series", MODULE)
applier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(applier)

ORIGINAL = "".join(f"line {i}\n" for i in range(1, 31))
PATCH_A = """Subject: change line 3 and line 25

--- a/src/file.txt
+++ b/src/file.txt
@@ -1,5 +1,5 @@
 line 1
 line 2
-line 3
+line three
 line 4
 line 5
@@ -23,5 +23,5 @@
 line 23
 line 24
-line 25
+line twenty-five
 line 26
 line 27
"""
PATCH_B = """--- a/src/other.txt
+++ b/src/other.txt
@@ -0,0 +1 @@
+new file
"""


def run_module(src, patches, check=False):
    args = {"ANSIBLE_MODULE_ARGS": {"src": str(src), "patches": patches, "_ansible_check_mode": check}}
    args_file = Path(src).parent / "module-args.json"
    args_file.write_text(json.dumps(args))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True, text=True)
    return json.loads(proc.stdout)


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file.txt").write_text(ORIGINAL)
    return tmp_path


SERIES = [{"name": "0001-a.patch", "content": PATCH_A}, {"name": "0002-b.patch", "content": PATCH_B}]


def test_applies_then_skips(tree):
    first = run_module(tree, SERIES)
    assert first["changed"] is True and first["applied"] == ["0001-a.patch", "0002-b.patch"]
    assert "line three" in (tree / "src" / "file.txt").read_text()
    assert (tree / "src" / "other.txt").read_text() == "new file\n"
    again = run_module(tree, SERIES)
    assert again["changed"] is False and again["already_applied"] == ["0001-a.patch", "0002-b.patch"]
    assert "skipped" not in again  # Ansible would report the whole task as skipped
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))


def test_check_mode_changes_nothing(tree):
    result = run_module(tree, SERIES, check=True)
    assert result["changed"] is True
    assert (tree / "src" / "file.txt").read_text() == ORIGINAL
    assert not (tree / "src" / "other.txt").exists()


def test_conflict_names_patch_and_hunk_and_touches_nothing(tree):
    changed = ORIGINAL.replace("line 25\n", "line 25 edited upstream\n")
    (tree / "src" / "file.txt").write_text(changed)
    result = run_module(tree, SERIES)
    assert result["failed"] is True
    assert result["msg"].startswith("patch 0001-a.patch does not apply: src/file.txt hunk #2")
    assert "-line 25\n+line twenty-five" in result["msg"]
    assert (tree / "src" / "file.txt").read_text() == changed
    assert not (tree / "src" / "other.txt").exists()
    assert not list(tree.rglob("*.rej"))


def test_missing_file_is_named(tree):
    (tree / "src" / "file.txt").unlink()
    result = run_module(tree, SERIES[:1])
    assert result["failed"] is True and "0001-a.patch" in result["msg"]
    assert "src/file.txt" in result["msg"]


def test_missing_tree_is_named(tmp_path):
    result = run_module(tmp_path / "nope", SERIES)
    assert result["failed"] is True and "does not exist" in result["msg"]


def test_failed_hunks_parses_gnu_patch_output():
    out = "checking file a/b.cpp\nHunk #1 succeeded at 10.\nHunk #3 FAILED at 175.\n1 out of 3 hunks FAILED\n"
    assert applier.failed_hunks(out) == [("a/b.cpp", 3, 175)]


def test_hunk_text_picks_the_right_file_and_hunk():
    assert applier.hunk_text(PATCH_A, "src/file.txt", 1).splitlines()[4] == "+line three"
    assert applier.hunk_text(PATCH_A, "src/file.txt", 2).startswith("@@ -23,5 +23,5 @@")
    assert applier.hunk_text(PATCH_A + PATCH_B, "src/other.txt", 1) == "@@ -0,0 +1 @@\n+new file"


def test_real_series_names_only_existing_patches():
    for version in ("0.2.1.post1", "v0.2.3post2"):
        for patch in build.load_series(str(SERIES_ROOT), version):
            assert patch["content"].count("+++ b/") >= 1


BACKPORT = "0003-backport-x86-iq1s-iq2xxs-expert-kernels.patch"
BACKPORTED_FILES = ["third_party/llamafile/iqk_mul_mat.inc", "third_party/llamafile/sgemm.h", "third_party/llamafile/tinyblas_cpu_sgemm.inc"]
EXT_CMAKE = "ktransformers/ktransformers_ext/CMakeLists.txt"


def fancy_flags(cmake_text: str) -> list[str]:
    """The flags the LLAMA_AVX512_FANCY_SIMD block of ktransformers_ext/CMakeLists.txt appends."""
    blocks = [part.split("endif()", 1)[0] for part in cmake_text.split("if (LLAMA_AVX512_FANCY_SIMD)")[1:]]
    gcc = [b for b in blocks if "list(APPEND ARCH_FLAGS -m" in b]  # not the MSVC block, which adds definitions
    assert len(gcc) == 1, blocks
    return [line.split()[-1].rstrip(")") for line in gcc[0].splitlines() if "ARCH_FLAGS" in line]


def test_backport_is_only_in_the_sdist_series_after_the_others():
    sdist = [p["name"] for p in build.load_series(str(SERIES_ROOT), "0.2.1.post1")]
    assert sdist[2] == BACKPORT and sdist[0].startswith("0001-") and sdist[1].startswith("0002-")
    assert sdist[3].startswith("0004-server-openai") and len(sdist) == 4
    # v0.2.3post2 ships these kernels: the backport there would be reported as already applied
    tag = [p["name"] for p in build.load_series(str(SERIES_ROOT), "v0.2.3post2")]
    assert BACKPORT not in tag and tag == sdist[:2]


def test_backport_touches_the_three_llamafile_files_and_the_fancy_flags():
    content = next(p["content"] for p in build.load_series(str(SERIES_ROOT), "0.2.1.post1") if p["name"] == BACKPORT)
    targets = [line[len("+++ b/"):].split("\t")[0] for line in content.splitlines() if line.startswith("+++ ")]
    assert targets == [EXT_CMAKE, *BACKPORTED_FILES]
    cmake_part = content.split("+++ b/" + EXT_CMAKE, 1)[1].split("\n--- a/", 1)[0]
    assert [line for line in cmake_part.splitlines() if line.startswith(("+", "-"))] == ["+            list(APPEND ARCH_FLAGS -mavx512vpopcntdq)"]
    header = content.split("\n--- a/", 1)[0]
    for hunk_source in ("#754", "#847", "26bd889f", "v0.2.3post2", "Apache-2.0"):
        assert hunk_source in header


def _trees() -> dict[str, str]:
    out = {}
    for item in os.environ["KTDEPLOY_KT_TREES"].split(","):
        tree, version = item.rsplit(":", 1)
        out[build.version_dir(version)] = tree
    return out


@pytest.mark.skipif(not os.environ.get("KTDEPLOY_KT_TREES"), reason="set KTDEPLOY_KT_TREES=DIR:VERSION,... to check real trees")
def test_series_applies_to_real_trees(tmp_path):
    for version, tree in _trees().items():
        work = tmp_path / version
        subprocess.run(["cp", "-a", tree, str(work)], check=True)
        series = build.load_series(str(SERIES_ROOT), version)
        assert run_module(work, series)["applied"] == [p["name"] for p in series]
        assert run_module(work, series)["already_applied"] == [p["name"] for p in series]


@pytest.mark.skipif(
    not {"0.2.1.post1", "0.2.3post2"} <= set(_trees() if os.environ.get("KTDEPLOY_KT_TREES") else {}),
    reason="set KTDEPLOY_KT_TREES=SDIST_DIR:0.2.1.post1,TAG_DIR:v0.2.3post2 to compare the backport with the tag",
)
def test_backport_makes_the_sdist_files_those_of_the_tag(tmp_path):
    trees = _trees()
    work, tag = tmp_path / "sdist", tmp_path / "tag"
    subprocess.run(["cp", "-a", trees["0.2.1.post1"], str(work)], check=True)
    subprocess.run(["cp", "-a", trees["0.2.3post2"], str(tag)], check=True)
    assert all((work / f).read_bytes() != (tag / f).read_bytes() for f in BACKPORTED_FILES)
    run_module(work, build.load_series(str(SERIES_ROOT), "0.2.1.post1"))
    assert all((work / f).read_bytes() == (tag / f).read_bytes() for f in BACKPORTED_FILES)
    # a FANCY build compiles the kernels with the tag's flags (VPOPCNTDQ: not the #847 fallback)
    assert fancy_flags((work / EXT_CMAKE).read_text()) == fancy_flags((tag / EXT_CMAKE).read_text())
    assert "-mavx512vpopcntdq" in fancy_flags((work / EXT_CMAKE).read_text())
    backport = [p for p in build.load_series(str(SERIES_ROOT), "0.2.1.post1") if p["name"] == BACKPORT]
    result = run_module(tag, backport)
    assert result["already_applied"] == [BACKPORT] and result["changed"] is False
