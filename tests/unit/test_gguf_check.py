"""GGUF header checks on small files written with the gguf package (real GGUF, a few hundred bytes each)."""

import json
import subprocess
from pathlib import Path

import gguf
import pytest
from gguf_files import GOOD_TYPES, write_gguf, write_variant

from ktdeploy import gguf_check, gguf_header

def codes(findings):
    return [f.code for f in findings]


def test_both_readers_agree(tmp_path):
    gdir = write_variant(tmp_path)
    local = gguf_check.read_dir_local(gdir)
    assert local == gguf_header.read_dir(str(gdir))
    assert [f["split_no"] for f in local["files"]] == [0, 1, 2]
    assert local["files"][0]["architecture"] == "deepseek2"
    merged = {k: v for f in local["files"] for k, v in f["tensors"].items()}
    assert merged == GOOD_TYPES


def test_stdlib_reader_knows_every_type_name_of_the_gguf_package():
    for t in gguf.GGMLQuantizationType:
        if t.value in gguf_header.TYPE_NAMES:
            assert gguf_header.TYPE_NAMES[t.value] == t.name


def test_good_upload_passes(tmp_path):
    gdir = write_variant(tmp_path)
    assert gguf_check.check(gguf_check.read_dir_local(gdir), "UD-IQ1_S") == []


def test_missing_shard(tmp_path):
    gdir = write_variant(tmp_path, skip=(1,))
    problems = gguf_check.check(gguf_check.read_dir_local(gdir), "UD-IQ1_S")
    assert codes(problems) == ["gguf_missing_shard"]
    assert "DeepSeek-R1-UD-IQ1_S-00002-of-00003.gguf" in problems[0].message


def test_foreign_files_and_mismatched_split(tmp_path):
    gdir = write_variant(tmp_path, extra={"DeepSeek-R1-Q4_K_M-00001-of-00009.gguf": {"token_embd.weight": "Q4_K"}})
    shard = gdir / "DeepSeek-R1-UD-IQ1_S-00003-of-00003.gguf"
    write_gguf(shard, {"output.weight": "Q6_K"}, (2, 4))
    problems = gguf_check.check(gguf_check.read_dir_local(gdir), "UD-IQ1_S")
    assert codes(problems) == ["gguf_foreign_files", "gguf_split_mismatch"]
    assert "DeepSeek-R1-Q4_K_M-00001-of-00009.gguf" in problems[0].message
    assert "part 2 of 4, expected part 2 of 3" in problems[1].message


def test_truncated_shard_is_unreadable_not_a_crash(tmp_path):
    gdir = write_variant(tmp_path)
    shard = gdir / "DeepSeek-R1-UD-IQ1_S-00002-of-00003.gguf"
    shard.write_bytes(shard.read_bytes()[:40])
    for headers in (gguf_check.read_dir_local(gdir), gguf_header.read_dir(str(gdir))):
        problems = gguf_check.check(headers, "UD-IQ1_S")
        assert codes(problems) == ["gguf_unreadable"]
        assert "00002-of-00003" in problems[0].message


def test_iq1s_only_allowed_in_routed_experts(tmp_path):
    types = dict(GOOD_TYPES, **{"blk.0.attn_q_b.weight": "IQ1_S"})
    gdir = write_variant(tmp_path, types=types)
    problems = gguf_check.check(gguf_check.read_dir_local(gdir), "UD-IQ1_S")
    assert codes(problems) == ["gguf_tensor_type"]
    assert "blk.0.attn_q_b.weight" in problems[0].message and "outside the routed experts" in problems[0].message


def test_iq1s_experts_need_v023(tmp_path):
    headers = gguf_check.read_dir_local(write_variant(tmp_path))
    problems = gguf_check.check(headers, "UD-IQ1_S", kt_version="v0.2.1")
    assert codes(problems) == ["gguf_tensor_type", "gguf_tensor_type"]  # IQ1_S and IQ2_XXS
    assert gguf_check.check(headers, "UD-IQ1_S", kt_version="v0.2.3") == []


def test_iq1m_never_loads_on_the_legacy_engine_but_does_on_llama_cpp(tmp_path):
    types = dict(GOOD_TYPES, **{"blk.3.ffn_gate_exps.weight": "IQ1_M"})
    headers = gguf_check.read_dir_local(write_variant(tmp_path, "UD-IQ1_M", types=types))
    problems = gguf_check.check(headers, "UD-IQ1_M", kt_version="v0.3.2")
    assert codes(problems) == ["gguf_tensor_type"] and "IQ1_M" in problems[0].message
    assert gguf_check.check(headers, "UD-IQ1_M", engine="llama.cpp") == []


