"""Host facts: raw command outputs (a facts directory, or the stream of data/facts.sh) parsed into data.

Pure parsing, no I/O beyond reading and writing a facts directory. The directory holds:

    lscpu.txt        LC_ALL=C lscpu (flat or indented layout)
    meminfo.txt      /proc/meminfo
    os-release.txt   /etc/os-release
    df.txt           df -B1 --output=avail,target <model dir or its nearest existing parent>
    nvidia-smi.csv   nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap
                     --format=csv,noheader,nounits         (optional: absent = no NVIDIA GPU)
    cpu.max          cgroup v2 cpu.max ("max 100000" or "<quota> <period>")      (optional)
    memory.max       cgroup v2 memory.max ("max" or bytes)                      (optional)
    systemd          present iff /run/systemd/system exists on the host         (optional)
    model-files.txt  "<bytes> <path>" of *.gguf* files under the model dir      (optional)
    python-env.json  torch, CUDA, Python, C++ ABI and flash-attn of the Python env KTransformers
                     will use (ktdeploy.attention_route.PROBE)        (optional: only when one exists)

The first eight are the files of the plan issue; `model-files.txt` is ktdeploy's addition so the disk
check counts only what is still to download. On cgroup v1 hosts the facts script writes the v1 limits
in the v2 format.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ktdeploy.errors import BadInput

REQUIRED = ("lscpu.txt", "meminfo.txt", "os-release.txt", "df.txt")
OPTIONAL = ("nvidia-smi.csv", "cpu.max", "memory.max", "systemd", "model-files.txt", "python-env.json")
FILES = REQUIRED + OPTIONAL

_SCRIPT = Path(__file__).parent / "data" / "facts.sh"
_FRAME = "KTDEPLOY-FACT"
_V1_UNLIMITED = 2**62  # cgroup v1 writes "no limit" as LONG_MAX rounded down to a page


@dataclass(frozen=True)
class Cpu:
    model: str
    vendor: str
    architecture: str
    logical_cpus: int
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    numa_nodes: int
    flags: frozenset[str]
    hypervisor: str | None = None

    @property
    def physical_cores(self) -> int:
        return self.sockets * self.cores_per_socket

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    driver: str
    compute_capability: str | None  # "8.9"; None when the driver cannot report it

    @property
    def cc_tuple(self) -> tuple[int, int] | None:
        if not self.compute_capability:
            return None
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class Facts:
    cpu: Cpu
    mem_total_bytes: int
    os: dict[str, str]
    disk_avail_bytes: int
    disk_mount: str
    gpus: tuple[Gpu, ...] = ()
    cpu_quota: float | None = None  # CPUs allowed by cgroup cpu.max, None = no limit
    memory_max_bytes: int | None = None  # cgroup memory.max, None = no limit
    systemd: bool = False
    model_files: dict[str, int] = field(default_factory=dict)  # path under the model dir -> bytes
    errors: dict[str, str] = field(default_factory=dict)  # optional facts whose command failed
    python_env: dict | None = None  # the env's torch etc. (attention_route.PROBE); None: no env yet


def facts_script(model_dir: str, python_env: str = "") -> str:
    """The batched facts script (bash) for a host whose models live in model_dir.

    python_env: the interpreter of the env KTransformers will run in; probed when it exists.
    """
    from ktdeploy.attention_route import PROBE

    head = f"model_dir={shlex.quote(model_dir)}\npython_env={shlex.quote(python_env or '')}\n"
    return head + f"attention_probe={shlex.quote(PROBE)}\n" + _SCRIPT.read_text(encoding="utf-8")


def parse_stream(stdout: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split the facts script's output into ({file: content}, {file: error of a failed command})."""
    raw: dict[str, str] = {}
    errors: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split(" ")
        if len(parts) != 5 or parts[0] != _FRAME or parts[1] not in FILES:
            continue
        _, name, rc, out, err = parts
        out_text, err_text = _unb64(out), _unb64(err)
        if rc == "0":
            raw[name] = out_text
        else:
            errors[name] = (err_text.strip() or out_text.strip() or f"exit status {rc}").splitlines()[0]
    missing = [f for f in REQUIRED if f not in raw]
    if missing:
        why = "; ".join(f"{f}: {errors[f]}" for f in missing if f in errors)
        raise BadInput(
            f"the facts script did not return {', '.join(missing)}" + (f" ({why})" if why else ""),
            hint="the host needs bash, coreutils (base64, df), util-linux (lscpu) and a readable /proc",
        )
    return raw, errors


def _unb64(field_: str) -> str:
    return "" if field_ == "-" else base64.b64decode(field_).decode("utf-8", "replace")


