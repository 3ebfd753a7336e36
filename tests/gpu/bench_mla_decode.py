"""MLA decode attention for KTransformers 0.2.x on the GPU: flashinfer's absorb route against
KTransformers' own Triton decode kernel, timed for DeepSeek-R1's decode shape (128 heads,
kv_lora_rank 512, rope dim 64, bf16, batch 1, one query token, paged KV cache).

    python3 tests/gpu/bench_mla_decode.py --kt-ops DIR [--lengths 1024,4096,16384] [--page-size 64]

DIR holds KTransformers' `triton_attention.py` and `flashinfer_wrapper.py` (its
`ktransformers/operators/` folder, from a build tree or the source archive). Both are loaded as
files, with a stand-in for `ktransformers.util.vendors`, so the compiled KTransformers need not be
installed. Rows:

- `torch reference (fp32)`: the absorbed attention written out (q_nope·ckv + q_pe·kpe, softmax,
  ·ckv) in float32; every other row is compared with it;
- `KTransformers Triton decode_attention_fwd_grouped`: called as KTransformers' attention.py calls
  it (4 KV splits, page table, the concatenated ckv+kpe buffer); `--triton-splits 4,16,32` adds
  rows with more KV splits (a what-if: KTransformers fixes 4);
- `flashinfer via KTransformers' MLAWrapper`: KTransformers' own wrapper class (flashinfer's
  `BatchMLAPagedAttentionWrapper`, backend left to flashinfer's "auto"), planned and run with the
  arguments attention.py passes for q_len 1; the backend flashinfer picked is printed;
- `flashinfer backend=X`: the same flashinfer wrapper with a backend named (`--backends`).

Times are the GPU time per call from CUDA events over a CUDA graph of `--graph-calls` calls (what a
decode step pays once the server captures its graphs; launch overhead left out), and the eager time
per call from the host (launches included). flashinfer JIT-compiles its kernels with nvcc on first
use (FLASHINFER_WORKSPACE_BASE, or ~/.cache/flashinfer); that time is printed once.
"""

from __future__ import annotations

import argparse
import enum
import importlib.util
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

HEADS, CKV, KPE = 128, 512, 64
# R1: softmax_scale = 1/sqrt(192) * mscale^2 with yarn's mscale (about 1.4^2 at factor 40); the exact
# value does not change the work
SM_SCALE = 192 ** -0.5 * 1.4


