#!/usr/bin/env bash
# On the GPU machine: put a trimmed flashinfer (carried in .fi/, ignored by git) beside the machine's
# torch env and run tests/gpu/bench_mla_decode.py (flashinfer's MLA decode against KTransformers'
# Triton decode kernel, R1's shape). The machine has no network; .fi/ is made on the CPU machine:
#   fi-trim.tar.xz   flashinfer-python 0.7.4's wheel unpacked, without data/csrc's sub-folders and
#                    its other top-level .cu files (sources of kernels other than MLA's), and data/aot
#                    (328 MB unpacked, 20 MB as xz; the wheel is 101 MB, over the device tool's 64 MiB)
#   apache_tvm_ffi-*.whl  the one import-time need the machine's env lacks (cuda-bindings, jinja2,
#                    nvidia-ml-py, tabulate, einops, ninja are there; cutlass-dsl, cuda-tile, nccl4py,
#                    cudnn-frontend are imported only by other kernels' modules)
#   aot/NAME.so      optional: MLA modules compiled ahead on the CPU machine (nvcc 13.0, sm_90a);
#                    placed as flashinfer's AOT modules, else flashinfer JIT-compiles them here
#   ktops/           KTransformers' ktransformers/operators/{triton_attention,flashinfer_wrapper}.py
# Output: $OUT/bench.log (the device tool brings it back).
set -uo pipefail
cd "$(dirname "$0")/../.."
py=${KTD_GPU_PYTHON:-/opt/torch/.venv/bin/python3}
site=${FI_SITE:-/tmp/fisite}
log=${OUT:-/tmp}/bench.log
t0=$(date +%s)
if [ ! -d "$site/flashinfer" ]; then
  mkdir -p "$site"
  "$py" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .fi/fi-trim.tar.xz "$site" || exit 2
  "$py" -m pip install -q --no-index --no-deps --target "$site" .fi/apache_tvm_ffi-*.whl || exit 2
fi
for so in .fi/aot/*.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so" .so)
  mkdir -p "$site/flashinfer/data/aot/$name" && cp "$so" "$site/flashinfer/data/aot/$name/"
done
echo "flashinfer unpacked in $(( $(date +%s) - t0 )) s" | tee "$log"
export PYTHONPATH=$site FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/fiws} PYTHONUNBUFFERED=1
"$py" tests/gpu/bench_mla_decode.py --kt-ops .fi/ktops "$@" 2>&1 | tee -a "$log"
