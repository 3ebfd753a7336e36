#!/usr/bin/env bash
# The GPU check, on a fresh machine of the team's GPU kind (no network, no systemd, CUDA and torch
# preinstalled in /opt/torch/.venv, root): everything through the real CLI, local connection.
#   ktdeploy installed into the torch env from .gpucarry/wheels (tests/gpu/gather.sh made it)
#   -> a tiny DeepSeek-V3 model written on the spot -> ktdeploy provision (plan, base, python_env =
#   the machine's torch env, cuda/torch verified, KTransformers v0.2.3post2 built from the offline
#   archive (or 0.2.1.post1 from the PyPI sdist: KTD_GPU_KT=0.2.1.post1) with the patch series,
#   served under supervisord) -> status --deep -> chat -> a second
#   provision that must change nothing and skip the build -> an upgrade (a new server setting, gated
#   on status --deep), a rollback to the release before, and a removal (models and torch env kept).
# Long: run it detached and follow it with tests/gpu/poll.sh (the device tool's calls end at 10 min).
#   setsid bash tests/gpu/run.sh </dev/null >/dev/null 2>&1 &  bash tests/gpu/poll.sh
# Results: $KTD_GPU_STATE/out (summary.txt, run.log, status.json, ...); $KTD_GPU_STATE/done holds the exit code.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
state=${KTD_GPU_STATE:-/tmp/ktd-gpu}
py=${KTD_GPU_PYTHON:-/opt/torch/.venv/bin/python3}
carry=$repo/.gpucarry
experts=${KTD_GPU_EXPERTS:-iq1s}
# v0.2.3post2 from the offline archive, or 0.2.1.post1 from the PyPI sdist (the tutorial's patched route)
kt_version=${KTD_GPU_KT:-v0.2.3post2}
models=/srv/ktdeploy/models
# Debian packages the base role wants: the build tools this image has (cmake and ninja come from the
# torch env's pip); KTD_GPU_FORCE=1 goes past plan problems (a rehearsal on a host without a GPU).
base_packages=${KTD_GPU_BASE_PACKAGES:-gcc g++ git curl tmux libnuma-dev pkg-config ca-certificates python3-venv}
force=${KTD_GPU_FORCE:+--force}
out=$state/out
rm -rf "$state"; mkdir -p "$out" "$state/inventory"
exec >"$out/run.log" 2>&1
summary=$out/summary.txt
t0=$(date +%s)
note() { printf '%s  %5ss  %s\n' "$(date -u +%T)" "$(( $(date +%s) - t0 ))" "$*" | tee -a "$summary"; }
finish() { note "end: exit $1"; echo "$1" >"$state/done"; exit "$1"; }
step() {  # step NAME CMD...: run, time, log; the run stops at the first failing step
  local name=$1 s rc; shift
  note "start: $name"; s=$(date +%s)
  "$@"; rc=$?
  note "done:  $name (exit $rc, $(( $(date +%s) - s )) s)"
  [ "$rc" = 0 ] || finish "$rc"
}
check() {  # check NAME CMD...: like step, but the run goes on when it fails (the summary says so)
  local name=$1 s rc; shift
  note "start: $name"; s=$(date +%s)
  "$@"; rc=$?
  note "done:  $name (exit $rc, $(( $(date +%s) - s )) s)"
  [ "$rc" = 0 ] || failed_checks="$failed_checks $name;"
}
failed_checks=""
trap 'note "killed"; echo 143 >"$state/done"' TERM

[ -d "$carry/wheels" ] || { note "no $carry: run tests/gpu/gather.sh on a machine with network first"; finish 2; }
note "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)" GiB"}' /proc/meminfo)"
note "python: $py ($($py -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__)'))"

install_ktdeploy() {
  grep -vE '^\s*(#|$)' tests/gpu/wheels.txt | sed -n '/^ansible-core/,/^trove-classifiers/p' >"$state/ktdeploy-reqs.txt"
  "$py" -m pip install -q --no-index --find-links "$carry/wheels" -r "$state/ktdeploy-reqs.txt" &&
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation "$repo"
}
step "install ktdeploy into the torch env (offline)" install_ktdeploy
kt=$(dirname "$py")/ktdeploy

variant=tiny-dsv3-$experts
config_dir=$models/$variant/config
gguf_dir=$models/$variant/gguf
step "write the tiny DeepSeek-V3 model ($variant)" "$py" -m ktdeploy.lab.tiny_dsv3 "$models/$variant" --experts "$experts"

tarball_sha=$(awk '/ktransformers-0.2.3post2-offline.tar.gz/ {print $1}' "$carry/SHA256SUMS" 2>/dev/null)
cat >"$state/inventory/hosts.yml" <<YAML
# Written by tests/gpu/run.sh: this machine, converged through a local connection.
all:
  children:
    ktdeploy:
      hosts:
        gpu0:
          ansible_connection: local
          ansible_python_interpreter: $py
          # root, and no sudo on this image: become other users through su
          ansible_become_method: su
          ansible_become_flags: -s /bin/sh
      vars:
        base_packages: [$(echo $base_packages | sed 's/ /, /g')]
        python_env_backend: existing
        python_env_path: $(dirname "$(dirname "$py")")
        python_env_python: $py
        python_env_python_version: "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        python_env_pip_no_index: true
        python_env_pip_find_links: ["$carry/wheels"]
        cuda_install: false
