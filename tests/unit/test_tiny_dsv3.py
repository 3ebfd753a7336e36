"""The tiny DeepSeek-V3 model (ktdeploy/lab/tiny_dsv3.py): same bytes every run, the tensors, types,
shapes and metadata the research note lists, a tokenizer that round-trips, weights with the intended
spread. The expectations are written out here, not read from the generator."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf.quants import dequantize

from ktdeploy import catalog
from ktdeploy.cli import main
from ktdeploy.lab import tiny_dsv3

ROOT = Path(__file__).resolve().parents[2]
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# name (blk.N for every layer of that kind) -> (GGUF shape, ne0 first; type in iq1s; type in k)
COMMON = {
    "token_embd.weight": ((256, 1024), "Q4_K"),
    "output_norm.weight": ((256,), "F32"),
    "output.weight": ((256, 1024), "Q6_K"),
}
ATTENTION = {  # every layer; 16 heads, q_lora 256, kv_lora 512, rope 64, nope 128, v 128
    "attn_norm.weight": ((256,), "F32"),
    "attn_q_a_norm.weight": ((256,), "F32"),
    "attn_kv_a_norm.weight": ((512,), "F32"),
    "attn_q_a.weight": ((256, 256), "Q4_K"),
    "attn_q_b.weight": ((256, 16 * 192), "Q4_K"),
    "attn_kv_a_mqa.weight": ((256, 512 + 64), "Q6_K"),
    "attn_kv_b.weight": ((512, 16 * (128 + 128)), "Q6_K"),
    "attn_output.weight": ((16 * 128, 256), "Q4_K"),
    "ffn_norm.weight": ((256,), "F32"),
}
DENSE = {  # layer 0 (first_k_dense_replace 1)
    "ffn_gate.weight": ((256, 1024), "Q4_K"),
    "ffn_up.weight": ((256, 1024), "Q4_K"),
    "ffn_down.weight": ((1024, 256), "Q6_K"),
}
MOE = {  # layers 1 and 2: 16 routed experts of 256, one shared expert
    "ffn_gate_inp.weight": ((256, 16), "F32"),
    "exp_probs_b.bias": ((16,), "F32"),
    "ffn_gate_shexp.weight": ((256, 256), "Q4_K"),
    "ffn_up_shexp.weight": ((256, 256), "Q4_K"),
    "ffn_down_shexp.weight": ((256, 256), "Q6_K"),
}
EXPERTS = {
    "iq1s": {"ffn_gate_exps.weight": "IQ1_S", "ffn_up_exps.weight": "IQ1_S", "ffn_down_exps.weight": "IQ2_XXS"},
    "k": {"ffn_gate_exps.weight": "Q4_K", "ffn_up_exps.weight": "Q4_K", "ffn_down_exps.weight": "Q6_K"},
}


def expected_tensors(profile: str) -> dict[str, tuple[tuple[int, ...], str]]:
    out = dict(COMMON)
    for i in range(3):
        out.update({f"blk.{i}.{k}": v for k, v in ATTENTION.items()})
        if i == 0:
            out.update({f"blk.0.{k}": v for k, v in DENSE.items()})
        else:
            out.update({f"blk.{i}.{k}": v for k, v in MOE.items()})
            out.update({f"blk.{i}.{k}": ((256, 256, 16), t) for k, t in EXPERTS[profile].items()})
    return out


def reader(written) -> gguf.GGUFReader:
    return gguf.GGUFReader(written.gguf_path)


def meta(r: gguf.GGUFReader, key: str):
    field = r.get_field(key)
    return None if field is None else field.contents()


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- layout and determinism ----------------------------------------------------------------------


def test_layout_is_a_config_dir_and_a_gguf_dir_holding_one_file(tiny_models):
    for profile, w in tiny_models.items():
        assert sorted(p.name for p in w.config_dir.iterdir()) == [
            "config.json", "configuration_deepseek.py", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"]
        assert [p.name for p in w.gguf_dir.iterdir()] == [f"tiny-dsv3-{profile}.gguf"]
        assert (w.config_dir.name, w.gguf_dir.name) == (catalog.GENERATED_CONFIG_DIR, catalog.GENERATED_GGUF_DIR)


def test_same_bytes_on_every_run(tiny_models, tmp_path):
    again = tiny_dsv3.write(tmp_path / "again", "iq1s")
    first = tiny_models["iq1s"].gguf_path.parent.parent
    assert digests(again.gguf_path.parent.parent) == digests(first)


def test_the_two_profiles_differ_only_in_the_gguf(tiny_models):
    iq1s, k = (tiny_models[p].config_dir for p in ("iq1s", "k"))
    assert digests(iq1s) == digests(k)
    assert tiny_models["iq1s"].gguf_path.read_bytes() != tiny_models["k"].gguf_path.read_bytes()


def test_files_are_small_enough_to_travel(tiny_models):
    for w in tiny_models.values():
        assert w.gguf_path.stat().st_size < 16 * 2**20
        assert w.sizes()["config"] < 100_000


def test_catalog_sizes_are_the_generated_files(tiny_models):
    for profile, w in tiny_models.items():
        v = catalog.variant(f"tiny-dsv3-{profile}")
        assert v.bytes == w.gguf_path.stat().st_size, "update ktdeploy/data/catalog.yml (generated_models)"
        assert v.gguf_dir("/m") == f"/m/tiny-dsv3-{profile}/gguf" and v.config_dir("/m") == f"/m/tiny-dsv3-{profile}/config"
        assert v.files == (f"tiny-dsv3-{profile}/gguf/{w.gguf_path.name}",)


# --- tensors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["iq1s", "k"])
def test_tensor_names_types_and_shapes(tiny_models, profile):
    r = reader(tiny_models[profile])
    found = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type.name) for t in r.tensors}
    assert found == expected_tensors(profile)
    assert not [n for n in found if ".attn_k_b." in n or ".attn_v_b." in n]  # the fused layout only


def test_dimensions_respect_the_cpu_moe_and_marlin_rules():
    specs = tiny_dsv3.tensor_specs("iq1s")
    for s in specs:
        if s.type != "F32":
            assert s.shape[0] % 256 == 0, s  # whole quant blocks; the CPU MoE strides by 256
        if len(s.shape) == 2 and s.type != "F32" and "_exps" not in s.name:
            assert s.shape[0] % 64 == 0 and s.shape[1] % 64 == 0, s  # Marlin (and 0.2.1.post1's rule)


@pytest.mark.parametrize("profile", ["iq1s", "k"])
def test_dequantised_weights_are_finite_with_the_intended_spread(tiny_models, profile):
    r = reader(tiny_models[profile])
    checked = 0
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), t.name
        if t.tensor_type.name == "F32":
            continue
        if t.name == "output.weight":  # the control tokens' rows are zero: greedy decoding never picks them
            rows = values.reshape(1024, 256)
            assert not rows[:3].any() and (rows[3:].std(axis=1) > 0.01).all()
            values = rows[3:]
        assert abs(float(values.std()) - 0.02) < 0.001, (t.name, values.std())
        assert abs(float(values.mean())) < 0.0005, (t.name, values.mean())
        checked += 1
    assert checked == sum(t != "F32" for _, t in expected_tensors(profile).values())


def test_expert_blocks_have_random_codes_not_constants(tiny_models):
    r = reader(tiny_models["iq1s"])
    gate = next(t for t in r.tensors if t.name == "blk.1.ffn_gate_exps.weight")
    values = dequantize(gate.data, gate.tensor_type).reshape(16, 256, 256)
    assert len(np.unique(values)) >= 4  # IQ1_S: (-1, 0, 1) +- 1/8 times the scale
    assert not np.array_equal(values[0], values[1])  # experts differ


def test_norms_are_ones_and_the_gate_bias_zero(tiny_models):
    r = reader(tiny_models["k"])
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    assert (t["blk.2.attn_kv_a_norm.weight"] == 1).all() and (t["output_norm.weight"] == 1).all()
    assert (t["blk.1.exp_probs_b.bias"] == 0).all() and t["blk.1.ffn_gate_inp.weight"].std() > 0.01


# --- metadata ----------------------------------------------------------------------------------------


def test_metadata_for_llama_cpp_deepseek2_and_ktransformers(tiny_models):
    r = reader(tiny_models["iq1s"])
    expected = {
        "general.architecture": "deepseek2",
        "deepseek2.block_count": 3,
        "deepseek2.context_length": 163840,
        "deepseek2.embedding_length": 256,
        "deepseek2.feed_forward_length": 1024,
        "deepseek2.leading_dense_block_count": 1,
        "deepseek2.attention.head_count": 16,
        "deepseek2.attention.head_count_kv": 16,
        "deepseek2.attention.key_length": 192,
        "deepseek2.attention.value_length": 128,
        "deepseek2.attention.q_lora_rank": 256,
        "deepseek2.attention.kv_lora_rank": 512,
        "deepseek2.rope.dimension_count": 64,
        "deepseek2.rope.scaling.type": "yarn",
        "deepseek2.rope.scaling.factor": 40.0,
        "deepseek2.rope.scaling.original_context_length": 4096,
        "deepseek2.expert_count": 16,
        "deepseek2.expert_used_count": 4,
        "deepseek2.expert_shared_count": 1,
        "deepseek2.expert_feed_forward_length": 256,
        "deepseek2.expert_weights_scale": 2.5,
        "deepseek2.expert_weights_norm": True,
        "deepseek2.expert_gating_func": 2,  # sigmoid
        "deepseek2.expert_group_count": 4,
        "deepseek2.expert_group_used_count": 2,
        "deepseek2.vocab_size": 1024,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "deepseek-v3",
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": True,
    }
    got = {k: meta(r, k) for k in expected}
    assert {k: (round(v, 4) if isinstance(v, float) else v) for k, v in got.items()} == expected
    assert abs(meta(r, "deepseek2.attention.layer_norm_rms_epsilon") - 1e-6) < 1e-9
    assert abs(meta(r, "deepseek2.rope.scaling.yarn_log_multiplier") - 0.1) < 1e-6
    assert meta(r, "deepseek2.attention.key_length_mla") is None  # fused kv_b: no MLA keys
    tokens = meta(r, "tokenizer.ggml.tokens")
    types = meta(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 1024 and tokens[:2] == [BOS, EOS]
    assert [t for t, ty in zip(tokens, types) if ty == 3] == [BOS, EOS, "<｜▁pad▁｜>"]
    assert [t for t, ty in zip(tokens, types) if ty == 4] == ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]
    merges = meta(r, "tokenizer.ggml.merges")
    assert len(merges) >= 1024 - 3 - 256 - 4 and all(len(m.split(" ")) == 2 for m in merges)
    assert "<｜Assistant｜>" in meta(r, "tokenizer.chat_template")


def test_config_json_matches_the_gguf_and_names_its_configuration_class(tiny_models):
    d = tiny_models["iq1s"].config_dir
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["model_type"] == "deepseek_v3"
    module, cls = cfg["auto_map"]["AutoConfig"].split(".")
    assert (d / f"{module}.py").is_file() and cls == "DeepseekV3Config"
    assert cfg["rope_scaling"]["type"] == "yarn" and cfg["rope_scaling"]["factor"] == 40
    assert {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                                "n_routed_experts", "n_group", "topk_group", "num_experts_per_tok",
                                "first_k_dense_replace", "moe_intermediate_size", "kv_lora_rank", "q_lora_rank",
                                "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "n_shared_experts")} == {
        "hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 16, "vocab_size": 1024,
        "n_routed_experts": 16, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 4,
        "first_k_dense_replace": 1, "moe_intermediate_size": 256, "kv_lora_rank": 512, "q_lora_rank": 256,
        "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128, "n_shared_experts": 1}
    assert cfg["torch_dtype"] == "bfloat16"  # KTransformers' server calls torch.set_default_dtype(config.torch_dtype)
    gen = json.loads((d / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (0, 1)


# What KTransformers 0.2.x's DeepSeek-V3 code (models, operators, cache) reads from the config.
KT_READS = {
    "vocab_size", "max_position_embeddings", "hidden_size", "intermediate_size", "moe_intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "n_shared_experts", "n_routed_experts",
    "ep_size", "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim",
    "qk_nope_head_dim", "topk_method", "n_group", "topk_group", "num_experts_per_tok", "moe_layer_freq",
    "first_k_dense_replace", "norm_topk_prob", "scoring_func", "aux_loss_alpha", "seq_aux", "hidden_act",
    "initializer_range", "rms_norm_eps", "pretraining_tp", "use_cache", "rope_theta", "rope_scaling",
    "attention_bias", "attention_dropout",
}


def test_configuration_class_sets_every_attribute_ktransformers_reads(tiny_models):
    source = (tiny_models["iq1s"].config_dir / "configuration_deepseek.py").read_text()
    tree = ast.parse(source)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert cls.name == "DeepseekV3Config" and [b.id for b in cls.bases] == ["PretrainedConfig"]
    assigned = {t.attr for n in ast.walk(cls) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    assert KT_READS <= assigned, KT_READS - assigned
    model_type = [n for n in cls.body if isinstance(n, ast.Assign) and n.targets[0].id == "model_type"]
    assert ast.literal_eval(model_type[0].value) == "deepseek_v3"
    cfg = json.loads((tiny_models["iq1s"].config_dir / "config.json").read_text())
    assert KT_READS - {"aux_loss_alpha", "pretraining_tp"} <= set(cfg)  # those two: the class's defaults, as in R1


# --- tokenizer -----------------------------------------------------------------------------------------


def test_tokenizer_json_round_trips_text(tiny_models):
    tokenizers = pytest.importorskip("tokenizers")  # a test dependency (pyproject.toml)
    d = tiny_models["iq1s"].config_dir
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    assert tok.get_vocab_size() == 1024
    assert [tok.token_to_id(t) for t in (BOS, EOS, "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>")] == [
        0, 1, 1020, 1021, 1022, 1023]
    for text in ("Hello there, how are you today?", "Numbers 1234567 and 3.14!", "ünïcödé — 日本語 🙂\n\ttabs",
                 "<think>\nreasoning</think>The answer."):
        enc = tok.encode(text)
        assert enc.ids[0] == 0  # BOS added
        assert tok.decode(enc.ids) == text
    assert len(tok.encode("the quick brown fox", add_special_tokens=False).ids) <= 5  # merges were learnt
    assert tok.encode("<｜User｜>hi<｜Assistant｜>", add_special_tokens=False).ids[0] == 1020


def test_gguf_vocab_is_the_tokenizer_json_vocab(tiny_models):
    d = json.loads((tiny_models["k"].config_dir / "tokenizer.json").read_text())
    r = reader(tiny_models["k"])
    vocab = d["model"]["vocab"]
    assert meta(r, "tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    assert meta(r, "tokenizer.ggml.merges") == d["model"]["merges"]
    assert meta(r, "tokenizer.chat_template") == json.loads(
        (tiny_models["k"].config_dir / "tokenizer_config.json").read_text())["chat_template"]


def test_chat_template_renders_like_r1(tiny_models):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = json.loads((tiny_models["iq1s"].config_dir / "tokenizer_config.json").read_text())["chat_template"]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "<think>hmm</think>Red."}, {"role": "user", "content": "Another?"}]
    text = env.from_string(template).render(messages=messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=True)
    assert text == (f"{BOS}Be brief.<｜User｜>Name a colour.<｜Assistant｜>Red.{EOS}<｜User｜>Another?"
                    "<｜Assistant｜><think>\n")


def test_tokenizer_config_is_llama_fast_with_r1_tokens(tiny_models):
    cfg = json.loads((tiny_models["iq1s"].config_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "LlamaTokenizerFast" and cfg["add_bos_token"] is True
    assert (cfg["bos_token"]["content"], cfg["eos_token"]["content"]) == (BOS, EOS)


# --- entry points ----------------------------------------------------------------------------------------


def test_cli_writes_a_model_and_prints_its_directories(tmp_path):
    r = CliRunner().invoke(main, ["lab", "tiny-model", str(tmp_path / "m"), "--experts", "k"])
    assert r.exit_code == 0, r.output
    assert f"config dir: {tmp_path / 'm' / 'config'}" in r.output
    assert f"gguf dir:   {tmp_path / 'm' / 'gguf'}" in r.output
    assert (tmp_path / "m" / "gguf" / "tiny-dsv3-k.gguf").is_file()


def test_module_runs_with_numpy_and_gguf_only(tmp_path):
    """`python -m ktdeploy.lab.tiny_dsv3` where click, jinja2 and the rest of ktdeploy's dependencies
    cannot be imported (hosts where ktdeploy is installed without them). PyYAML stays: gguf needs it."""
    blocked = ["click", "jinja2", "ansible", "ansible_runner", "fabric", "rich", "packaging", "openai"]
    code = ("import sys, runpy\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "sys.argv = ['tiny_dsv3', sys.argv[1], '--experts', 'iq1s']\n"
            "runpy.run_module('ktdeploy.lab.tiny_dsv3', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "gguf dir:" in r.stdout and (tmp_path / "m" / "gguf" / "tiny-dsv3-iq1s.gguf").is_file()


def test_refuses_a_gguf_dir_holding_other_files_and_replaces_its_own(tmp_path):
    gdir = tmp_path / "m" / "gguf"
    gdir.mkdir(parents=True)
    (gdir / "DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileExistsError, match="KTransformers reads every file"):
        tiny_dsv3.write(tmp_path / "m", "k")
    assert tiny_dsv3.main([str(tmp_path / "m"), "--experts", "k"]) == 2
    (gdir / "DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf").unlink()
    tiny_dsv3.write(tmp_path / "m", "k")
    tiny_dsv3.write(tmp_path / "m", "iq1s")  # one model per directory: the k file goes
    assert [p.name for p in gdir.iterdir()] == ["tiny-dsv3-iq1s.gguf"]


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="iq1s, k"):
        tiny_dsv3.tensor_specs("q8")
