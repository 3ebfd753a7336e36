"""Prefill attention options for KTransformers 0.2.x where no flash-attn wheel matches torch: timed on
the GPU for DeepSeek-R1's MLA prefill shapes (128 heads, q/k head dim 192, v padded to 192, causal).

    python3 tests/gpu/bench_attention.py [--kt-src DIR]   # DIR: an unpacked KTransformers source tree

Options measured: ktdeploy's SDPA flash_attn_func (roles/torch/files/flash_attn_sdpa), plain
matmul + softmax attention (what an eager fallback costs), KTransformers' own Triton prefill kernel
(`context_attention_fwd`, with q pre-scaled since it fixes the scale at 1/sqrt(d)) when --kt-src
names a tree, and a real flash-attn when one is installed. Prints ms per call and the largest
difference to the plain attention computed in float32.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HEADS, DIM, V_DIM = 128, 192, 128


def load_shim():
    path = ROOT / "roles" / "torch" / "files" / "flash_attn_sdpa" / "flash_attn" / "__init__.py"
    spec = importlib.util.spec_from_file_location("ktdeploy_flash_attn_sdpa", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.flash_attn_func


def plain(q, k, v, scale):
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    n = q.shape[1]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.float()).to(q.dtype)


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        out = fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kt-src", help="unpacked KTransformers tree (for its Triton prefill kernel)")
    ap.add_argument("--lengths", default="512,2048,8192")
    args = ap.parse_args()
    shim = load_shim()
    triton_fwd = None
    if args.kt_src:
        path = Path(args.kt_src) / "ktransformers" / "operators" / "triton_attention_prefill.py"
        spec = importlib.util.spec_from_file_location("kt_triton_prefill", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        triton_fwd = mod.context_attention_fwd
    try:
        from flash_attn import flash_attn_func as real_fa  # noqa: F401
        import flash_attn
        real = None if "sdpa" in getattr(flash_attn, "__version__", "") else real_fa
    except ImportError:
        real = None
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; heads {HEADS}, head dim {DIM}, v {V_DIM} padded to {DIM}, bf16, causal")
    scale = 1 / math.sqrt(DIM) * 1.4  # R1's yarn mscale makes it larger than 1/sqrt(d)
    for n in (int(x) for x in args.lengths.split(",")):
        g = torch.Generator(device="cuda").manual_seed(n)
        q, k = (torch.randn(1, n, HEADS, DIM, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        v = torch.nn.functional.pad(torch.randn(1, n, HEADS, V_DIM, device="cuda", dtype=torch.bfloat16, generator=g), [0, DIM - V_DIM])
        rows = {}
        if n <= 4096:
            rows["plain matmul+softmax (fp32)"] = timed(lambda: plain(q, k, v, scale), reps=5)
        rows["ktdeploy SDPA flash_attn_func"] = timed(lambda: shim(q, k, v, softmax_scale=scale, causal=True))
        if real is not None:
            rows["flash-attn (installed)"] = timed(lambda: real(q, k, v, softmax_scale=scale, causal=True))
        if triton_fwd is not None:
            q2, k2, v2 = (x.reshape(n, HEADS, DIM).contiguous() for x in (q * (scale * math.sqrt(DIM)), k, v))
            o = torch.empty_like(q2)
            start = torch.tensor([0], device="cuda", dtype=torch.int32)
            lens = torch.tensor([n], device="cuda", dtype=torch.int32)

            def tri():
                triton_fwd(q2, k2, v2, o, start, lens, n, is_causal=True)
                return o.view(1, n, HEADS, DIM)

            rows["KTransformers Triton context_attention_fwd"] = timed(tri)
        ref = rows.get("plain matmul+softmax (fp32)", (None, None))[1]
        flops = 2 * 2 * n * n * HEADS * DIM / 2  # causal: half the QK^T and PV work
        for name, (ms, out) in rows.items():
            diff = (out[..., :V_DIM].float() - ref[..., :V_DIM].float()).abs().max().item() if ref is not None else float("nan")
            print(f"  seq {n:5d}  {name:42s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s  max |diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
