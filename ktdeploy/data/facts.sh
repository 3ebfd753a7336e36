# ktdeploy facts: the raw outputs a plan is made from, gathered in one round trip.
# Prints one line per fact: "KTDEPLOY-FACT <file> <exit status> <stdout base64> <stderr base64>"
# ("-" for empty). Optional facts print nothing when absent. Parsed by ktdeploy.facts.parse_stream.
# Reads only; needs no root. The caller sets model_dir, python_env (may be empty) and attention_probe first.
set -u
tmp=$(mktemp -d) || exit 70
trap 'rm -rf "$tmp"' EXIT

b64() { local s; s=$(base64 -w0 <"$1"); printf '%s' "${s:--}"; }

fact() {
    local name=$1 rc
    shift
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    printf 'KTDEPLOY-FACT %s %d %s %s\n' "$name" "$rc" "$(b64 "$tmp/out")" "$(head -c 2000 "$tmp/err" | b64 /dev/stdin)"
}

nearest_existing() {
    local d=$1
    while [ ! -e "$d" ]; do d=$(dirname "$d"); done
    printf '%s' "$d"
}

cgroup_cpu_max() {
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        cat /sys/fs/cgroup/cpu.max
    else  # cgroup v1, written in the v2 format
        local q p
        q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) && p=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) || return 1
        if [ "$q" -lt 0 ]; then echo "max $p"; else echo "$q $p"; fi
    fi
}

cgroup_memory_max() {
    if [ -r /sys/fs/cgroup/memory.max ]; then
        cat /sys/fs/cgroup/memory.max
    else
        cat /sys/fs/cgroup/memory/memory.limit_in_bytes
    fi
}

fact lscpu.txt env LC_ALL=C lscpu
fact meminfo.txt cat /proc/meminfo
if [ -r /etc/os-release ]; then fact os-release.txt cat /etc/os-release; else fact os-release.txt cat /usr/lib/os-release; fi
fact df.txt df -B1 --output=avail,target "$(nearest_existing "$model_dir")"
if command -v nvidia-smi >/dev/null 2>&1; then
    fact nvidia-smi.csv nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv,noheader,nounits
fi
if [ -r /sys/fs/cgroup/cpu.max ] || [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then fact cpu.max cgroup_cpu_max; fi
if [ -r /sys/fs/cgroup/memory.max ] || [ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then fact memory.max cgroup_memory_max; fi
if [ -d /run/systemd/system ]; then fact systemd echo yes; fi
if [ -n "${python_env:-}" ] && [ -x "$python_env" ]; then fact python-env.json "$python_env" -c "$attention_probe"; fi
if [ -d "$model_dir" ]; then fact model-files.txt find "$model_dir" -maxdepth 4 -type f -name '*.gguf*' -printf '%s %P\n'; fi
exit 0
