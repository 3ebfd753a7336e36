"""Small real GGUF files written with the gguf package (a few hundred bytes each), for the GGUF tests."""

from pathlib import Path

import gguf
import numpy as np

from ktdeploy import catalog

GOOD_TYPES = {
    "token_embd.weight": "Q4_K",
    "blk.0.attn_kv_b.weight": "Q6_K",
    "blk.0.attn_norm.weight": "F32",
    "blk.3.ffn_gate_exps.weight": "IQ1_S",
    "blk.3.ffn_down_exps.weight": "IQ2_XXS",
    "blk.3.ffn_up_exps.weight": "IQ1_S",
    "output.weight": "Q6_K",
}


def write_gguf(path: Path, tensors: dict[str, str], split: tuple[int, int] | None = None) -> None:
    w = gguf.GGUFWriter(str(path), "deepseek2")
    if split:
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, split[0])
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, split[1])
    w.add_array("tokenizer.ggml.tokens", ["<s>", "hello", "world"])
    w.add_array("tokenizer.ggml.scores", [0.0, 1.5, 2.5])
    w.add_string("general.name", "DeepSeek R1 (test)")
    for name, type_name in tensors.items():
        qtype = gguf.GGMLQuantizationType[type_name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, np.zeros((block * 8,), np.float32))
        else:
            w.add_tensor(name, np.zeros((1, size), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_variant(directory: Path, variant="UD-IQ1_S", types=GOOD_TYPES, skip=(), extra=None) -> Path:
    var = catalog.variant(variant)
    gdir = Path(var.gguf_dir(str(directory)))
    gdir.mkdir(parents=True, exist_ok=True)
    names = list(types)
    for i, rel in enumerate(var.files):
        if i in skip:
            continue
        part = {n: types[n] for n in names[i :: var.shards]}
        write_gguf(gdir / Path(rel).name, part, (i, var.shards))
    for name, tensors in (extra or {}).items():
        write_gguf(gdir / name, tensors)
    return gdir