def load_dir(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_dir():
        raise BadInput(f"facts directory {path} does not exist", hint="save one with `ktdeploy facts HOST --save DIR`")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise BadInput(
            f"facts directory {path} lacks {', '.join(missing)}",
            hint="save a complete one with `ktdeploy facts HOST --save DIR` (see docs/plan.md for the files)",
        )
    return {f: (path / f).read_text(encoding="utf-8", errors="replace") for f in FILES if (path / f).is_file()}


def save_dir(raw: dict[str, str], path: str | Path) -> list[Path]:
    """Write the raw facts as files; stale optional files from an earlier save are removed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        target = path / name
        if name in raw:
            target.write_text(raw[name], encoding="utf-8")
            written.append(target)
        elif target.exists():
            target.unlink()
    return written


def parse(raw: dict[str, str], errors: dict[str, str] | None = None) -> Facts:
    """Facts from raw file contents (as load_dir or parse_stream return them)."""
    try:
        cpu = parse_lscpu(raw["lscpu.txt"])
        mem_total = parse_meminfo(raw["meminfo.txt"])
        avail, mount = parse_df(raw["df.txt"])
        os_release = parse_os_release(raw["os-release.txt"])
    except KeyError as exc:
        raise BadInput(f"facts lack {exc.args[0]}", hint="gather them again with `ktdeploy facts HOST --save DIR`") from None
    return Facts(
        cpu=cpu,
        mem_total_bytes=mem_total,
        os=os_release,
        disk_avail_bytes=avail,
        disk_mount=mount,
        gpus=parse_nvidia_smi(raw["nvidia-smi.csv"]) if "nvidia-smi.csv" in raw else (),
        cpu_quota=parse_cpu_max(raw["cpu.max"]) if "cpu.max" in raw else None,
        memory_max_bytes=parse_memory_max(raw["memory.max"]) if "memory.max" in raw else None,
        systemd="systemd" in raw,
        model_files=parse_model_files(raw.get("model-files.txt", "")),
        errors=dict(errors or {}),
        python_env=parse_python_env(raw["python-env.json"]) if "python-env.json" in raw else None,
    )


def parse_python_env(text: str) -> dict | None:
    try:
        data = json.loads(text)
    except ValueError:
        raise _bad("python-env.json", "not the JSON the attention probe prints") from None
    return data if isinstance(data, dict) else None


def _bad(name: str, what: str) -> BadInput:
    return BadInput(f"{name}: {what}", hint="save the raw command output unchanged (see docs/plan.md)")


def _lscpu_fields(text: str) -> dict[str, str]:
    """Key/value pairs of both lscpu layouts; the indented one nests keys under section headers."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        fields.setdefault(key.strip(), value.strip())  # hybrid CPUs repeat keys: the first block wins
    return fields


def _int(fields: dict[str, str], key: str, default: int | None = None) -> int:
    value = fields.get(key, "")
    m = re.match(r"\d+", value)
    if m:
        return int(m.group())
    if default is not None:
        return default
    raise _bad("lscpu.txt", f"no usable {key!r} line")


def parse_lscpu(text: str) -> Cpu:
    fields = _lscpu_fields(text)
    if "CPU(s)" not in fields:
        raise _bad("lscpu.txt", "this is not lscpu output (no 'CPU(s):' line)")
    logical = _int(fields, "CPU(s)")
    threads = _int(fields, "Thread(s) per core", 1)
    sockets = _int(fields, "Socket(s)", 0) or _int(fields, "Cluster(s)", 1)
    cores = _int(fields, "Core(s) per socket", 0) or _int(fields, "Core(s) per cluster", 0)
    if not cores:
        cores = max(1, logical // (threads * sockets))
    node_lines = [k for k in fields if re.fullmatch(r"NUMA node\d+ CPU\(s\)", k)]
    numa = _int(fields, "NUMA node(s)", 0) or len(node_lines) or 1
    return Cpu(
        model=fields.get("Model name", "unknown"),
        vendor=fields.get("Vendor ID", "unknown"),
        architecture=fields.get("Architecture", "unknown"),
        logical_cpus=logical,
        sockets=sockets,
        cores_per_socket=cores,
        threads_per_core=threads,
        numa_nodes=numa,
        flags=frozenset(fields.get("Flags", "").split()),
        hypervisor=fields.get("Hypervisor vendor") or None,
    )


def parse_meminfo(text: str) -> int:
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    if not m:
        raise _bad("meminfo.txt", "no 'MemTotal:' line")
    return int(m.group(1)) * 1024


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z0-9_]+", key):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            out[key] = words[0] if words else ""
    return out


def parse_df(text: str) -> tuple[int, str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].split() or lines[0].split()[0] != "Avail":
        raise _bad("df.txt", "expected the output of `df -B1 --output=avail,target DIR`")
    avail, _, mount = lines[1].strip().partition(" ")
    if not avail.isdigit():
        raise _bad("df.txt", f"cannot read the free bytes in {lines[1]!r}")
    return int(avail), mount.strip()


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4 or not cols[0].isdigit():
            raise _bad("nvidia-smi.csv", f"unexpected line {line!r}")
        cc = cols[4] if len(cols) > 4 and re.fullmatch(r"\d+\.\d+", cols[4]) else None
        mem = cols[2]
        gpus.append(
            Gpu(
                index=int(cols[0]),
                name=cols[1],
                memory_mib=int(mem) if mem.isdigit() else 0,
                driver=cols[3],
                compute_capability=cc,
            )
        )
    return tuple(gpus)


def parse_cpu_max(text: str) -> float | None:
    parts = text.split()
    if len(parts) != 2:
        raise _bad("cpu.max", f"expected '<quota|max> <period>', got {text.strip()!r}")
    quota, period = parts
    if quota == "max":
        return None
    return int(quota) / int(period)


def parse_memory_max(text: str) -> int | None:
    value = text.strip()
    if value == "max":
        return None
    if not value.isdigit():
        raise _bad("memory.max", f"expected 'max' or a byte count, got {value!r}")
    return None if int(value) >= _V1_UNLIMITED else int(value)


def parse_model_files(text: str) -> dict[str, int]:
    files = {}
    for line in text.splitlines():
        size, _, path = line.partition(" ")
        if size.isdigit() and path:
            files[path] = int(size)
    return files
