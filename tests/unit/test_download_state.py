"""Pure parts of the host-side download state: patterns, manifests, bytes on disk, rate, verification."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from ktdeploy.hostside import download_state as ds

SHARDS = [f"DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("path", "inc", "exc", "style", "want"),
    [
        (SHARDS[0], ["*UD-IQ1_S*"], [], "modelscope", True),
        (SHARDS[0], ["**UD-IQ1_S**"], [], "modelscope", True),  # the tutorial's spelling
        ("DeepSeek-R1-UD-IQ1_M/x.gguf", ["*UD-IQ1_S*"], [], "modelscope", False),
        (SHARDS[0], ["DeepSeek-R1-UD-IQ1_S/"], [], "modelscope", False),  # the client's trap
        (SHARDS[0], ["DeepSeek-R1-UD-IQ1_S/"], [], "huggingface", True),
        (SHARDS[0], ["DeepSeek-R1-UD-IQ1_S/*"], [], "modelscope", True),
        ("model-00001-of-000163.safetensors", [], ["*.safetensors"], "modelscope", False),
        ("config.json", [], ["*.safetensors"], "modelscope", True),
        ("config.json", ["*.json,*.py"], [], "modelscope", True),  # comma-separated values
        ("a.gguf", [".*gguf"], [], "modelscope", True),  # old regex style
        ("Config.json", ["config.json"], [], "modelscope", False),  # case-sensitive
    ],
)
def test_selected_follows_the_clients_rules(path, inc, exc, style, want):
    assert ds.selected(path, inc, exc, style) is want


def test_exact_pattern_matches_only_that_path():
    odd = "dir/we[ir]d*name?.gguf"
    pat = ds.exact_pattern(odd)
    assert ds.selected(odd, [pat], [])
    assert not ds.selected("dir/wei.gguf", [pat], [])


def test_manifest_from_modelscope_listing_skips_trees_and_excluded():
    listing = {"Data": {"Files": [
        {"Path": "DeepSeek-R1-UD-IQ1_S", "Type": "tree", "Size": 0, "Sha256": ""},
        {"Path": SHARDS[1], "Type": "blob", "Size": 5, "Sha256": "AB" * 32},
        {"Path": SHARDS[0], "Type": "blob", "Size": 7, "Sha256": "cd" * 32},
        {"Path": "README.md", "Type": "blob", "Size": 3, "Sha256": ""},
    ]}}
    files = ds.manifest_files_modelscope(listing, ["*UD-IQ1_S*"], [])
    assert files == [{"path": SHARDS[0], "size": 7, "sha256": "cd" * 32},
                     {"path": SHARDS[1], "size": 5, "sha256": "ab" * 32}]


def test_manifest_from_hf_tree_takes_lfs_sha256():
    tree = [{"type": "directory", "path": "d"},
            {"type": "file", "path": "d/x.gguf", "size": 9, "lfs": {"oid": "ef" * 32, "size": 9}},
            {"type": "file", "path": "config.json", "size": 2, "oid": "1" * 40}]
    assert ds.manifest_files_hf(tree, [], []) == [
        {"path": "config.json", "size": 2, "sha256": None},
        {"path": "d/x.gguf", "size": 9, "sha256": "ef" * 32}]


def test_parse_sha256sums_text_and_binary_mode():
    text = f"{'a' * 64}  ./x/y.gguf\n{'B' * 64} *z.json\n\n# comment\n"
    assert ds.parse_sha256sums(text) == {"x/y.gguf": "a" * 64, "z.json": "b" * 64}
    with pytest.raises(ValueError):
        ds.parse_sha256sums("nonsense line\n")


def _files(tmp_path, sizes):
    return [{"path": f"d/f{i}.bin", "size": s, "sha256": None} for i, s in enumerate(sizes)]


def test_bytes_on_disk_counts_complete_and_every_partial_layout(tmp_path):
    files = _files(tmp_path, [100, 200, 300, 400, 500])
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f0.bin").write_bytes(b"x" * 100)  # complete
    (tmp_path / "d/f1.bin.incomplete").write_bytes(b"x" * 50)  # new modelscope SDK
    (tmp_path / "d/f2.bin_0_99").write_bytes(b"x" * 100)  # parallel parts
    (tmp_path / "d/f2.bin_100_199").write_bytes(b"x" * 60)
    (tmp_path / ds.OLD_SDK_TEMP / "d").mkdir(parents=True)
    (tmp_path / ds.OLD_SDK_TEMP / "d/f3.bin").write_bytes(b"x" * 70)  # old SDK
    (tmp_path / "d/f4.bin").write_bytes(b"x" * 10)  # wrong size at final path: not complete
    m = {x["path"]: x for x in ds.measure(files, tmp_path)}
    assert m["d/f0.bin"]["complete"] and not m["d/f4.bin"]["complete"]
    assert [x["on_disk"] for x in m.values()] == [100, 50, 160, 70, 0]
    assert ds.bytes_on_disk(files, tmp_path) == 380
    assert ds.remaining_bytes(files, tmp_path) == 1500 - 380


def test_rate_uses_the_recent_window_and_eta_follows():
    samples = []
    for t, b in [(0, 0), (10, 100), (100, 1000), (110, 2000), (120, 3000)]:
        samples = ds.add_sample(samples, t, b)
    assert ds.rate(samples, window=60) == pytest.approx(100.0)  # (3000-1000)/(120-100)
    assert ds.rate(samples[:1]) is None
    assert ds.eta(500, 100.0) == 5.0
    assert ds.eta(0, None) == 0.0
    assert ds.eta(10, None) is None


def test_samples_are_bounded():
    s = []
    for i in range(ds.MAX_SAMPLES + 50):
        s = ds.add_sample(s, i, i)
    assert len(s) == ds.MAX_SAMPLES and s[-1] == [ds.MAX_SAMPLES + 49, ds.MAX_SAMPLES + 49]


def test_verify_hashes_once_then_trusts_the_record_until_the_file_changes(tmp_path, monkeypatch):
    data = os.urandom(3000)
    (tmp_path / "a.bin").write_bytes(data)
    files = [{"path": "a.bin", "size": 3000, "sha256": hashlib.sha256(data).hexdigest()}]
    calls = []
    real = ds.sha256_file
    monkeypatch.setattr(ds, "sha256_file", lambda p, progress=None: calls.append(p) or real(p, progress))
    records, problems = ds.verify(files, tmp_path, {})
    assert problems == [] and len(calls) == 1
    assert ds.all_verified(files, tmp_path, records)
    records, problems = ds.verify(files, tmp_path, records)
    assert problems == [] and len(calls) == 1  # recorded: no second hash
    records, problems = ds.verify(files, tmp_path, records, rehash=True)
    assert problems == [] and len(calls) == 2  # --verify hashes again
    (tmp_path / "a.bin").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, new bytes
    os.utime(tmp_path / "a.bin", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert not ds.all_verified(files, tmp_path, records)
    records, problems = ds.verify(files, tmp_path, records)
    assert len(calls) == 3 and problems and "sha256" in problems[0] and "a.bin" not in records


def test_verify_reports_missing_and_wrong_size(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"abc")
    files = [{"path": "gone.bin", "size": 1, "sha256": None}, {"path": "short.bin", "size": 4, "sha256": None}]
    records, problems = ds.verify(files, tmp_path, {})
    assert problems == ["gone.bin: missing", "short.bin: size 3 != expected 4"] and records == {}


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(ds.HASH_BLOCK + 12345)
    (tmp_path / "x").write_bytes(data)
    seen = []
    assert ds.sha256_file(tmp_path / "x", seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


def test_disk_problem_names_the_figures():
    assert ds.disk_problem(100, 1000, 0, "/m") is None
    msg = ds.disk_problem(140_200_000_000, 50_000_000_000, 1_000_000_000, "/root/autodl-tmp")
    assert "140.2 GB left to fetch" in msg and "50.0 GB free" in msg and "91.2 GB" in msg


def test_status_of_a_job_dir(tmp_path):
    job = tmp_path / "jobs" / "gguf"
    job.mkdir(parents=True)
    dest = tmp_path / "models"
    (dest / "d").mkdir(parents=True)
    (dest / "d/f0.bin").write_bytes(b"x" * 100)
    (dest / "d/f1.bin.incomplete").write_bytes(b"x" * 100)
    ds.write_json(job / "job.json", {"source": "mirror", "repo": "o/n", "dest": str(dest)})
    ds.write_json(job / "manifest.json", {"files": _files(tmp_path, [100, 300])})
    ds.write_json(job / "state.json", {"phase": "downloading", "samples": [[0, 0], [10, 100]],
                                       "verified": {"d/f0.bin": {}}})
    (job / "log").write_text("noise\r 40%|###\nerror: [E1003] 1 of 2 file(s) failed\n")
    s = ds.status(job, now=20)
    assert s["phase"] == "interrupted"  # no runner alive
    assert (s["done_bytes"], s["total_bytes"], s["percent"]) == (200, 400, 50.0)
    assert s["files_complete"] == 1 and s["files_verified"] == 1
    assert s["error"] == "error: [E1003] 1 of 2 file(s) failed"
    assert [x["name"] for x in ds.status_all(tmp_path / "jobs")] == ["gguf"]
    assert ds.status_all(tmp_path / "nothing") == []


def test_a_refused_job_shows_no_progress(tmp_path):
    """Refused before fetching: the bytes of an earlier manifest are not this job's progress (no 100 %)."""
    job = tmp_path / "jobs" / "gguf"
    job.mkdir(parents=True)
    dest = tmp_path / "models"
    (dest / "d").mkdir(parents=True)
    (dest / "d/f0.bin").write_bytes(b"x" * 100)
    ds.write_json(job / "job.json", {"source": "mirror", "repo": "o/n", "dest": str(dest)})
    ds.write_json(job / "manifest.json", {"files": _files(tmp_path, [100])})
    ds.write_json(job / "state.json", {"phase": "refused", "error": "cannot reach http://m/: refused"})
    s = ds.status(job)
    assert s["phase"] == "refused" and s["error"] == "cannot reach http://m/: refused"
    assert (s["percent"], s["done_bytes"], s["total_bytes"], s["eta_s"]) == (None, None, None, None)
    assert "100" not in ds._human(s)


def test_status_cli_prints_json(tmp_path, capsys):
    assert ds.main(["--json", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert ds.main([]) == 2
