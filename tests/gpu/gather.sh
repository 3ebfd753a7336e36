#!/usr/bin/env bash
# On the CPU machine (with network): gather what the GPU machine's run needs and cannot fetch itself
# into .gpucarry/ (ignored by git; the device tool carries it): the wheels in tests/gpu/wheels.txt for
# the GPU machine's Python (3.12, manylinux x86_64) and the KTransformers offline source archive.
# Usage: bash tests/gpu/gather.sh [SHARED_DIR]   (default: ../shared beside the checkout)
# KTD_CARRY_DIR (default .gpucarry) and KTD_CARRY_PYTHON (default 3.12, the GPU machine's) choose
# where to and for which Python (the lab test rehearses the run on Debian 12's 3.11);
# KTD_CARRY_ARCHIVE=skip and KTD_CARRY_SDIST=skip leave out the KTransformers sources; KTD_CARRY_FLASH_ATTN=yes
# adds flash-attn's sdist.
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

# sdists from the index pip is configured with, each checked against its known sha256 (pip download
# would run their setup.py, which needs a CUDA torch): KTransformers 0.2.1.post1 (the tutorial's route;
# KTD_GPU_KT=0.2.1.post1 in run.sh; KTD_CARRY_SDIST=skip leaves it out) and, with KTD_CARRY_FLASH_ATTN=yes,
# flash-attn 2.8.3 (tests/gpu/flash_attn_build.sh times its source build; 8 MB more: with the archive too
# the carry would pass the device tool's 64 MiB, so take KTD_CARRY_ARCHIVE=skip with it).
ktsdist=${KTD_CARRY_SDIST:-yes} flash=${KTD_CARRY_FLASH_ATTN:-no}
if [ "$ktsdist" != skip ] || [ "$flash" = yes ]; then
  python3 - "$carry" "$ktsdist" "$flash" <<'PY'
import hashlib, sys, urllib.request
from pathlib import Path
sys.path.insert(0, ".")
from pip._internal.configuration import Configuration
from pip._internal.models.index import PyPI
from ktdeploy import build
c = Configuration(isolated=False); c.load(); d = dict(c.items())
index = (d.get(":env:.index-url") or d.get("global.index-url") or PyPI.simple_url).rstrip("/")
wanted = {}
if sys.argv[2] != "skip":
    wanted[("ktransformers", "ktransformers-0.2.1.post1.tar.gz")] = build.KNOWN_SDIST_SHA256["0.2.1.post1"]
if sys.argv[3] == "yes":
    wanted[("flash-attn", "flash_attn-2.8.3.tar.gz")] = "1e71dd64a9e0280e0447b8a0c2541bad4bf6ac65bdeaa2f90e51a9e57de0370d"
for (project, name), want in wanted.items():
    page = f"{index}/{project}/"
    with urllib.request.urlopen(page, timeout=60) as r:
        url = build.sdist_link(r.read().decode(), page, name)["url"]
    data = urllib.request.urlopen(url, timeout=300).read()
    if hashlib.sha256(data).hexdigest() != want:
        sys.exit(f"gather.sh: {name} from the index is not the known sdist (sha256 {want})")
    (Path(sys.argv[1]) / name).write_bytes(data)
PY
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
