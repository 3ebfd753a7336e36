#!/usr/bin/env bash
# On the CPU machine (with network): gather what the GPU machine's run needs and cannot fetch itself
# into .gpucarry/ (ignored by git; the device tool carries it): the wheels in tests/gpu/wheels.txt for
# the GPU machine's Python (3.12, manylinux x86_64) and the KTransformers offline source archive.
# Usage: bash tests/gpu/gather.sh [SHARED_DIR]   (default: ../shared beside the checkout)
# KTD_CARRY_DIR (default .gpucarry) and KTD_CARRY_PYTHON (default 3.12, the GPU machine's) choose
# where to and for which Python (the lab test rehearses the run on Debian 12's 3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${1:-../shared}
carry=${KTD_CARRY_DIR:-.gpucarry}
pyver=${KTD_CARRY_PYTHON:-3.12}
abi=cp${pyver/./}
mkdir -p "$carry/wheels"

archive=ktransformers-0.2.3post2-offline.tar.gz
src="$shared/ktransformers-src"
if [ "${KTD_CARRY_ARCHIVE:-yes}" = skip ]; then
  echo "gather.sh: KTD_CARRY_ARCHIVE=skip: no KTransformers archive (a run without it stops before the build)" >&2
else
  [ -f "$src/$archive" ] || { echo "gather.sh: $src/$archive not found; name the shared folder: bash tests/gpu/gather.sh DIR" >&2; exit 2; }
  (cd "$src" && sha256sum -c --ignore-missing SHA256SUMS) >&2
  cp -f "$src/$archive" "$src/SHA256SUMS" "$carry/"
fi

mapfile -t wanted < <(grep -vE '^\s*(#|$)' tests/gpu/wheels.txt)
binary=() ; sdist=()
for req in "${wanted[@]}"; do
  case "$req" in cpufeature==*) sdist+=("$req") ;; *) binary+=("$req") ;; esac
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/wheels" "${binary[@]}"
python3 -m pip download -q --no-deps --no-binary=:all: -d "$carry/wheels" "${sdist[@]}"
# cpufeature's sdist is built there by pip with build isolation, which wants setuptools and wheel
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" -d "$carry/wheels" "setuptools<82" "wheel<0.49"
du -sh "$carry" >&2