$(if [ "$kt_version" = 0.2.1.post1 ]; then
  printf '        ktransformers_source: sdist\n        ktransformers_sdist_path: %s\n' "$carry/ktransformers-0.2.1.post1.tar.gz"
else
  printf '        ktransformers_source: tarball\n        ktransformers_tarball: %s\n        ktransformers_tarball_sha256: %s\n' \
    "$carry/ktransformers-0.2.3post2-offline.tar.gz" "$tarball_sha"
fi)
        plan_kt_version: $kt_version
        plan_model_variant: $variant
        model_download_enabled: false
        serve_supervisor_from: pip
        serve_webui_enabled: false
        serve_model_name: DeepSeek-V3-tiny
        serve_ktransformers_model_path: $config_dir
        serve_ktransformers_gguf_path: $gguf_dir
        # the legacy server ignores the request's max_tokens and stops at this (or EOS)
        serve_ktransformers_max_new_tokens: 64
        serve_start_timeout: 900
YAML
cp "$state/inventory/hosts.yml" "$out/"
"$py" -c "import ktdeploy.attention_route as a; exec(a.PROBE)" >"$out/python-env.json"

step "preflight --deep" "$kt" preflight -i "$state/inventory" gpu0 --deep --model "$variant" --kt-version "$kt_version" $force
step "provision (first converge: build and serve)" "$kt" provision -i "$state/inventory" --plain $force
cp /srv/ktdeploy/build/ktransformers-*.log "$out/build.log" 2>/dev/null
note "build: $(grep -h 'ktdeploy build' "$out/build.log" | tr '\n' ' ')"
# NINJA_STATUS puts the elapsed seconds of each ninja (CMake's cpuinfer_ext, torch's KTransformersOps) on its steps
note "last step of each ninja: $(grep -oE '\[([0-9]+)/\1 [0-9.]+s\] .{0,60}' "$out/build.log" | tr '\n' ' ')"
check "cpuinfer_ext's LTO code generation ran in parallel (no serial LTRANS warning)" \
  bash -c "! grep -h 'using serial compilation of' '$out/build.log'"
if [ -f tests/gpu/moe_quant_check.py ]; then
  check "CPU MoE kernels of this build against numpy (IQ1_S, IQ2_XXS, Q4_K; IQ1_M refused)" \
    "$py" tests/gpu/moe_quant_check.py --threads 8
fi

step "status --deep" bash -c "'$kt' status -i '$state/inventory' --deep --json > '$out/status.json'"
step "chat" bash -c "'$kt' chat gpu0 'Why is the sky blue? Explain briefly.' -i '$state/inventory' --json > '$out/chat.json'"
note "chat: $(head -c 400 "$out/chat.json")"

restart_ready() {  # server start-up: restart the program and time until /v1/models lists the model
  local s; s=$(date +%s.%N)
  supervisorctl -c /etc/supervisor/supervisord.conf restart ktdeploy-api >/dev/null || return 1
  /usr/local/libexec/ktdeploy/ktdeploy-svc wait-ready http://127.0.0.1:10002/v1/models --timeout 600 --model DeepSeek-V3-tiny || return 1
  note "server start-up (restart to model listed): $(python3 -c "import time; print(round(time.time() - $s, 1))") s"
}
step "server start-up" restart_ready
step "status --deep after the restart" bash -c "'$kt' status -i '$state/inventory' --deep --json > '$out/status2.json'"

step "provision again (must change nothing, build skipped by its stamp)" "$kt" provision -i "$state/inventory" --plain

# Releases (opt-in, KTD_GPU_LIFECYCLE=1; passed on the H200 on 2026-12-02): the build's wheel is kept in its stamp's directory; a new
# server setting rolled out through `ktdeploy upgrade` (gated on status --deep), then rolled back.
if [ "${KTD_GPU_LIFECYCLE:-0}" = 1 ]; then
  note "kept wheel: $(ls /srv/ktdeploy/build/wheels/*/ktransformers-*.whl 2>&1 | tr '\n' ' ')"
  step "upgrade: a new server setting (max_new_tokens 48), gated on status --deep" \
    "$kt" upgrade -i "$state/inventory" --plain -e serve_ktransformers_max_new_tokens=48
  step "the new release runs" grep -q -- '--max_new_tokens 48' /etc/supervisor/conf.d/ktdeploy-api.conf
  step "rollback to the release before, gated on status --deep" "$kt" rollback -i "$state/inventory" gpu0 --plain
  step "the release before runs again" grep -q -- '--max_new_tokens 64' /etc/supervisor/conf.d/ktdeploy-api.conf
  step "status --deep after the rollback" bash -c "'$kt' status -i '$state/inventory' --deep --json > '$out/status3.json'"
  step "rollback again (must change nothing)" "$kt" rollback -i "$state/inventory" gpu0 --plain
  cp /var/log/ktdeploy/ktdeploy-api.log "$out/api.log" 2>/dev/null
  step "remove (the models and the machine's torch env stay)" "$kt" remove -i "$state/inventory" gpu0 --yes --plain
  step "status: clean, naming what was kept" bash -c "'$kt' status -i '$state/inventory' gpu0 --json > '$out/status4.json' &&
    grep -q 'clean: ktdeploy was removed; kept: models' '$out/status4.json' && grep -q \"existing backend\" '$out/status4.json'"
  step "the torch env still imports torch" "$py" -c 'import torch'
  step "remove again (must change nothing)" bash -c "'$kt' remove -i '$state/inventory' gpu0 --yes --plain | tee '$out/remove2.txt' &&
    grep -Eq '^ *gpu0 +[0-9]+ +0 +0 +0 ' '$out/remove2.txt'"
fi
cp /var/log/ktdeploy/ktdeploy-api.log "$out/api.log" 2>/dev/null
[ -z "$failed_checks" ] || { note "failed checks:$failed_checks"; finish 1; }
finish 0
