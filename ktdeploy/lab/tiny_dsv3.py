"""A tiny DeepSeek-V3 (R1 architecture) model with random weights, written on the spot.

It proves that a server loads the DeepSeek path and answers with tokens, without 140 GB of R1:

    python -m ktdeploy.lab.tiny_dsv3 OUTDIR [--experts iq1s|k]
    ktdeploy lab tiny-model OUTDIR [--experts iq1s|k]

write, into OUTDIR,

    config/   config.json (DeepseekV3ForCausalLM, deepseek_v3), configuration_deepseek.py (its
              AutoConfig through auto_map), generation_config.json, tokenizer.json,
              tokenizer_config.json: KTransformers' --model_path
    gguf/     tiny-dsv3-<profile>.gguf and nothing else: KTransformers' --gguf_path (it reads every
              file there); llama.cpp serves the file itself (arch deepseek2)

Same bytes on every run (fixed seed, no timestamps). Needs numpy and the gguf package only (plus the
standard library): this module is also run on hosts where ktdeploy is installed without its CLI
dependencies, so it imports nothing else from ktdeploy.

The facts behind the shapes and types (KTransformers 0.2.x, llama.cpp) are in the research note
`tiny-dsv3.md` of the shared research folder, in short:
  * 3 layers, the first dense (first_k_dense_replace 1): a count of 26/27 would make llama.cpp take
    the "lite" variant without q_lora;
  * hidden 256 and moe_intermediate 256: KTransformers' CPU MoE strides by QK_K = 256 on prompts of
    10+ tokens and silently skips rows otherwise; every GPU linear has both dimensions multiples of
    64 (Marlin, and KTransformers 0.2.1.post1's fallback rule);
  * kv_lora_rank 512 and qk_rope 64 (the only MLA shapes flashinfer's kernels take), qk_nope 128,
    v_head 128, 16 heads; 16 routed experts in 4 groups (topk_group 2), top-4, 1 shared expert;
  * the fused `attn_kv_b` (KTransformers before v0.3.2 cannot load split attn_k_b/attn_v_b) with
    key_length 192 / value_length 128 and no `*_mla` keys, which llama.cpp also takes;
  * tensor types as in Unsloth's UD-IQ1_S (F32 norms, gate and expert bias; Q4_K embeddings, q_a,
    q_b, o_proj, dense and shared gate/up; Q6_K output, kv_a_mqa, kv_b, down projections); routed
    experts IQ1_S gate/up + IQ2_XXS down (`iq1s`, KTransformers v0.2.3+) or Q4_K gate/up + Q6_K
    down (`k`, which KTransformers 0.2.1.post1 runs too).

Quantised blocks are not quantised from floats (gguf-py quantises neither the K nor the IQ types):
each block is filled with random codes (quants, grid indices, signs) and one f16 scale chosen so
that the dequantised weights have mean 0 and standard deviation WEIGHT_STD. The `output` rows of the
control tokens (BOS, EOS, pad) are zero, so greedy decoding never ends a reply at once: a reply runs
to its token limit (random weights: gibberish, by design).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 20250120  # R1's release date: any fixed value gives the same bytes on every run
WEIGHT_STD = 0.02
PROFILES = ("iq1s", "k")
DEFAULT_PROFILE = "iq1s"
ARCH = "deepseek2"
CONFIG_DIR = "config"
GGUF_DIR = "gguf"


def model_name(profile: str) -> str:
    """Catalog name and file stem of a profile: tiny-dsv3-iq1s, tiny-dsv3-k."""
    return f"tiny-dsv3-{profile}"


@dataclass(frozen=True)
class Dims:
    hidden: int = 256
    intermediate: int = 1024  # the dense layer's MLP
    moe_intermediate: int = 256
    layers: int = 3
    first_k_dense: int = 1
    heads: int = 16
    q_lora_rank: int = 256
    kv_lora_rank: int = 512
    qk_rope: int = 64
    qk_nope: int = 128
    v_head: int = 128
    experts: int = 16
    n_group: int = 4
    topk_group: int = 2
    experts_per_token: int = 4
    shared_experts: int = 1
    vocab: int = 1024
    context: int = 163840  # R1's max_position_embeddings (yarn factor 40 x 4096)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    routed_scaling_factor: float = 2.5

    @property
    def q_head(self) -> int:
        return self.qk_nope + self.qk_rope


DIMS = Dims()

# R1's yarn rope scaling, "type" included (KTransformers' modelling code reads rope_scaling["type"]).
ROPE_SCALING = {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn",
}

# ---------------------------------------------------------------------------------------------
# Tokenizer: a byte-level BPE trained here on a fixed text, R1's special tokens.

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT, THINK, END_THINK = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"
CONTROL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2, as in R1
ADDED_TOKENS = (USER, ASSISTANT, THINK, END_THINK)  # the last ids
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2

# R1-style chat template: system text first, user turns after <｜User｜>, earlier answers without
# their reasoning, and the generation prompt opening the reasoning (as R1's current template does).
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] or '' %}"
    "{% if '" + END_THINK + "' in content %}{% set content = content.split('" + END_THINK + "')[-1] %}{% endif %}"
    "{{ '" + ASSISTANT + "' + content + '" + EOS + "' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + THINK + "\\n' }}{% endif %}"
)

# The pre-tokenizer of R1 (tokenizer.json) and of llama.cpp's `deepseek-v3` pre type: digits in
# runs of up to 3, CJK runs, then words, punctuation and spaces.
PRE_TOKENIZER_REGEXES = (
    "\\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
# An ASCII approximation of that split for training the merges (Python's re has no \p{..}); a
# merge learnt across a boundary the real split keeps would only go unused.
_TRAIN_SPLIT = re.compile(r"[0-9]{1,3}|[^\r\n\w]?[A-Za-z]+| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_CORPUS = """\
The quick brown fox jumps over the lazy dog while the small model answers every question with words.
DeepSeek R1 is a mixture of experts: each token goes to a few routed experts and one shared expert.
A server loads the weights, reads the prompt, and writes tokens back one by one until it stops.
Name a colour: red, orange, yellow, green, blue, indigo, violet, white, black, grey, brown and pink.
Say hello in five words. Hello there, how are you today? I am fine, thank you, and you?
Numbers count things: one, two, three, four, five, six, seven, eight, nine, ten, 100, 2025, 4096.
The assistant thinks first, then it answers. The user asks, the assistant replies, and the chat goes on.
Provisioning a machine means installing drivers, building the engine, downloading the model, and
starting the services under systemd or supervisord, so that they come back after a crash or a reboot.
Memory, disk, processors and graphics cards decide which plan works; a preflight check refuses the rest.
What is the capital of France? Paris is the capital of France, Berlin of Germany, Rome of Italy.
Water boils at one hundred degrees; ice melts at zero. The sun rises in the east and sets in the west.
Cats, dogs, horses, birds, fish and mice live in houses, farms, forests, rivers and the open sea.
Write a short poem about the morning light falling on the quiet mountains near the old village.
Please explain why the sky is blue, why leaves turn yellow in autumn, and why the night is dark.
Programs read input, compute results, print output, handle errors, and log what they did to a file.
Python, Rust, C and Go are languages; functions, classes, modules, tests and packages are their parts.
The library opens at nine in the morning and closes at six in the evening, except on Sunday.
Good answers are short, correct, and kind; long answers should have a summary at the beginning.
Temperature, top p, and the maximum number of new tokens change how a reply is sampled and cut.
Attention layers compress keys and values into a latent vector; rotary embeddings add the positions.
Quantised weights save memory: four bits, six bits, or less than two bits for the routed experts.
Open the window, close the door, turn on the light, and wait for the kettle to whistle in the kitchen.
Mathematics: two plus two is four, seven times six is forty two, and the square root of nine is three.
History remembers kings, queens, farmers, sailors, writers, painters, doctors and engineers alike.
Tomorrow we travel by train through valleys, bridges and tunnels to the city on the northern coast.
Gardeners plant tulips, roses and sunflowers; bakers knead dough; musicians practise scales daily.
Jupiter, Saturn, Mercury, Venus, Mars and Neptune circle our star; comets visit rarely and briefly.
"""


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's alphabet: printable bytes stand for themselves, the others for U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TOKENS = _bytes_to_unicode()


def _merge_word(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def train_bpe(text: str, new_tokens: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Merges learnt on text until new_tokens distinct tokens were made: (tokens in order, merges).

    Greedy BPE: the most frequent adjacent pair wins, ties go to the smallest pair (deterministic).
    """
    counts = Counter(_TRAIN_SPLIT.findall(text))
    words = {w: tuple(BYTE_TOKENS[b] for b in w.encode("utf-8")) for w in counts}
    known = set(BYTE_TOKENS.values())
    tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    while len(tokens) < new_tokens:
        pairs: Counter = Counter()
        for w, n in counts.items():
            s = words[w]
            for pair in zip(s, s[1:]):
                pairs[pair] += n
        if not pairs:
            raise ValueError(f"the training text yields only {len(tokens)} merges, {new_tokens} wanted")
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        words = {w: _merge_word(s, best) if len(s) > 1 else s for w, s in words.items()}
    return tokens, merges


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]  # index = id
    merges: tuple[tuple[str, str], ...]
    types: tuple[int, ...]  # llama.cpp token types: 1 normal, 3 control, 4 user-defined


