"""The patched CPU MoE operator: a supported weight type builds and runs, IQ1_S is refused by name."""

import sys

import torch  # first: importing torch after cpuinfer_ext crashes (seen on the H200 with torch 2.11)

import cpuinfer_ext  # noqa: E402

GGML = {"F16": 1, "Q4_K": 12, "IQ1_S": 19}
TYPE_BYTES = {"F16": (2, 1), "Q4_K": (144, 256), "IQ1_S": (50, 256)}  # bytes per block, block size
EXPERTS, ROUTED, HIDDEN, INTER, STRIDE = 8, 2, 1024, 512, 32


def make(type_name):
    size, block = TYPE_BYTES[type_name]
    weights = [torch.zeros(EXPERTS * HIDDEN * INTER * size // block, dtype=torch.uint8) for _ in range(3)]
    t = GGML[type_name]
    config = cpuinfer_ext.moe.MOEConfig(
        EXPERTS, ROUTED, HIDDEN, INTER, STRIDE, 10, 1024,
        weights[0].data_ptr(), weights[1].data_ptr(), weights[2].data_ptr(), t, t, t, GGML["F16"],
    )
    return cpuinfer_ext.moe.MOE(config), weights


moe, keep = make("Q4_K")
cpu = cpuinfer_ext.CPUInfer(8)
ids = torch.randperm(EXPERTS)[:ROUTED].reshape(1, ROUTED).contiguous()
w = torch.rand(1, ROUTED, dtype=torch.float32)
x = torch.randn(1, HIDDEN, dtype=torch.float16)
y = torch.empty(1, HIDDEN, dtype=torch.float16)
cpu.submit(moe.forward(1, ROUTED, ids.data_ptr(), w.data_ptr(), x.data_ptr(), y.data_ptr()))
cpu.sync()
print(f"Q4_K experts: MOE built and forward ran, output all zero as the zero weights demand: {bool((y == 0).all())}")

try:
    make("IQ1_S")
except ValueError as exc:
    print(f"IQ1_S experts: ValueError: {exc}")
    sys.exit(0)
print("IQ1_S experts: no error (the patch is not in this build)")
sys.exit(1)