def stub_ktransformers() -> None:
    """Just enough of the ktransformers package for the two operator files to import."""
    if "ktransformers.util.vendors" in sys.modules:
        return

    class GPUVendor(enum.Enum):
        NVIDIA = 1
        AMD = 2
        MooreThreads = 3
        MetaX = 4
        MUSA = 5
        Unknown = 6

    vendors = types.ModuleType("ktransformers.util.vendors")
    vendors.GPUVendor = GPUVendor
    vendors.device_manager = types.SimpleNamespace(gpu_vendor=GPUVendor.NVIDIA)
    vendors.get_device = lambda *a, **k: "cuda"
    vendors.to_device = lambda x, *a, **k: x.to("cuda")
    for name in ("ktransformers", "ktransformers.util", "ktransformers.operators"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules["ktransformers.util.vendors"] = vendors


def load_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def reference(q_nope, q_pe, ckv, kpe, kv_len):
    """q_nope [1, H, 512], q_pe [1, H, 64]; ckv [pages, page, 512], kpe [pages, page, 64]."""
    c = ckv.reshape(-1, CKV)[:kv_len].float()
    p = kpe.reshape(-1, KPE)[:kv_len].float()
    s = (q_nope[0].float() @ c.T + q_pe[0].float() @ p.T) * SM_SCALE  # [H, kv]
    return (s.softmax(-1) @ c).unsqueeze(0)  # [1, H, 512]


def gpu_time(fn, graph_calls: int, reps: int = 5) -> float:
    """Median GPU ms per call over `reps` replays of a CUDA graph holding `graph_calls` calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(graph_calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / graph_calls)
    return statistics.median(times)


def eager_time(fn, reps: int = 200) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kt-ops", required=True, help="folder with KTransformers' triton_attention.py and flashinfer_wrapper.py")
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--page-size", type=int, default=64)
    ap.add_argument("--backends", default="fa3,fa2", help="flashinfer backends to name besides KTransformers' auto ('' for none)")
    ap.add_argument("--graph-calls", type=int, default=50)
    ap.add_argument("--triton-splits", default="4",
                    help="KV splits for the Triton kernel; KTransformers' attention.py fixes 4, more are a what-if")
    args = ap.parse_args()
    ops = Path(args.kt_ops)
    stub_ktransformers()
    tri_mod = load_file("ktransformers.operators.triton_attention", ops / "triton_attention.py")
    decode_grouped = tri_mod.decode_attention_fwd_grouped
    try:
        import flashinfer
        fi_version = flashinfer.__version__
    except Exception as exc:  # noqa: BLE001 - report whatever stops the import
        flashinfer, fi_version = None, f"not importable: {type(exc).__name__}: {exc}"
    kt_fi = load_file("ktransformers.operators.flashinfer_wrapper", ops / "flashinfer_wrapper.py") if flashinfer else None
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, flashinfer {fi_version}, {torch.cuda.get_device_name()}")
    print(f"R1 decode: heads {HEADS}, kv_lora_rank {CKV}, rope {KPE}, bf16, batch 1, q_len 1, page size {args.page_size}; "
          f"GPU us per call over a CUDA graph of {args.graph_calls} calls (median of 5), eager us per call from the host")
    page = args.page_size
    dev = "cuda"
    for kv_len in (int(x) for x in args.lengths.split(",")):
        pages = math.ceil(kv_len / page)
        g = torch.Generator(device=dev).manual_seed(kv_len)
        q_nope = torch.randn(1, HEADS, CKV, device=dev, dtype=torch.bfloat16, generator=g)
        q_pe = torch.randn(1, HEADS, KPE, device=dev, dtype=torch.bfloat16, generator=g)
        kv_buf = torch.randn(pages, page, CKV + KPE, device=dev, dtype=torch.bfloat16, generator=g)
        ckv, kpe = torch.split(kv_buf, [CKV, KPE], dim=-1)  # views, as KTransformers' cache hands them over
        ref = reference(q_nope, q_pe, ckv, kpe, kv_len)
        kv_bytes = kv_len * (CKV + KPE) * 2
        rows: dict = {}

        # KTransformers' Triton decode kernel, as attention.py calls it
        query = torch.cat([q_nope, q_pe], dim=-1)  # [1, H, 576]
        kv_with_pe = kv_buf.view(pages, page, 1, CKV + KPE)
        ckv4 = kv_with_pe[..., :CKV]
        page_table = torch.arange(pages, device=dev, dtype=torch.int32).view(1, pages)
        lens = torch.tensor([kv_len], device=dev, dtype=torch.int32)
        for splits in (int(x) for x in args.triton_splits.split(",")):
            out_tri = torch.zeros(1, HEADS, CKV, device=dev, dtype=torch.bfloat16)
            logits = torch.empty(1, HEADS, splits, CKV + 1, device=dev, dtype=torch.float32)

            def tri(out_tri=out_tri, logits=logits, splits=splits):
                decode_grouped(query, kv_with_pe, ckv4, out_tri, page_table, lens, logits, splits, SM_SCALE, page)
                return out_tri

            name = "KTransformers Triton decode_attention_fwd_grouped" + ("" if splits == 4 else f" ({splits} KV splits)")
            rows[name] = tri

        if kt_fi is not None:
            t = time.perf_counter()
            try:
                w = kt_fi.MLAWrapper(1, pages, use_cuda_graph=True, device=dev)
                w.plan(None, None, None, lens, HEADS, CKV, KPE, page, SM_SCALE, torch.bfloat16, torch.bfloat16)
                w.run(q_nope, q_pe, ckv, kpe)
                torch.cuda.synchronize()
                picked = getattr(w.wrapper, "_planned_backend_name", None) or "?"
                rows[f"flashinfer via KTransformers' MLAWrapper ({picked})"] = lambda w=w: w.run(q_nope, q_pe, ckv, kpe)
                print(f"  kv {kv_len}: KTransformers' MLAWrapper planned and ran in {time.perf_counter() - t:.1f} s (a JIT build included, if one ran), backend {picked}")
            except Exception as exc:  # noqa: BLE001
                print(f"  kv {kv_len}: KTransformers' MLAWrapper failed after {time.perf_counter() - t:.1f} s: {type(exc).__name__}: {str(exc)[:600]}")
            for backend in filter(None, args.backends.split(",")):
                t = time.perf_counter()
                try:
                    ws = torch.empty(128 * 1024 * 1024, dtype=torch.int8, device=dev)
                    fw = flashinfer.mla.BatchMLAPagedAttentionWrapper(ws, backend=backend)
                    fw.plan(torch.tensor([0, 1], dtype=torch.int32, device=dev),
                            torch.tensor([0, pages], dtype=torch.int32, device=dev),
                            torch.arange(pages, dtype=torch.int32, device=dev), lens,
                            HEADS, CKV, KPE, page, True, SM_SCALE, torch.bfloat16, torch.bfloat16)
                    fw.run(q_nope, q_pe, ckv, kpe)
                    torch.cuda.synchronize()
                    rows[f"flashinfer backend={backend}"] = lambda fw=fw: fw.run(q_nope, q_pe, ckv, kpe)
                    print(f"  kv {kv_len}: flashinfer backend={backend} planned and ran in {time.perf_counter() - t:.1f} s")
                except Exception as exc:  # noqa: BLE001
                    print(f"  kv {kv_len}: flashinfer backend={backend} failed after {time.perf_counter() - t:.1f} s: {type(exc).__name__}: {str(exc)[:600]}")

        rows["torch reference (fp32)"] = lambda: reference(q_nope, q_pe, ckv, kpe, kv_len)
        for name, fn in rows.items():
            try:
                out = fn()
                torch.cuda.synchronize()
                diff = (out.reshape(ref.shape).float() - ref).abs().max().item()
                eager = eager_time(fn)
                try:
                    gms = gpu_time(fn, args.graph_calls)
                    gtxt = f"{gms * 1e3:8.1f} us GPU  {kv_bytes / gms / 1e6:7.0f} GB/s"
                except Exception as exc:  # noqa: BLE001
                    gtxt = f"graph capture failed: {type(exc).__name__}: {str(exc)[:120]}"
                print(f"  kv {kv_len:6d}  {name:58s} {gtxt}  eager {eager * 1e3:8.1f} us  max |diff| {diff:.2e}")
            except Exception as exc:  # noqa: BLE001
                print(f"  kv {kv_len:6d}  {name:58s} failed: {type(exc).__name__}: {str(exc)[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