def build_vocab(size: int = DIMS.vocab) -> Vocab:
    n_new = size - len(CONTROL_TOKENS) - 256 - len(ADDED_TOKENS)
    learnt, merges = train_bpe(_CORPUS, n_new)
    tokens = (*CONTROL_TOKENS, *(BYTE_TOKENS[b] for b in range(256)), *learnt, *ADDED_TOKENS)
    types = (3,) * len(CONTROL_TOKENS) + (1,) * (256 + len(learnt)) + (4,) * len(ADDED_TOKENS)
    assert len(tokens) == size == len(set(tokens))
    return Vocab(tokens, tuple(merges), types)


def tokenizer_json(vocab: Vocab) -> dict:
    """tokenizer.json in the format of the `tokenizers` library (merges as "a b" strings, which
    every version reads), equivalent to llama.cpp's gpt2 model with the deepseek-v3 pre type."""
    ids = {t: i for i, t in enumerate(vocab.tokens)}

    def added(token: str, special: bool) -> dict:
        return {"id": ids[token], "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": not special, "special": special}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(t, True) for t in CONTROL_TOKENS] + [added(t, False) for t in ADDED_TOKENS],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                *({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}
                  for r in PRE_TOKENIZER_REGEXES),
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": ids,
            "merges": [f"{a} {b}" for a, b in vocab.merges],
        },
    }


