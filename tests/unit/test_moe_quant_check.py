"""The numpy side of tests/gpu/moe_quant_check.py: weight blocks, Q8_K, BF16, the MoE reference."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

SCRIPT = Path(__file__).resolve().parents[1] / "gpu" / "moe_quant_check.py"
spec = importlib.util.spec_from_file_location("moe_quant_check", SCRIPT)
mqc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mqc)


def test_the_script_does_not_import_the_extension_or_torch_at_import():
    import sys

    assert "cpuinfer_ext" not in sys.modules
    assert "import torch" not in SCRIPT.read_text().split("def main", 1)[0]


@pytest.mark.parametrize("qtype", ["IQ1_S", "IQ2_XXS", "Q4_K"])
def test_random_blocks_are_valid_and_scaled(qtype):
    rng = np.random.default_rng(1)
    blocks = mqc.random_blocks(qtype, 4, 512, rng, scale=0.01)
    assert blocks.shape == (4, 2 * mqc.BLOCK_BYTES[qtype]) and blocks.dtype == np.uint8
    d = blocks.reshape(4, 2, -1)[:, :, 0:2].copy().view(np.float16).astype(np.float32)
    assert ((d >= 0.005 * 0.999) & (d <= 0.015 * 1.001)).all()
    w = mqc.dequantize(qtype, blocks)
    assert w.shape == (4, 512) and np.isfinite(w).all() and w.std() > 0


def test_random_blocks_refuse_partial_blocks():
    with pytest.raises(ValueError):
        mqc.random_blocks("IQ1_S", 1, 300, np.random.default_rng(0))


def test_weight_scale_gives_unit_norm_rows():
    rng = np.random.default_rng(2)
    for qtype in ("IQ1_S", "IQ2_XXS", "Q4_K"):
        w = mqc.dequantize(qtype, mqc.random_blocks(qtype, 64, 1024, rng, mqc.weight_scale(qtype, 1024, rng)))
        assert 0.5 < np.linalg.norm(w, axis=1).mean() < 2.0


def test_iq1s_delta_flip_moves_every_weight_by_a_quarter_step():
    rng = np.random.default_rng(3)
    blocks = mqc.random_blocks("IQ1_S", 2, 256, rng)
    before, after = mqc.dequantize("IQ1_S", blocks), mqc.dequantize("IQ1_S", mqc.flip_iq1s_delta(blocks))
    # w = d * (2 s + 1) * (grid ± 0.125): flipping the delta moves each weight by d * (2 s + 1) / 4
    d = float(blocks[0, 0:2].copy().view(np.float16)[0])
    qh = blocks[0, 34:50].copy().view(np.uint16)
    step = np.repeat(d * (2 * ((qh >> 12) & 7) + 1) * 0.25, 32)
    assert np.allclose(np.abs(after[0] - before[0]), step, rtol=1e-3)
    assert np.array_equal(mqc.flip_iq1s_delta(mqc.flip_iq1s_delta(blocks)), blocks)


def test_iq2xxs_sign_flip_changes_two_values_per_group():
    rng = np.random.default_rng(4)
    blocks = mqc.random_blocks("IQ2_XXS", 1, 256, rng)
    before, after = mqc.dequantize("IQ2_XXS", blocks), mqc.dequantize("IQ2_XXS", mqc.flip_iq2xxs_sign_group(blocks))
    changed = np.flatnonzero(before[0] != after[0])
    # bit 0 of the first sign index flips value 0 and, by the even-parity rule, value 7 of each group
    assert set(changed % 32) <= {0, 7} and len(changed) == 16
    assert np.allclose(after[0][changed], -before[0][changed])


def test_quantize_q8_k_matches_ggml_reference_rules():
    x = np.zeros(256, dtype=np.float32)
    x[:4] = [-2.0, 1.0, 0.5, 1.0 / 127]
    got = mqc.quantize_q8_k(x)
    # iscale = -127 / max = 63.5 (the signed max is -2): q = rint(63.5 x) -> -127, 64, 32, 0 (63.5 and
    # 0.5 round to even), d = 1 / 63.5
    assert got[:4].tolist() == (np.array([-127, 64, 32, 0], np.float32) * np.float32(1 / 63.5)).tolist()
    assert mqc.quantize_q8_k(np.zeros(512, np.float32)).tolist() == [0.0] * 512
    y = np.random.default_rng(5).standard_normal(1024).astype(np.float32)
    q = mqc.quantize_q8_k(y)
    for b in range(4):
        blk = slice(256 * b, 256 * (b + 1))
        assert np.abs(q[blk] - y[blk]).max() <= np.abs(y[blk]).max() / 127 * 0.5 + 1e-7


def test_bf16_round_trip_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -3.5, 0.0], dtype=np.float32)
    assert mqc.from_bf16(mqc.to_bf16(x)).tolist() == [1.0, 1.0, 1.0 + 2**-6, -3.5, 0.0]


def test_moe_reference_by_hand():
    x = np.zeros((1, 256), np.float32)
    x[0, 0] = 2.0
    gate = np.zeros((2, 256, 256), np.float32)
    up = np.zeros_like(gate)
    down = np.zeros_like(gate)
    gate[1, 0, 0], up[1, 0, 0], down[1, 3, 0] = 1.0, 0.5, 4.0  # expert 1: h0 = silu(2) * 1, out[3] = 4 h0
    gate[0, 0, 0], up[0, 0, 0], down[0, 5, 0] = 1.0, 1.0, 1.0  # expert 0: out[5] = silu(2) * 2
    got = mqc.moe_reference(x, np.array([[1, 0]]), np.array([[0.25, 0.5]]), gate, up, down, acts=None)
    s = 2.0 / (1.0 + np.exp(-2.0))
    want = np.zeros((1, 256))
    want[0, 3], want[0, 5] = 0.25 * 4.0 * s * 1.0, 0.5 * s * 2.0
    assert np.allclose(got, want)
    assert np.allclose(mqc.moe_reference(x, np.array([[1, 0]]), np.array([[0.25, 0.5]]), gate, up, down), want, rtol=1e-2)


def test_relative_error_tells_a_near_miss_from_a_wrong_answer():
    want = np.linspace(1, 2, 100)
    assert mqc.relative_error(want * (1 + 1e-4), want) < mqc.TOL
    assert mqc.relative_error(-want, want) > 1.9
    assert mqc.relative_error(np.zeros(100), want) == pytest.approx(1.0)


def test_quantize_q8_k_rounds_the_exact_product_as_the_fused_multiply_add_does():
    # max -2 -> iscale 63.5; x = (k + 0.5) / 63.5 in float32 is a hair off the tie: the float32
    # product rounds onto k + 0.5 (then to even), the exact product rounds to its own side
    x = np.zeros((63, 256), np.float32)
    x[:, 0] = -2.0
    x[:, 1] = (np.arange(63) + 0.5) / 63.5
    exact = np.float64(63.5) * x[:, 1].astype(np.float64)
    want = np.rint(exact) / 63.5
    fused, unfused = mqc.quantize_q8_k(x)[:, 1], mqc.quantize_q8_k(x, fused=False)[:, 1]
    assert np.allclose(fused, want, rtol=1e-6)
    assert (fused != unfused).sum() > 5  # the cases ggml (built with FMA) and a plain float32 product disagree on


def test_verdict_needs_small_errors_finite_output_and_telling_controls():
    ok_errs, got = np.array([0.0, 1e-4, 2e-4]), np.ones(3)
    assert mqc.verdict(got, ok_errs, [0.3, 0.25])
    assert not mqc.verdict(got, np.array([0.0, 2 * mqc.TOL]), [0.3])
    assert not mqc.verdict(np.array([1.0, np.nan]), ok_errs, [0.3])
    assert not mqc.verdict(got, ok_errs, [0.3, 4 * mqc.TOL])  # a wrong kernel the tolerance might hide
    assert mqc.verdict(got, ok_errs, [])  # Q4_K: no control


@pytest.mark.parametrize("qtype", sorted(set(mqc.F16_SCALES)))
def test_f16_scale_offsets_are_where_gguf_reads_the_scales(qtype):
    # the same random bits with every f16 scale doubled must give exactly doubled weights
    elems = mqc.BLOCK[qtype][0]
    one = mqc.random_blocks(qtype, 2, 2 * max(elems, 256), np.random.default_rng(7), scale=0.01)
    two = mqc.random_blocks(qtype, 2, 2 * max(elems, 256), np.random.default_rng(7), scale=0.02)
    w1, w2 = mqc.dequantize(qtype, one), mqc.dequantize(qtype, two)
    assert np.isfinite(w1).all() and w1.std() > 0
    assert np.array_equal(w2, 2 * w1)


def test_iq4_xs_blocks_keep_to_the_lower_half_of_the_codebook():
    blocks = mqc.random_blocks("IQ4_XS", 3, 512, np.random.default_rng(8)).reshape(3, 2, 136)
    assert (blocks[:, :, 8:] & 0x88 == 0).all()
    assert (blocks[:, :, 8:] & 0x77 != 0).any()


def test_quantize_q8_0_rounds_to_even_and_stores_d_as_f16():
    # amax 127 -> id = 1, d = 1: the values round as _mm256_round_ps does (to even; roundf would
    # give 3 and 4 for 2.5 and 3.5... and -1 for -0.5)
    x = np.zeros(64, np.float32)
    x[:4] = [127.0, 2.5, 3.5, -0.5]
    got = mqc.quantize_q8_0(x)
    assert got[:4].tolist() == [127.0, 2.0, 4.0, 0.0] and (got[32:] == 0).all()
    # d is kept as f16: amax 100 -> d = f16(100 / 127), q = rint(x * 127 / 100)
    y = np.zeros(32, np.float32)
    y[:2] = [100.0, 50.0]
    d16 = float(np.float16(np.float32(100.0) / np.float32(127.0)))
    assert mqc.quantize_q8_0(y)[:2].tolist() == [np.float32(127 * d16), np.float32(64 * d16)]
    assert mqc.VEC_DOT["Q8_0"] == "Q8_0" and mqc.VEC_DOT["Q4_K"] == mqc.VEC_DOT["IQ1_S"] == "Q8_K"
