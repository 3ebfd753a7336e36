"""The CPU MoE operator of a KTransformers build against a numpy reference, per expert weight type.

Run it with the Python of the env KTransformers was built into (no GPU needed; `gguf` and `numpy`
must be importable there, `pip install gguf` brings both):

    python3 tests/gpu/moe_quant_check.py [--threads N] [--hidden-type BF16|F32] [--expect-iq1s kernel|refused]

It builds `cpuinfer_ext.moe.MOE` layers with random but valid expert weights and runs `forward` for
1 token (`forward_one`) and for 12 tokens (`forward_many`, from `group_min_len` = 10 on), with the
shapes KTransformers uses (stride 64, BF16 hidden states by default), and compares each token's
output with a numpy reference built from the weights as `gguf.quants` dequantizes them:
SiLU(gate) * up, then down, summed with the routing weights. The operator quantizes its activations
to Q8_K (Q8_0 for Q4_0/Q5_0/Q8_0 weights) before each projection; the reference does the same, with
ggml's rounding (`quantize_q8_k`, `quantize_q8_0`), and rounds its result to the hidden type as the operator does. A correct kernel
then agrees to float rounding: about 1e-7 with F32, mostly exactly with BF16, and now and then an
intermediate value on a rounding boundary rounds the other way (up to 3e-3 for that token).
`TOL` (1e-2 per token) is far below what a kernel that gets one detail of a format wrong gives: the
negative controls print the error of such kernels (the IQ1_S delta sign flipped; one sign in each
IQ2_XXS group of 8 values flipped, with its parity partner), and the check fails unless even their
best token is off by more than 5 x `TOL`. The error against a reference with unquantized activations
is printed for scale only (the activations' quantization alone costs about 1-2e-2).

Cases:
  * UD-IQ1_S's expert mix: gate/up IQ1_S, down IQ2_XXS; and the other way round (UD-IQ1_S also has
    IQ1_S down projections); without patch 0003 of ktdeploy's series these are refused (0001);
  * the controls, types every legacy version runs and whose x86 kernels 0003 changes or moves too
    (it rewrites iqk_mul_mat.inc and sends Q8_0 weights to iqk): Q2_K..Q6_K, IQ4_XS (see
    CODEBOOK_MASK), Q4_0, Q5_0 and Q8_0 experts, one type for gate, up and down;
  * IQ1_M experts: no x86 kernel in any legacy version, so patch 0001 must refuse them by name.

`--expect-iq1s refused` checks a build without the backport (plain 0.2.1.post1 with patch 0001):
then IQ1_S/IQ2_XXS must be refused like IQ1_M. Exit status 0 when every case is as expected.

Import order: torch (where installed) before cpuinfer_ext. Importing torch after cpuinfer_ext
crashed the interpreter on the H200 (torch 2.11); the check itself needs only numpy.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

QK_K = 256
# ggml type ids (ggml.h)
GGML = {"F32": 0, "Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
        "IQ2_XXS": 16, "IQ1_S": 19, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30}
# (elements, bytes) per block, and (F16_SCALES) the byte offsets of the block's f16 scales (d, and
# dmin where there is one): ggml-common.h's block structs
BLOCK = {"Q4_0": (32, 18), "Q5_0": (32, 22), "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210), "IQ2_XXS": (256, 66), "IQ1_S": (256, 50),
         "IQ4_XS": (256, 136), "IQ1_M": (256, 56)}
BLOCK_BYTES = {t: b for t, (_, b) in BLOCK.items()}
F16_SCALES = {"Q4_0": (0,), "Q5_0": (0,), "Q8_0": (0,), "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2),
              "Q5_K": (0, 2), "Q6_K": (208,), "IQ2_XXS": (0,), "IQ1_S": (0,), "IQ4_XS": (0,)}
# the type a weight type's kernels want their activations in (ggml.c type_traits vec_dot_type)
VEC_DOT = {t: ("Q8_0" if t in ("Q4_0", "Q5_0", "Q8_0") else "Q8_K") for t in BLOCK}
# expert types KTransformers' CPU experts may meet in the catalog's GGUFs (UD-Q2_K_XL, Q4_K_M, ...),
# whose x86 kernels 0003 replaces or touches too: each is checked on its own against the reference
CONTROLS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "Q4_0", "Q5_0", "Q8_0")
# IQ4_XS: iqk's x86 kernel (before and after 0003) multiplies kvalue + 128 (1..241) by the Q8_K
# activations with _mm256_maddubs_epi16, whose int16 pair sums saturate for large weights on large
# activations; uniformly random 4-bit indices hit that often (5e-2 error here; how often real
# experts do was not measured). The check keeps to indices 0..7 (kvalue + 128 <= 118: no pair can
# saturate), so that it tests the arithmetic; qs starts at byte 8 of the block.
CODEBOOK_MASK = {"IQ4_XS": (8, 0x77)}

EXPERTS, ROUTED, HIDDEN, INTER = 8, 3, 1024, 512
STRIDE, GROUP_MIN, GROUP_MAX = 64, 10, 1024  # what KTransformers' KExpertsCPU passes
TOKENS = (1, 12)  # forward_one, forward_many
TOL = 1e-2  # per token: relative L2 error against the quantized-activation reference (module docstring)
UNSUPPORTED = "llamafile_sgemm has no kernel for"


# ---------------------------------------------------------------- pure helpers (unit-tested)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values.astype(np.float16)).view(np.uint8).reshape(values.shape + (2,))


def random_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """(rows, cols // block elements * block bytes) uint8 of valid `qtype` blocks: random bits, and
    random positive f16 scales of about `scale` at F16_SCALES.

    Every bit pattern of these blocks is a valid weight except in the f16 scales (NaN, inf, huge), so
    random bytes plus sane scales give valid weights. IQ1_M keeps its scale in the block's `scales`
    bytes; its blocks here are all zeros (only ever refused). IQ4_XS: see CODEBOOK_MASK.
    """
    elems, size = BLOCK[qtype]
    if cols % elems:
        raise ValueError(f"cols must be a multiple of {elems} for {qtype}, not {cols}")
    nb = cols // elems
    if qtype == "IQ1_M":
        return np.zeros((rows, nb * size), dtype=np.uint8)
    blocks = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
    if qtype in CODEBOOK_MASK:
        start, mask = CODEBOOK_MASK[qtype]
        blocks[:, :, start:] &= mask
    for offset in F16_SCALES[qtype]:
        blocks[:, :, offset:offset + 2] = _f16_bytes(scale * rng.uniform(0.5, 1.5, size=(rows, nb)))
    return blocks.reshape(rows, nb * size)


def dequantize(qtype: str, blocks: np.ndarray) -> np.ndarray:
    """float32 weights of `blocks` (rows, bytes), by gguf.quants."""
    from gguf import GGMLQuantizationType, quants

    return quants.dequantize(blocks, GGMLQuantizationType[qtype]).astype(np.float32)


def weight_scale(qtype: str, cols: int, rng: np.random.Generator) -> float:
    """Block scale that gives rows of about unit norm (weights of std ~ 1/sqrt(cols))."""
    probe = dequantize(qtype, random_blocks(qtype, 8, cols, rng))
    return float(1.0 / (np.sqrt(cols) * probe.std()))


def flip_iq1s_delta(blocks: np.ndarray) -> np.ndarray:
    """Copy with the sign of every IQ1_S delta flipped (bit 15 of each qh word)."""
    out = blocks.copy().reshape(blocks.shape[0], -1, BLOCK_BYTES["IQ1_S"])
    out[:, :, 2 + QK_K // 8 + 1::2] ^= 0x80  # qh: 8 little-endian uint16 after d and qs
    return out.reshape(blocks.shape)


def flip_iq2xxs_sign_group(blocks: np.ndarray) -> np.ndarray:
    """Copy with bit 0 of the first 7-bit sign index of each 32-value group flipped (IQ2_XXS)."""
    out = blocks.copy().reshape(blocks.shape[0], -1, BLOCK_BYTES["IQ2_XXS"])
    # qs: per 32 values two uint32: grid indices, then 4x7 sign bits + 4 scale bits
    out[:, :, 2 + 4::8] ^= 0x01
    return out.reshape(blocks.shape)


def quantize_q8_k(x: np.ndarray, fused: bool = True) -> np.ndarray:
    """x (..., n) through ggml's Q8_K (quantize_row_q8_K_reference) and back, per 256 values.

    ggml rounds with nearest_int(iscale * x) = (iscale * x + 1.5 * 2^23) minus the magic. Built with
    FMA enabled, GCC fuses that multiply-add (vfmadd in ggml-quants.c.o), so the product is not
    rounded to float before it is rounded to an integer: `fused` does the same; without it, values
    near a .5 (frequent with BF16 inputs) can round the other way.
    """
    x = np.asarray(x, dtype=np.float32)
    blocks = x.reshape(-1, QK_K)
    idx = np.abs(blocks).argmax(axis=1)
    signed_max = blocks[np.arange(len(blocks)), idx]
    out = np.zeros_like(blocks)
    nz = signed_max != 0
    iscale = np.float32(-127.0) / signed_max[nz]
    if fused:
        product = iscale[:, None].astype(np.float64) * blocks[nz].astype(np.float64)  # exact
    else:
        product = iscale[:, None] * blocks[nz]
    q = np.minimum(np.rint(product), 127).astype(np.float32)
    out[nz] = q * (np.float32(1.0) / iscale)[:, None]
    return out.reshape(x.shape)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """x (..., n) through ggml's Q8_0 as its x86 SIMD quantize_row_q8_0 does it, and back, per 32 values.

    id = 127 / amax, q = round-to-even(x * id) with the product rounded to float first (separate
    multiply and round instructions), d = amax / 127 stored as f16.
    """
    x = np.asarray(x, dtype=np.float32)
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d16 = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv[:, None])
    return (q * d16[:, None]).astype(np.float32).reshape(x.shape)


QUANTIZE = {"Q8_K": quantize_q8_k, "Q8_0": quantize_q8_0}


def to_bf16(x: np.ndarray) -> np.ndarray:
    """uint16 BF16 bits of float32 `x`, rounded to nearest even (as ggml_fp32_to_bf16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def moe_reference(x, expert_ids, routing, gate, up, down, acts=("Q8_K", "Q8_K")) -> np.ndarray:
    """Σ_j routing[t, j] · down[e] @ (SiLU(gate[e] @ x_t) · up[e] @ x_t), e = expert_ids[t, j].

    x (T, H); expert_ids, routing (T, k); gate, up (E, I, H); down (E, H, I). `acts` names the type
    the activations go through before gate/up and before down (the weights' VEC_DOT types, as the
    operator's kernels need them); None: no quantization.
    """
    plain = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    q_in, q_mid = (QUANTIZE[a] if a else plain for a in (acts or (None, None)))
    out = np.zeros((x.shape[0], down.shape[1]), dtype=np.float64)
    for t in range(x.shape[0]):
        xt = q_in(x[t]).astype(np.float64)
        for j in range(expert_ids.shape[1]):
            e = int(expert_ids[t, j])
            h = silu(gate[e].astype(np.float64) @ xt) * (up[e].astype(np.float64) @ xt)
            out[t] += float(routing[t, j]) * (down[e].astype(np.float64) @ q_mid(h.astype(np.float32)).astype(np.float64))
    return out


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def token_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Relative L2 error of each token's output (rows of (T, H) arrays)."""
    diff = np.linalg.norm(np.asarray(got, np.float64) - want, axis=1)
    return diff / np.linalg.norm(want, axis=1)


def verdict(got: np.ndarray, errors: np.ndarray, control_errors) -> bool:
    """A case passes when the output is finite, every token is within TOL of the reference, and the
    reference of every deliberately wrong kernel is off by more than 5 x TOL even for its best token
    (so the tolerance could not hide such a kernel)."""
    return bool(np.isfinite(got).all()) and float(np.max(errors)) < TOL and all(c > 5 * TOL for c in control_errors)


# ---------------------------------------------------------------- the operator


class Layer:
    """Random expert weights of the given types, their dequantized values and the MOE built on them."""

    def __init__(self, types: tuple[str, str, str], rng: np.random.Generator):
        self.types = types
        shapes = ((INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER))
        self.blocks, self.dense = [], []
        for qtype, (rows, cols) in zip(types, shapes):
            scale = weight_scale(qtype, cols, rng) if qtype != "IQ1_M" else 1.0
            b = np.ascontiguousarray(random_blocks(qtype, EXPERTS * rows, cols, rng, scale))
            self.blocks.append(b)
            self.dense.append(None if qtype == "IQ1_M" else dequantize(qtype, b).reshape(EXPERTS, rows, cols))
        if VEC_DOT[types[0]] != VEC_DOT[types[1]]:
            raise ValueError("the reference quantizes gate's and up's input once: give them one activation type")
        self.acts = (VEC_DOT[types[0]], VEC_DOT[types[2]])

    def build(self, cpuinfer_ext, hidden_type: str = "BF16"):
        g, u, d = (GGML[t] for t in self.types)
        config = cpuinfer_ext.moe.MOEConfig(
            EXPERTS, ROUTED, HIDDEN, INTER, STRIDE, GROUP_MIN, GROUP_MAX,
            self.blocks[0].ctypes.data, self.blocks[1].ctypes.data, self.blocks[2].ctypes.data,
            g, u, d, GGML[hidden_type],
        )
        return cpuinfer_ext.moe.MOE(config)


def encode(x: np.ndarray, hidden_type: str) -> np.ndarray:
    """float32 hidden states in the operator's hidden type (BF16 as uint16 bits, or F32)."""
    return to_bf16(x) if hidden_type == "BF16" else np.ascontiguousarray(x, dtype=np.float32)


def decode(h: np.ndarray, hidden_type: str) -> np.ndarray:
    return from_bf16(h) if hidden_type == "BF16" else h


def run(moe, cpu, x_enc, expert_ids, routing, hidden_type: str) -> np.ndarray:
    out = np.zeros_like(x_enc)
    ids = np.ascontiguousarray(expert_ids, dtype=np.int64)
    w = np.ascontiguousarray(routing, dtype=np.float32)
    cpu.submit(moe.forward(x_enc.shape[0], ROUTED, ids.ctypes.data, w.ctypes.data, x_enc.ctypes.data, out.ctypes.data))
    cpu.sync()
    return decode(out, hidden_type)


def inputs(tokens: int, rng: np.random.Generator, hidden_type: str):
    x_enc = encode(rng.standard_normal((tokens, HIDDEN)).astype(np.float32), hidden_type)
    ids = np.stack([rng.permutation(EXPERTS)[:ROUTED] for _ in range(tokens)])
    routing = rng.uniform(0.1, 1.0, size=(tokens, ROUTED)).astype(np.float32)
    return x_enc, ids, routing


def refused(cpuinfer_ext, layer) -> str | None:
    """The ValueError text of patch 0001 when the MOE constructor refuses the layer, else None."""
    try:
        layer.build(cpuinfer_ext)
    except ValueError as exc:
        return str(exc)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="CPUInfer threads (default 2)")
    ap.add_argument("--expect-iq1s", choices=("kernel", "refused"), default="kernel",
                    help="kernel: a build with the backport (0.2.1.post1 + 0003, or v0.2.3post2); refused: without it")
    ap.add_argument("--hidden-type", choices=("BF16", "F32"), default="BF16",
                    help="hidden states' type: BF16 as KTransformers passes them, or F32 (no output rounding)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    try:
        import torch  # noqa: F401  (first, see the module docstring)
    except ImportError:
        pass
    import cpuinfer_ext

    rng = np.random.default_rng(args.seed)
    cpu = cpuinfer_ext.CPUInfer(args.threads)
    failures = []
    print(f"experts {EXPERTS}, routed {ROUTED}, hidden {HIDDEN}, intermediate {INTER}, stride {STRIDE}, "
          f"threads {args.threads}, hidden type {args.hidden_type}; tolerance {TOL} per token (Q8_K/Q8_0 reference)")

    cases = [("IQ1_S", "IQ1_S", "IQ2_XXS"), ("IQ2_XXS", "IQ2_XXS", "IQ1_S")] + [(t, t, t) for t in CONTROLS]
    for types in cases:
        name = "/".join(types)
        layer = Layer(types, rng)
        needs_backport = any(t in ("IQ1_S", "IQ2_XXS") for t in types)
        if needs_backport and args.expect_iq1s == "refused":
            msg = refused(cpuinfer_ext, layer)
            ok = msg is not None and UNSUPPORTED in msg and types[0].lower() in msg
            print(f"{name}: {'refused as expected' if ok else 'NOT refused'}: {msg}")
            failures += [] if ok else [name]
            continue
        msg = refused(cpuinfer_ext, layer)
        if msg is not None:
            print(f"{name}: refused, but this build should have the kernels: {msg}")
            failures.append(name)
            continue
        moe = layer.build(cpuinfer_ext, args.hidden_type)
        for tokens in TOKENS:
            x_enc, ids, routing = inputs(tokens, rng, args.hidden_type)
            x = decode(x_enc, args.hidden_type)
            got = run(moe, cpu, x_enc, ids, routing, args.hidden_type)
            # the reference rounded to the hidden type, as the operator rounds its output
            want = moe_reference(x, ids, routing, *layer.dense, acts=layer.acts)
            errs = token_errors(got, decode(encode(want.astype(np.float32), args.hidden_type), args.hidden_type))
            err_float = relative_error(got, moe_reference(x, ids, routing, *layer.dense, acts=None))
            controls = []
            for i, (qtype, proj) in enumerate(zip(types, ("gate", "up", "down"))):
                corrupt = {"IQ1_S": flip_iq1s_delta, "IQ2_XXS": flip_iq2xxs_sign_group}.get(qtype)
                if corrupt is None or proj == "up":  # up has gate's type: one control per type and side
                    continue
                dense = list(layer.dense)
                rows, cols = dense[i].shape[1:]
                dense[i] = dequantize(qtype, corrupt(layer.blocks[i])).reshape(EXPERTS, rows, cols)
                controls.append((f"{proj} {corrupt.__name__}", token_errors(got, moe_reference(x, ids, routing, *dense, acts=layer.acts)).min()))
            ok = verdict(got, errs, [c for _, c in controls])
            path = "forward_one" if tokens < GROUP_MIN else "forward_many"
            line = (f"{name}: {tokens:2d} token(s) ({path}): rel. error per token max {errs.max():.2e}, "
                    f"median {np.median(errs):.2e} ({'/'.join(layer.acts)} ref); all tokens {err_float:.2e} (float ref)")
            if controls:
                line += "; wrong kernels, least per token: " + ", ".join(f"{c} {v:.2e}" for c, v in controls)
            print(("ok   " if ok else "FAIL ") + line)
            failures += [] if ok else [f"{name} x{tokens}"]
        del moe

    msg = refused(cpuinfer_ext, Layer(("IQ1_M", "IQ1_M", "IQ1_M"), rng))
    ok = msg is not None and UNSUPPORTED in msg and "iq1_m" in msg
    print(f"IQ1_M experts: {'refused as expected' if ok else 'NOT refused'}: {msg}")
    failures += [] if ok else ["IQ1_M"]

    print("all cases as expected" if not failures else f"FAILED: {', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