def tokenizer_config() -> dict:
    def tok(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": tok(BOS),
        "eos_token": tok(EOS),
        "pad_token": tok(EOS),  # as R1's tokenizer_config
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 16384,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "use_default_system_prompt": False,
        "chat_template": CHAT_TEMPLATE,
    }


# ---------------------------------------------------------------------------------------------
# HF-style config directory

CONFIGURATION_PY = '''\
"""DeepSeek-V3 configuration for the tiny model ktdeploy writes (ktdeploy/lab/tiny_dsv3.py).

transformers 4.43 (the version KTransformers 0.2.x pins) has no `deepseek_v3` model type, so
config.json names this class through `auto_map`. It holds every attribute KTransformers' DeepSeek-V3
modelling code reads; the defaults are DeepSeek-R1's.
"""

from transformers.configuration_utils import PretrainedConfig


class DeepseekV3Config(PretrainedConfig):
    model_type = "deepseek_v3"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=129280,
        hidden_size=7168,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_hidden_layers=61,
        num_nextn_predict_layers=1,
        num_attention_heads=128,
        num_key_value_heads=128,
        n_shared_experts=1,
        n_routed_experts=256,
        ep_size=1,
        routed_scaling_factor=2.5,
        kv_lora_rank=512,
        q_lora_rank=1536,
        qk_rope_head_dim=64,
        v_head_dim=128,
        qk_nope_head_dim=128,
        topk_method="noaux_tc",
        n_group=8,
        topk_group=4,
        num_experts_per_tok=8,
        moe_layer_freq=1,
        first_k_dense_replace=3,
        norm_topk_prob=True,
        scoring_func="sigmoid",
        aux_loss_alpha=0.001,
        seq_aux=True,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=0,
        eos_token_id=1,
        pretraining_tp=1,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,
        attention_bias=False,
        attention_dropout=0.0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.n_shared_experts = n_shared_experts
        self.n_routed_experts = n_routed_experts
        self.ep_size = ep_size
        self.routed_scaling_factor = routed_scaling_factor
        self.kv_lora_rank = kv_lora_rank
        self.q_lora_rank = q_lora_rank
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.qk_nope_head_dim = qk_nope_head_dim
        self.topk_method = topk_method
        self.n_group = n_group
        self.topk_group = topk_group
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layer_freq = moe_layer_freq
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.pretraining_tp = pretraining_tp
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
'''


