#!/usr/bin/env bash
# Time a source build of flash-attn for the machine's torch (the `torch_flash_attn: source` route),
# on the GPU machine: the sdist that tests/gpu/gather.sh put in .gpucarry/, the machine's torch env,
# only the GPU's own architecture (FLASH_ATTN_CUDA_ARCHS, default 90 for the H200), and the job count
# flash-attn's setup.py picks for itself (min(cores / 2, available GiB / 9)) unless MAX_JOBS is set.
#   start:  setsid bash tests/gpu/flash_attn_build.sh start </dev/null >/dev/null 2>&1 &
#   follow: bash tests/gpu/flash_attn_build.sh poll [LIMIT]   (returns when the build ends, or at LIMIT s)
# The record ($KTD_FA_STATE/out, copied to $OUT by poll): build.log, objects.txt (each object file's
# finish time, seconds after the start), summary.txt. A build cut short still says how many of the
# objects were done and when, which is what the estimate of a whole build rests on.
set -uo pipefail
cd "$(dirname "$0")/../.."
state=${KTD_FA_STATE:-/tmp/ktd-fa}
py=${KTD_GPU_PYTHON:-/opt/torch/.venv/bin/python3}
out=$state/out

objects() {  # the object files done so far, one "SECONDS NAME" line each, oldest first
  local t0; t0=$(cat "$state/t0")
  find "$state/src" -path '*/build/temp*' -name '*.o' -printf '%T@ %f\n' 2>/dev/null |
    awk -v t0="$t0" '{printf "%d %s\n", $1 - t0, $2}' | sort -n
}

report() {
  local t0 n total; t0=$(cat "$state/t0")
  objects >"$out/objects.txt"
  n=$(wc -l <"$out/objects.txt"); total=$(cat "$state/total")
  echo "elapsed $(( $(date +%s) - t0 )) s: $n of $total objects compiled (MAX_JOBS $(cat "$state/jobs"), archs $(cat "$state/archs"))"
}

case "${1:-}" in
start)
  rm -rf "$state"; mkdir -p "$out" "$state/src"
  exec >"$out/build.log" 2>&1
  sdist=$(ls .gpucarry/flash_attn-*.tar.gz 2>/dev/null | head -n1)
  [ -n "$sdist" ] || { echo "no .gpucarry/flash_attn-*.tar.gz: run tests/gpu/gather.sh first"; echo 2 >"$state/done"; exit 2; }
  tar -xzf "$sdist" -C "$state/src"
  src=$(echo "$state"/src/flash_attn-*)
  archs=${FLASH_ATTN_CUDA_ARCHS:-90}
  jobs=${MAX_JOBS:-$(awk -v c="$(nproc)" '/MemAvailable/ {m = int($2 / 1048576 / 9); c = int(c / 2); j = (m < c ? m : c); print (j < 1 ? 1 : j)}' /proc/meminfo)}
  echo "$archs" >"$state/archs"; echo "$jobs" >"$state/jobs"
  # the CUDA sources of the flash_attn_2_cuda extension, each compiled once, plus its C++ API file
  grep -oE '"csrc/flash_attn/(src/[^"]+\.cu|flash_api\.cpp)"' "$src/setup.py" | sort -u | wc -l >"$state/total"
  date +%s >"$state/t0"
  echo "flash-attn $(basename "$sdist"), torch $("$py" -c 'import torch; print(torch.__version__)'), nvcc $(nvcc --version | tail -n1)"
  echo "FLASH_ATTN_CUDA_ARCHS=$archs MAX_JOBS=$jobs NVCC_THREADS=${NVCC_THREADS:-4}, $(nproc) cores, $(cat "$state/total") objects"
  cd "$src" || exit 2
  PATH=$(dirname "$py"):$PATH CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS=$archs MAX_JOBS=$jobs \
    "$py" setup.py bdist_wheel --dist-dir "$state/dist"
  rc=$?
  echo "build exit $rc after $(( $(date +%s) - $(cat "$state/t0") )) s; wheel: $(ls "$state/dist" 2>/dev/null)"
  echo "$rc" >"$state/done"
  ;;
poll)
  limit=${2:-560}; end=$(( $(date +%s) + limit ))
  while [ ! -f "$state/done" ] && [ "$(date +%s)" -lt "$end" ]; do
    [ -f "$state/t0" ] && report
    sleep 20
  done
  report | tee -a "$out/summary.txt"
  [ -n "${OUT:-}" ] && cp "$out"/* "$OUT/" 2>/dev/null
  if [ -f "$state/done" ]; then tail -n 20 "$out/build.log"; exit "$(cat "$state/done")"; fi
  echo "--- still building; last lines of build.log:"; tail -n 5 "$out/build.log"; exit 75
  ;;
*) echo "usage: $0 start | poll [LIMIT]" >&2; exit 2 ;;
esac
