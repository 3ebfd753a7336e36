#!/usr/bin/env bash
# Rehearse a provisioning run safely: boot a throwaway lab host and provision it (as root).
# The host stays up to look around (`ktdeploy lab ssh N`); `ktdeploy lab down N` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

out=$(ktdeploy lab up)
echo "$out"
n=$(sed -n 's/^lab\([0-9]\+\) is up.*/\1/p' <<<"$out")
inventory=$(ktdeploy lab inventory "$n")   # only this host, not other lab hosts that are up
ktdeploy provision -i "$inventory"
echo "demo: provisioned lab$n; look around with 'ktdeploy lab ssh $n', remove it with 'ktdeploy lab down $n'"