def config_json(d: Dims = DIMS) -> dict:
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "ep_size": 1,
        "first_k_dense_replace": d.first_k_dense,
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "initializer_range": WEIGHT_STD,
        "intermediate_size": d.intermediate,
        "kv_lora_rank": d.kv_lora_rank,
        "max_position_embeddings": d.context,
        "moe_intermediate_size": d.moe_intermediate,
        "moe_layer_freq": 1,
        "n_group": d.n_group,
        "n_routed_experts": d.experts,
        "n_shared_experts": d.shared_experts,
        "norm_topk_prob": True,
        "num_attention_heads": d.heads,
        "num_experts_per_tok": d.experts_per_token,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.heads,
        "num_nextn_predict_layers": 0,  # no multi-token-prediction layer
        "q_lora_rank": d.q_lora_rank,
        "qk_nope_head_dim": d.qk_nope,
        "qk_rope_head_dim": d.qk_rope,
        "rms_norm_eps": d.rms_norm_eps,
        "rope_scaling": dict(ROPE_SCALING),
        "rope_theta": d.rope_theta,
        "routed_scaling_factor": d.routed_scaling_factor,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": d.topk_group,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.2",
        "use_cache": True,
        "v_head_dim": d.v_head,
        "vocab_size": d.vocab,
    }


GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.95,
    "transformers_version": "4.43.2",
}


# ---------------------------------------------------------------------------------------------
# Tensors

@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # GGUF/ggml order: ne0 (the row length) first, as llama.cpp's loader lists it
    type: str  # gguf.GGMLQuantizationType name


def _types(profile: str) -> dict[str, str]:
    if profile not in PROFILES:
        raise ValueError(f"unknown expert profile {profile!r}: use one of {', '.join(PROFILES)}")
    experts = {"iq1s": ("IQ1_S", "IQ2_XXS"), "k": ("Q4_K", "Q6_K")}[profile]
    return {"norm": "F32", "router": "F32", "embed": "Q4_K", "output": "Q6_K", "attn_a": "Q4_K", "attn_b": "Q4_K",
            "kv_a": "Q6_K", "kv_b": "Q6_K", "attn_out": "Q4_K", "gate_up": "Q4_K", "down": "Q6_K",
            "exps_gate_up": experts[0], "exps_down": experts[1]}