def test_split_kv_b_needs_v032(tmp_path):
    types = {k: v for k, v in GOOD_TYPES.items() if "kv_b" not in k}
    types.update({"blk.0.attn_k_b.weight": "Q8_0", "blk.0.attn_v_b.weight": "Q8_0"})
    headers = gguf_check.read_dir_local(write_variant(tmp_path, types=types))
    problems = gguf_check.check(headers, "UD-IQ1_S")
    assert codes(problems) == ["gguf_split_kv_b"]
    assert "v0.3.2" in problems[0].message
    assert gguf_check.check(headers, "UD-IQ1_S", kt_version="v0.3.2") == []


def test_absent_directory_is_not_a_problem(tmp_path):
    headers = gguf_check.read_dir_local(tmp_path / "nothing")
    assert headers["exists"] is False and gguf_check.check(headers, "UD-IQ1_S") == []


def test_remote_script_runs_the_stdlib_reader_under_bash_and_python3(tmp_path):
    gdir = write_variant(tmp_path, skip=(2,))
    out = subprocess.run(
        ["bash", "-c", gguf_check.remote_script(str(gdir))], capture_output=True, text=True, check=True
    ).stdout
    headers = json.loads(out)
    assert headers == gguf_check.read_dir_local(gdir)
    assert codes(gguf_check.check(headers, "UD-IQ1_S")) == ["gguf_missing_shard"]


def test_remote_reader_quotes_odd_directory_names(tmp_path):
    odd = tmp_path / "it's a dir"
    gdir = write_variant(odd)
    out = subprocess.run(["bash", "-c", gguf_check.remote_script(str(gdir))], capture_output=True, text=True, check=True)
    assert len(json.loads(out.stdout)["files"]) == 3


@pytest.mark.parametrize("blob, message", [(b"GGML" + b"\0" * 20, "bad magic"), (b"GGUF\x09\0\0\0" + b"\0" * 16, "version 9")])
def test_stdlib_reader_rejects_non_gguf(tmp_path, blob, message):
    p = tmp_path / "x.gguf"
    p.write_bytes(blob)
    with pytest.raises(gguf_header.HeaderError, match=message):
        gguf_header.read_header(str(p))


# --- the generated tiny DeepSeek-V3 (fixture tiny_models, tests/unit/conftest.py) -------------------


@pytest.mark.parametrize("profile", ["iq1s", "k"])
def test_tiny_model_passes_the_deep_check_on_both_engines(tiny_models, profile):
    gdir = tiny_models[profile].gguf_dir
    headers = gguf_check.read_dir_local(gdir)
    assert headers == gguf_header.read_dir(str(gdir))
    assert headers["files"][0]["architecture"] == "deepseek2"
    name = f"tiny-dsv3-{profile}"
    assert gguf_check.check(headers, name, engine="ktransformers", kt_version="v0.2.3post2") == []
    assert gguf_check.check(headers, name, engine="llama.cpp") == []


def test_tiny_iq1s_is_refused_by_ktransformers_0_2_1_without_the_backport(tiny_models, monkeypatch):
    headers = gguf_check.read_dir_local(tiny_models["iq1s"].gguf_dir)
    assert gguf_check.check(headers, "tiny-dsv3-iq1s", kt_version="v0.2.1.post1") == []  # series has 0003
    monkeypatch.setattr(gguf_check.catalog, "kt_backports", lambda: [])
    problems = gguf_check.check(headers, "tiny-dsv3-iq1s", kt_version="v0.2.1.post1")
    assert codes(problems) == ["gguf_tensor_type", "gguf_tensor_type"]
    assert "IQ1_S" in problems[0].message and "need v0.2.3 or later" in problems[0].message
    assert gguf_check.check(gguf_check.read_dir_local(tiny_models["k"].gguf_dir), "tiny-dsv3-k",
                            kt_version="v0.2.1.post1") == []


def test_tiny_model_dir_with_another_gguf_is_refused(tiny_models, tmp_path):
    import shutil

    shutil.copy(tiny_models["k"].gguf_path, tmp_path / "tiny-dsv3-k.gguf")
    shutil.copy(tiny_models["iq1s"].gguf_path, tmp_path / "tiny-dsv3-iq1s.gguf")
    problems = gguf_check.check(gguf_check.read_dir_local(tmp_path), "tiny-dsv3-k", engine="llama.cpp")
    assert codes(problems) == ["gguf_foreign_files"]


def test_preflight_deep_accepts_the_tiny_model(tiny_models):
    from click.testing import CliRunner

    from ktdeploy.cli import main

    facts_dir = Path(__file__).parent.parent / "fixtures" / "facts"
    for machine, engine in (("h200-ubuntu2404-16vcpu", "ktransformers"), ("ci-kvm-2cpu-nogpu", "llama.cpp")):
        r = CliRunner().invoke(main, ["preflight", "--facts", str(facts_dir / machine), "--model", "tiny-dsv3-iq1s",
                                      "--engine", engine, "--deep", "--gguf-dir", str(tiny_models["iq1s"].gguf_dir),
                                      "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert doc["problems"] == [] and doc["model"]["source"] == "generated"
