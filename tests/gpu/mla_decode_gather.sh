#!/usr/bin/env bash
# On the CPU machine (with network): make .fi/ (ignored by git) for tests/gpu/mla_decode.sh on the GPU
# machine: flashinfer-python 0.7.4 trimmed to fit the device tool's 64 MiB per call, apache-tvm-ffi,
# KTransformers v0.2.3post2's two operator files from the offline archive, and (KTD_FI_AOT=yes, where
# nvcc 13 is installed) flashinfer's two MLA modules compiled ahead for sm_90a.
# Usage: bash tests/gpu/mla_decode_gather.sh [SHARED_DIR]   (default: ../shared beside the checkout)
# Add /.fi/ to .git/info/exclude first. xz on 2 cores takes about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${1:-../shared}
fi_dir=$PWD/.fi
py=${KTD_FI_PYTHON:-python3}   # for KTD_FI_AOT=yes: an interpreter with torch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$fi_dir/ktops" "$fi_dir/aot"
pip_flags=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q "${pip_flags[@]}" -d "$work/whl" flashinfer-python==0.7.4 apache-tvm-ffi==0.1.15.post2
cp "$work"/whl/apache_tvm_ffi-*.whl "$fi_dir/"

# flashinfer: the Python package whole (its import pulls most modules), the headers its JIT build
# includes (data/include, cutlass, cccl, spdlog), and of data/csrc only the top-level files without
# other kernels' .cu sources (the MLA modules need batch_mla_*.cu, the jinja config and the headers)
mkdir -p "$work/pkg"
(cd "$work/pkg" && python3 -m zipfile -e "$work"/whl/flashinfer_python-0.7.4-*.whl .)
csrc=$work/pkg/flashinfer/data/csrc
find "$csrc" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
find "$csrc" -maxdepth 1 -name '*.cu' ! -name 'batch_mla*' -delete
rm -rf "$work/pkg/flashinfer/data/aot"
(cd "$work/pkg" && tar -cf - flashinfer flashinfer_python-0.7.4.dist-info | xz -T0 -6 >"$fi_dir/fi-trim.tar.xz")

tar -xzf "$shared/ktransformers-src/ktransformers-0.2.3post2-offline.tar.gz" -C "$work" \
  --wildcards '*/operators/triton_attention.py' '*/operators/flashinfer_wrapper.py'
cp "$work"/ktransformers-0.2.3post2/ktransformers/operators/{triton_attention,flashinfer_wrapper}.py "$fi_dir/ktops/"

if [ "${KTD_FI_AOT:-no}" = yes ]; then
  # Needs torch (any build: only its dtypes are used), jinja2, pynvml, filelock, ... in python3, and
  # nvcc 13 in /usr/local/cuda. The link wants -lcuda, which a machine without a driver lacks: a stub
  # with libcuda.so.1's soname stands in (the module links libcudart only; --as-needed drops it).
  mkdir -p "$work/stub" "$work/site"
  echo 'void ktd_stub(void) {}' >"$work/stub/s.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$work/stub/libcuda.so" "$work/stub/s.c"
  cp -r "$work/pkg/flashinfer" "$work/site/"
  "$py" -m pip install -q --no-deps --target "$work/site" apache-tvm-ffi==0.1.15.post2
  FLASHINFER_EXTRA_LDFLAGS="-L/usr/local/cuda/lib64 -L/usr/local/cuda/lib -L$work/stub" FLASHINFER_CUDA_ARCH_LIST=9.0a \
  FLASHINFER_WORKSPACE_BASE=$work/ws PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH} "$py" - "$fi_dir/aot" <<'PY'
import shutil, sys, time, torch
from flashinfer.jit.attention.modules import gen_batch_mla_module
for backend in ("fa3", "fa2"):
    t = time.time()
    spec = gen_batch_mla_module(backend, torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.int32, 512, 64, False)
    spec.build()
    shutil.copy(spec.jit_library_path, sys.argv[1])
    print(f"{backend}: {spec.name}.so in {time.time() - t:.0f} s")
PY
fi
du -sh "$fi_dir" >&2