def tensor_specs(profile: str = DEFAULT_PROFILE, d: Dims = DIMS) -> list[TensorSpec]:
    """Every tensor of the GGUF, in file order."""
    t = _types(profile)
    n_e = d.hidden
    specs = [TensorSpec("token_embd.weight", (n_e, d.vocab), t["embed"])]
    for i in range(d.layers):
        b = f"blk.{i}."
        specs += [
            TensorSpec(b + "attn_norm.weight", (n_e,), t["norm"]),
            TensorSpec(b + "attn_q_a_norm.weight", (d.q_lora_rank,), t["norm"]),
            TensorSpec(b + "attn_kv_a_norm.weight", (d.kv_lora_rank,), t["norm"]),
            TensorSpec(b + "attn_q_a.weight", (n_e, d.q_lora_rank), t["attn_a"]),
            TensorSpec(b + "attn_q_b.weight", (d.q_lora_rank, d.heads * d.q_head), t["attn_b"]),
            TensorSpec(b + "attn_kv_a_mqa.weight", (n_e, d.kv_lora_rank + d.qk_rope), t["kv_a"]),
            TensorSpec(b + "attn_kv_b.weight", (d.kv_lora_rank, d.heads * (d.qk_nope + d.v_head)), t["kv_b"]),
            TensorSpec(b + "attn_output.weight", (d.heads * d.v_head, n_e), t["attn_out"]),
            TensorSpec(b + "ffn_norm.weight", (n_e,), t["norm"]),
        ]
        if i < d.first_k_dense:
            specs += [
                TensorSpec(b + "ffn_gate.weight", (n_e, d.intermediate), t["gate_up"]),
                TensorSpec(b + "ffn_up.weight", (n_e, d.intermediate), t["gate_up"]),
                TensorSpec(b + "ffn_down.weight", (d.intermediate, n_e), t["down"]),
            ]
            continue
        shared = d.moe_intermediate * d.shared_experts
        specs += [
            TensorSpec(b + "ffn_gate_inp.weight", (n_e, d.experts), t["router"]),
            TensorSpec(b + "exp_probs_b.bias", (d.experts,), t["router"]),
            TensorSpec(b + "ffn_gate_exps.weight", (n_e, d.moe_intermediate, d.experts), t["exps_gate_up"]),
            TensorSpec(b + "ffn_up_exps.weight", (n_e, d.moe_intermediate, d.experts), t["exps_gate_up"]),
            TensorSpec(b + "ffn_down_exps.weight", (d.moe_intermediate, n_e, d.experts), t["exps_down"]),
            TensorSpec(b + "ffn_gate_shexp.weight", (n_e, shared), t["gate_up"]),
            TensorSpec(b + "ffn_up_shexp.weight", (n_e, shared), t["gate_up"]),
            TensorSpec(b + "ffn_down_shexp.weight", (shared, n_e), t["down"]),
        ]
    specs += [
        TensorSpec("output_norm.weight", (n_e,), t["norm"]),
        TensorSpec("output.weight", (n_e, d.vocab), t["output"]),
    ]
    return specs


# Random blocks. Each kind: bytes per 256 weights, a function filling the codes of n blocks with a
# unit scale, and where the f16 scale(s) sit, so that one factor gives every block the wanted spread.
_F16_ONE = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)


def _blocks_q4_k(rng: np.random.Generator, n: int) -> np.ndarray:
    # d, dmin, 12 bytes of 6-bit sub-block scales/mins, 128 bytes of 4-bit quants: y = d*sc*q - dmin*m.
    # All 8 sub-blocks sc = 2, m = 15 and dmin = d: y = d*(2q - 15), q uniform in 0..15, mean 0.
    b = np.empty((n, 144), np.uint8)
    b[:, 0:2] = b[:, 2:4] = _F16_ONE
    b[:, 4:16] = [2, 2, 2, 2, 15, 15, 15, 15, 0xF2, 0xF2, 0xF2, 0xF2]
    b[:, 16:] = rng.integers(0, 256, (n, 128), dtype=np.uint8)
    return b


def _blocks_q6_k(rng: np.random.Generator, n: int) -> np.ndarray:
    # 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 sub-block scales, d: y = d*scale*(q - 32).
    # Scales of +-16 with random signs: the 32-offset's bias cancels out.
    b = np.empty((n, 210), np.uint8)
    b[:, :192] = rng.integers(0, 256, (n, 192), dtype=np.uint8)
    signs = rng.integers(0, 2, (n, 16), dtype=np.int8) * 2 - 1
    b[:, 192:208] = (signs * 16).astype(np.int8).view(np.uint8)
    b[:, 208:210] = _F16_ONE
    return b


def _blocks_iq1_s(rng: np.random.Generator, n: int) -> np.ndarray:
    # d, 32 bytes of grid index low bits, 8 uint16 qh: bits 0-11 grid index high bits, 12-14 the
    # sub-block scale (0: x1), 15 the sign of the +-1/8 delta (random: the grid's bias cancels out).
    b = np.empty((n, 50), np.uint8)
    b[:, 0:2] = _F16_ONE
    b[:, 2:34] = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    qh = rng.integers(0, 1 << 12, (n, 8), dtype=np.uint16) | (rng.integers(0, 2, (n, 8), dtype=np.uint16) << 15)
    b[:, 34:50] = qh.astype("<u2").view(np.uint8)
    return b


def _blocks_iq2_xxs(rng: np.random.Generator, n: int) -> np.ndarray:
    # d, then per 32 weights two uint32: four 8-bit grid indices; four 7-bit sign patterns and a
    # 4-bit scale (fixed at 7) in the top bits. Random signs: mean 0.
    b = np.empty((n, 66), np.uint8)
    b[:, 0:2] = _F16_ONE
    words = np.empty((n, 8, 2), np.uint32)
    words[:, :, 0] = rng.integers(0, 1 << 32, (n, 8), dtype=np.uint64).astype(np.uint32)
    words[:, :, 1] = rng.integers(0, 1 << 28, (n, 8), dtype=np.uint32) | np.uint32(7 << 28)
    b[:, 2:66] = words.astype("<u4").view(np.uint8).reshape(n, 64)
    return b


_BLOCKS = {  # type -> (filler, byte offsets of the f16 scales)
    "Q4_K": (_blocks_q4_k, (0, 2)),
    "Q6_K": (_blocks_q6_k, (208,)),
    "IQ1_S": (_blocks_iq1_s, (0,)),
    "IQ2_XXS": (_blocks_iq2_xxs, (0,)),
}
_CALIBRATION_BLOCKS = 4096


def unit_std(type_name: str) -> float:
    """Standard deviation of the dequantised weights of random blocks whose scale is 1."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    fill, _ = _BLOCKS[type_name]
    blocks = fill(np.random.default_rng(SEED - 1), _CALIBRATION_BLOCKS)
    return float(dequantize(blocks, GGMLQuantizationType[type_name]).std())


def scale_for(type_name: str, std: float = WEIGHT_STD) -> np.float16:
    return np.float16(std / unit_std(type_name))


def random_blocks(rng: np.random.Generator, type_name: str, n_weights: int, scale: np.float16) -> np.ndarray:
    """n_weights / 256 random blocks of type_name, every block's scale set to scale."""
    fill, offsets = _BLOCKS[type_name]
    blocks = fill(rng, n_weights // 256)
    raw = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    for off in offsets:
        blocks[:, off:off + 2] = raw
    return blocks


def _tensor_data(rng: np.random.Generator, spec: TensorSpec, scales: dict[str, np.float16]) -> np.ndarray:
    """The tensor in numpy order (the GGUF shape reversed): float32 values or quantised bytes."""
    np_shape = tuple(reversed(spec.shape))
    if spec.type == "F32":
        if spec.name.endswith("norm.weight"):
            return np.ones(np_shape, np.float32)
        if spec.name.endswith("exp_probs_b.bias"):
            return np.zeros(np_shape, np.float32)
        return (rng.standard_normal(np_shape) * WEIGHT_STD).astype(np.float32)
    n = int(np.prod(spec.shape))
    row = spec.shape[0]
    if row % 256:
        raise ValueError(f"{spec.name}: rows of {row} weights do not fill 256-weight blocks")
    blocks = random_blocks(rng, spec.type, n, scales[spec.type])
    if spec.name == "output.weight":  # never pick a control token greedily: zero logits for them
        per_row = row // 256
        zero = blocks[: per_row * len(CONTROL_TOKENS)]
        for off in _BLOCKS[spec.type][1]:
            zero[:, off:off + 2] = 0
    return blocks.reshape(*np_shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# Writing

@dataclass(frozen=True)
class Written:
    config_dir: Path
    gguf_dir: Path
    gguf_path: Path

    def sizes(self) -> dict[str, int]:
        return {"gguf": self.gguf_path.stat().st_size,
                "config": sum(p.stat().st_size for p in self.config_dir.iterdir() if p.is_file())}


def _write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_config_dir(directory: Path, vocab: Vocab | None = None, d: Dims = DIMS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = vocab or build_vocab(d.vocab)
    _write_json(directory / "config.json", config_json(d))
    (directory / "configuration_deepseek.py").write_text(CONFIGURATION_PY, encoding="utf-8")
    _write_json(directory / "generation_config.json", GENERATION_CONFIG)
    _write_json(directory / "tokenizer.json", tokenizer_json(vocab))
    _write_json(directory / "tokenizer_config.json", tokenizer_config())


def write_gguf(path: Path, profile: str = DEFAULT_PROFILE, vocab: Vocab | None = None, d: Dims = DIMS) -> None:
    import gguf

    vocab = vocab or build_vocab(d.vocab)
    specs = tensor_specs(profile, d)
    scales = {t: scale_for(t) for t in sorted({s.type for s in specs} - {"F32"})}
    rng = np.random.default_rng(SEED)

    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_type("model")
    w.add_name(f"DeepSeek-V3 tiny ({model_name(profile)}, random weights)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_IQ1_S if profile == "iq1s" else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(d.vocab)
    w.add_context_length(d.context)
    w.add_embedding_length(d.hidden)
    w.add_feed_forward_length(d.intermediate)
    w.add_block_count(d.layers)
    w.add_leading_dense_block_count(d.first_k_dense)
    w.add_head_count(d.heads)
    w.add_head_count_kv(d.heads)
    w.add_key_length(d.q_head)  # fused attn_kv_b layout: key 192, value 128, no *_mla keys
    w.add_value_length(d.v_head)
    w.add_q_lora_rank(d.q_lora_rank)
    w.add_kv_lora_rank(d.kv_lora_rank)
    w.add_layer_norm_rms_eps(d.rms_norm_eps)
    w.add_rope_freq_base(d.rope_theta)
    w.add_rope_dimension_count(d.qk_rope)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(ROPE_SCALING["factor"])
    w.add_rope_scaling_orig_ctx_len(ROPE_SCALING["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_log_mul(0.1 * ROPE_SCALING["mscale_all_dim"])  # as convert_hf_to_gguf writes it
    w.add_expert_count(d.experts)
    w.add_expert_used_count(d.experts_per_token)
    w.add_expert_shared_count(d.shared_experts)
    w.add_expert_feed_forward_length(d.moe_intermediate)
    w.add_expert_weights_scale(d.routed_scaling_factor)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_expert_group_count(d.n_group)
    w.add_expert_group_used_count(d.topk_group)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("deepseek-v3")
    w.add_token_list(list(vocab.tokens))
    w.add_token_types(list(vocab.types))
    w.add_token_merges([f"{a} {b}" for a, b in vocab.merges])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for spec in specs:
        data = _tensor_data(rng, spec, scales)
        if spec.type == "F32":
            w.add_tensor(spec.name, data)
        else:
            w.add_tensor(spec.name, data, raw_dtype=gguf.GGMLQuantizationType[spec.type])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write(outdir: str | Path, profile: str = DEFAULT_PROFILE) -> Written:
    """Write OUTDIR/config/ and OUTDIR/gguf/tiny-dsv3-<profile>.gguf (see the module docstring).

    Replaces this generator's own files; refuses when OUTDIR/gguf holds another *.gguf (the
    KTransformers loader would read it too)."""
    _types(profile)  # unknown profile: ValueError before anything is written
    out = Path(outdir)
    gguf_dir = out / GGUF_DIR
    gguf_path = gguf_dir / f"{model_name(profile)}.gguf"
    if gguf_dir.is_dir():
        foreign = sorted(p.name for p in gguf_dir.iterdir() if p.name != gguf_path.name)
        ours = [n for n in foreign if re.fullmatch(r"tiny-dsv3-[a-z0-9]+\.gguf", n)]
        others = [n for n in foreign if n not in ours]
        if others:
            raise FileExistsError(f"{gguf_dir} holds other files ({', '.join(others)}): KTransformers reads every "
                                  "file there; choose an empty OUTDIR")
        for name in ours:  # another profile written here before: one model per directory
            (gguf_dir / name).unlink()
    gguf_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    write_config_dir(out / CONFIG_DIR, vocab)
    tmp = gguf_path.with_name(gguf_path.name + ".part")
    try:
        write_gguf(tmp, profile, vocab)
        tmp.replace(gguf_path)
    finally:
        tmp.unlink(missing_ok=True)
    return Written(out / CONFIG_DIR, gguf_dir, gguf_path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ktdeploy.lab.tiny_dsv3", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="directory to write config/ and gguf/ into")
    parser.add_argument("--experts", choices=PROFILES, default=DEFAULT_PROFILE,
                        help="routed expert types: iq1s (IQ1_S/IQ2_XXS, KTransformers v0.2.3+) or k (Q4_K/Q6_K)")
    args = parser.parse_args(argv)
    try:
        written = write(args.outdir, args.experts)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"config dir: {written.config_dir}")
    print(f"gguf dir:   {written.gguf_dir}")
    print(f"gguf file:  {written.gguf_path} ({written.gguf_path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
