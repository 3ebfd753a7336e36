"""The deployment plan: host facts + model choice -> build and serve settings, problems and warnings.

The one home of every rule (docs/plan.md explains each). The CLI (`ktdeploy preflight`) and the roles
(filter `ktdeploy_plan`) both call `make_plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ktdeploy import attention_route, catalog, layout
from ktdeploy.errors import BadInput
from ktdeploy.facts import Facts, Gpu

GIB = 2**30
ENGINES = layout.ENGINES
DEFAULT_PORT = layout.API_PORT  # the tutorial's port
DEFAULT_MODEL_DIR = layout.DEFAULT_MODEL_DIR  # base_model_dir's default (docs/architecture.md)
MIN_GPU_MIB = 14 * 1024  # VRAM the KTransformers engine needs for R1 (attention, shared experts, KV cache)
NUMA_COPY_MARGIN = 1.05  # a NUMA build keeps one copy of the weights per node, plus 5 %
DISK_MARGIN = 1.05
# Compile budget: upstream #145 saw ~300 GB of RAM used by 64 parallel jobs (~4.7 GB each);
# 6 GiB per job leaves headroom, and 4 GiB stay for the system.
GIB_PER_BUILD_JOB = 6
GIB_KEPT_FOR_SYSTEM = 4
# KTransformersOps' sources (v0.2.x setup.py): the most jobs its nvcc step adds when it builds beside cpuinfer_ext.
CUDA_EXT_JOBS = 3
MARLIN_MIN_CC = (8, 0)  # KLinearMarlin needs Ampere or newer
R1_LAYERS = 61
_SHIPPED_RULES = Path(__file__).parent / "data" / "optimize_rules"
# AVX-512 subsets of upstream's CPU_INSTRUCT values (setup.py / CMakeLists of the v0.2 line)
_FANCY = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_vpopcntdq"}
_AVX512 = {"avx512f", "avx512bw"}


@dataclass(frozen=True)
class Finding:
    """A problem (the plan cannot work) or a warning (it works, worse than it could)."""

    code: str
    message: str

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass
class Plan:
    facts: Facts
    variant: catalog.Variant
    engine: str
    kt_version: str | None
    effective_cpus: int
    memory_bytes: int
    use_numa: bool
    cpu_instruct: str | None
    torch_cuda_arch_list: str | None
    max_jobs: int
    parallel_extensions: bool
    cpu_infer: int
    optimize_rule: str | None
    optimize_rule_shipped: bool
    n_gpu_layers: int
    port: int
    supervisor: str
    present_bytes: int
    to_download_bytes: int
    disk_needed_bytes: int
    model_dir: str = DEFAULT_MODEL_DIR
    host: str | None = None
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems


    def to_dict(self) -> dict:
        f = self.facts
        cpu = f.cpu
        return {
            "host": self.host,
            "cpu": {
                "model": cpu.model,
                "vendor": cpu.vendor,
                "sockets": cpu.sockets,
                "cores_per_socket": cpu.cores_per_socket,
                "threads_per_core": cpu.threads_per_core,
                "logical_cpus": cpu.logical_cpus,
                "physical_cores": cpu.physical_cores,
                "effective_cpus": self.effective_cpus,
                "cgroup_quota": f.cpu_quota,
                "numa_nodes": cpu.numa_nodes,
                "amx": cpu.amx,
                "avx512": cpu.avx512,
                "avx2": cpu.avx2,
            },
            "memory_gib": _gib(self.memory_bytes),
            "memory": {
                "total_gib": _gib(f.mem_total_bytes),
                "cgroup_max_gib": _gib(f.memory_max_bytes) if f.memory_max_bytes is not None else None,
            },
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "memory_mib": g.memory_mib,
                    "compute_capability": g.compute_capability,
                    "driver": g.driver,
                }
                for g in f.gpus
            ],
            "os": {"id": f.os.get("ID"), "version_id": f.os.get("VERSION_ID"), "pretty_name": f.os.get("PRETTY_NAME")},
            "systemd": f.systemd,
            "disk": {
                "mount": f.disk_mount,
                "avail_bytes": f.disk_avail_bytes,
                "needed_bytes": self.disk_needed_bytes,
            },
            "build": {
                "use_numa": self.use_numa,
                "cpu_instruct": self.cpu_instruct,
                "torch_cuda_arch_list": self.torch_cuda_arch_list,
                "max_jobs": self.max_jobs,
                "parallel_extensions": self.parallel_extensions,
                "kt_version": self.kt_version,
                "flash_attn": attention_route.choose("auto", self.facts.python_env).to_dict() if self.engine == layout.KTRANSFORMERS else None,
            },
            "serve": {
                "engine": self.engine,
                "cpu_infer": self.cpu_infer,
                "optimize_rule": self.optimize_rule,
                "optimize_rule_shipped": self.optimize_rule_shipped,
                "n_gpu_layers": self.n_gpu_layers,
                "port": self.port,
                "supervisor": self.supervisor,
            },
            "model": {
                "variant": self.variant.name,
                "source": self.variant.source,
                **model_paths(self.variant, self.model_dir),
                "bytes": self.variant.bytes,
                "files": list(self.variant.files),
                "min_ram_gib": self.variant.min_ram_gib,
                "present_bytes": self.present_bytes,
                "to_download_bytes": self.to_download_bytes,
            },
            "fits": self.fits,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
        }


def model_paths(v: catalog.Variant, model_dir: str) -> dict:
    """Where the model lives on the host: `dir` (the model directory the plan measured), `gguf_dir`
    (KTransformers' --gguf_path), `config_dir` (its --model_path), `gguf_file` (what llama.cpp loads).
    A packaged model has none of the last three: its package writes serve_llamacpp_model."""
    if v.packaged:
        return {"dir": model_dir, "gguf_dir": None, "config_dir": None, "gguf_file": None}
    return {"dir": model_dir, "gguf_dir": v.gguf_dir(model_dir), "config_dir": v.config_dir(model_dir),
            "gguf_file": v.gguf_file(model_dir)}


def _gib(n: int) -> float:
    return round(n / GIB, 1)


def shipped_rule_path(name: str) -> Path:
    """Controller path of an optimize rule that ktdeploy ships (serve.optimize_rule_shipped)."""
    path = _SHIPPED_RULES / name
    if not path.is_file():
        raise BadInput(f"ktdeploy ships no optimize rule {name!r}", hint="use a name from the plan's serve.optimize_rule")
    return path


def parse_kt_version(text: str) -> Version:
    try:
        return Version(text.removeprefix("v"))
    except InvalidVersion:
        raise BadInput(
            f"cannot read KTransformers version {text!r}", hint="name a tag such as v0.2.3post2 or v0.3.2"
        ) from None


def kernel_version(kt_version: str) -> Version:
    """The release whose CPU expert kernels `kt_version` has once ktdeploy's patch series is applied
    (catalog `kt_backports`); the version itself when its series backports none."""
    from ktdeploy.build import series_entries, version_dir
    from ktdeploy.resources import share_dir

    version = parse_kt_version(kt_version)
    series = share_dir() / "patches" / "ktransformers" / version_dir(kt_version) / "series"
    patches = {Path(entry).name for entry in series_entries(series.read_text())} if series.is_file() else set()
    for backport in catalog.kt_backports():
        if backport["patch"] in patches:
            version = max(version, parse_kt_version(backport["kernels_of"]))
    return version


def effective_cpus(facts: Facts) -> int:
    cores = facts.cpu.physical_cores
    if facts.cpu_quota is None:
        return cores
    return max(1, min(cores, math.floor(facts.cpu_quota)))


def effective_memory(facts: Facts) -> int:
    if facts.memory_max_bytes is None:
        return facts.mem_total_bytes
    return min(facts.mem_total_bytes, facts.memory_max_bytes)


def cpu_instruct(flags: frozenset[str]) -> str | None:
    """Upstream's CPU_INSTRUCT for these flags; explicit rather than NATIVE so the build is reproducible."""
    if _FANCY <= flags:
        return "FANCY"
    if _AVX512 <= flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return None


def _jobs_ram_holds(memory_bytes: int) -> int:
    return int((memory_bytes / GIB - GIB_KEPT_FOR_SYSTEM) // GIB_PER_BUILD_JOB)


def max_jobs(cpus: int, memory_bytes: int) -> int:
    return max(1, min(cpus, _jobs_ram_holds(memory_bytes)))


def parallel_extensions(cpus: int, memory_bytes: int) -> bool:
    """Build KTransformersOps (nvcc) beside cpuinfer_ext (CMake) rather than after it: only where the
    RAM holds max_jobs plus the CUDA extension's jobs, since both then compile at once."""
    return _jobs_ram_holds(memory_bytes) >= max_jobs(cpus, memory_bytes) + CUDA_EXT_JOBS


def torch_cuda_arch_list(gpus: tuple[Gpu, ...]) -> str | None:
    caps = {g.cc_tuple for g in gpus if g.cc_tuple}
    return ";".join(f"{a}.{b}" for a, b in sorted(caps)) or None


def n_gpu_layers(gpus: tuple[Gpu, ...], model_bytes: int) -> int:
    """llama.cpp layers on the GPUs: Unsloth's rule, VRAM / file size x 61 - 4, within 0..61."""
    vram = sum(g.memory_mib for g in gpus) * 2**20
    if not vram:
        return 0
    return max(0, min(R1_LAYERS, math.floor(vram / model_bytes * R1_LAYERS - 4)))


def present_bytes(facts: Facts, variant: catalog.Variant) -> int:
    """Bytes of the variant's shards already on the host, partial downloads included."""
    if variant.packaged:
        return 0
    if variant.generated:  # its path is relative to the model directory
        return min(sum(facts.model_files.get(rel, 0) for rel in variant.files), variant.bytes)
    root = variant.repo.local_dir
    total = 0
    for rel in variant.files:
        for path in (f"{root}/{rel}", f"{root}/{rel}.incomplete", f"{root}/._____temp/{rel}"):
            total += facts.model_files.get(path, 0)
    return min(total, variant.bytes)


def make_plan(
    facts: Facts,
    variant: str | None = None,
    *,
    engine: str = layout.KTRANSFORMERS,
    kt_version: str | None = None,
    port: int | None = None,
    host: str | None = None,
    model_dir: str | None = None,
) -> Plan:
    if engine not in ENGINES:
        raise BadInput(f"unknown engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")
    var = catalog.variant(variant)
    kt = engine == layout.KTRANSFORMERS
    version = (kt_version or catalog.default_kt_version()) if kt else None
    cpu = facts.cpu
    cpus = effective_cpus(facts)
    memory = effective_memory(facts)
    present = present_bytes(facts, var)
    # A packaged or generated model brings its own config: only a downloaded variant needs R1's config repo.
    to_download = var.bytes - present + ((catalog.config_repo().approx_bytes or 0) if var.downloadable else 0)
    problems: list[Finding] = []
    warnings: list[Finding] = []

    numa = kt and _numa(cpu.numa_nodes, var, memory, warnings)
    rule, shipped = _optimize_rule(facts.gpus, warnings) if kt else (None, False)
    instruct = cpu_instruct(cpu.flags)

    plan = Plan(
        facts=facts,
        variant=var,
        engine=engine,
        kt_version=version,
        effective_cpus=cpus,
        memory_bytes=memory,
        use_numa=numa,
        cpu_instruct=instruct,
        torch_cuda_arch_list=torch_cuda_arch_list(facts.gpus),
        max_jobs=max_jobs(cpus, memory),
        parallel_extensions=parallel_extensions(cpus, memory),
        cpu_infer=cpus + 1,  # CPUInfer(n) runs n - 1 worker threads
        optimize_rule=rule,
        optimize_rule_shipped=shipped,
        n_gpu_layers=n_gpu_layers(facts.gpus, var.bytes),
        port=port or DEFAULT_PORT,
        supervisor="systemd" if facts.systemd else "supervisord",
        present_bytes=present,
        to_download_bytes=to_download,
        disk_needed_bytes=round(to_download * DISK_MARGIN),
        model_dir=str(model_dir or DEFAULT_MODEL_DIR),
        host=host,
        problems=problems,
        warnings=warnings,
    )
    _check_hardware(plan, problems, warnings)
    if kt:
        _check_ktransformers(plan, parse_kt_version(version), problems, warnings)
    _check_quotas(plan, warnings)
    return plan


# What a plan decides from the host's facts; `offline_plan` leaves these None.
FROM_FACTS = {
    "build": ("use_numa", "cpu_instruct", "torch_cuda_arch_list", "max_jobs", "parallel_extensions", "flash_attn"),
    "serve": ("cpu_infer", "optimize_rule", "n_gpu_layers", "supervisor"),
}


def offline_plan(
    variant: str | None = None,
    *,
    engine: str = layout.KTRANSFORMERS,
    kt_version: str | None = None,
    port: int | None = None,
    host: str | None = None,
    model_dir: str | None = None,
) -> dict:
    """The part of the plan that needs no facts (engine, version, port, model and its paths), in
    `Plan.to_dict`'s shape, with every decision of FROM_FACTS None and `facts` false. For previews of a
    host that does not answer (`ktdeploy render`); nothing is checked against hardware."""
    if engine not in ENGINES:
        raise BadInput(f"unknown engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")
    var = catalog.variant(variant)
    kt = engine == layout.KTRANSFORMERS
    paths = model_paths(var, str(model_dir or DEFAULT_MODEL_DIR))
    return {
        "host": host,
        "facts": False,
        "build": {"kt_version": (kt_version or catalog.default_kt_version()) if kt else None,
                  **dict.fromkeys(FROM_FACTS["build"])},
        "serve": {"engine": engine, "port": port or DEFAULT_PORT, "optimize_rule_shipped": False,
                  **dict.fromkeys(FROM_FACTS["serve"])},
        "model": {"variant": var.name, "source": var.source, **paths, "bytes": var.bytes,
                  "files": list(var.files), "min_ram_gib": var.min_ram_gib},
        "problems": [],
        "warnings": [],
    }


def _numa(nodes: int, var: catalog.Variant, memory: int, warnings: list[Finding]) -> bool:
    # The build turns NUMA on whenever USE_NUMA exists; False here means "leave USE_NUMA unset".
    if nodes <= 1:
        return False
    need = var.bytes * nodes * NUMA_COPY_MARGIN
    if memory >= need:
        return True
    warnings.append(
        Finding(
            "numa_off",
            f"NUMA build off although the host has {nodes} NUMA nodes: a NUMA build keeps one copy of the "
            f"weights per node and needs {_gib(int(need))} GiB of RAM for {var.name}, the host has "
            f"{_gib(memory)} GiB. Threads will read memory across nodes (slower). With 1 NUMA node per "
            "socket in the BIOS (no SNC/NPS) the need drops.",
        )
    )
    return False


def _optimize_rule(gpus: tuple[Gpu, ...], warnings: list[Finding]) -> tuple[str | None, bool]:
    """Upstream's CPU-experts rules only: rules with Marlin experts cannot load IQ1_S/IQ2_XXS weights."""
    if not gpus:
        return None, False
    used = sorted(gpus, key=lambda g: g.index)[:2]
    multi = len(used) > 1
    if len(gpus) > 2:
        warnings.append(
            Finding(
                "gpus_idle",
                f"the multi-GPU rule places layers on cuda:0 and cuda:1 only; {len(gpus) - 2} more GPU(s) stay "
                "idle (experts run on the CPU, more GPUs would not make decoding faster)",
            )
        )
    base = "DeepSeek-V3-Chat-multi-gpu" if multi else "DeepSeek-V3-Chat"
    old = [g for g in used if g.cc_tuple and g.cc_tuple < MARLIN_MIN_CC]
    if not old:
        return f"{base}.yaml", False
    names = ", ".join(f"{g.name} (compute capability {g.compute_capability})" for g in old)
    warnings.append(
        Finding(
            "pre_ampere",
            f"{names} predates Ampere and cannot run the Marlin linear kernels: the plan uses ktdeploy's "
            f"{base}-torch-linear.yaml (torch linears, slower decoding) and the server needs eager attention",
        )
    )
    return f"{base}-torch-linear.yaml", True


def _check_hardware(plan: Plan, problems: list[Finding], warnings: list[Finding]) -> None:
    var, f = plan.variant, plan.facts
    if plan.cpu_instruct is None:
        problems.append(
            Finding("no_avx2", f"the CPU ({f.cpu.model}) lacks AVX2: the CPU experts cannot be built for it")
        )
    min_ram = var.min_ram_gib * GIB
    if plan.memory_bytes < min_ram:
        problems.append(
            Finding(
                "ram_below_minimum",
                f"{_gib(plan.memory_bytes)} GiB of RAM is below the {var.min_ram_gib} GiB {var.name} needs: "
                f"use a host with more RAM{_smaller_variants(plan.memory_bytes)}",
            )
        )
    elif plan.memory_bytes < var.bytes:
        warnings.append(
            Finding(
                "ram_below_model",
                f"{_gib(plan.memory_bytes)} GiB of RAM holds less than the {_gib(var.bytes)} GiB of {var.name}: "
                "weights will page in from disk (slow decoding, fast disk recommended)",
            )
        )
    if f.disk_avail_bytes < plan.disk_needed_bytes:
        problems.append(
            Finding(
                "disk_full",
                f"{_gib(f.disk_avail_bytes)} GiB free on {f.disk_mount}, but {_gib(plan.to_download_bytes)} GiB are "
                f"still to download (+5 %: {_gib(plan.disk_needed_bytes)} GiB): free space or point the model "
                "directory at a bigger disk",
            )
        )
    if f.cpu.amx and plan.engine == layout.KTRANSFORMERS:
        warnings.append(
            Finding(
                "amx_unused",
                f"the CPU has AMX (amx_tile), but the V0.3 AMX backends need BF16 weights, not {var.name}: "
                "the plan keeps the llamafile CPU experts",
            )
        )
    if plan.engine == layout.LLAMA_CPP and not f.gpus:
        warnings.append(Finding("cpu_only", "no NVIDIA GPU: llama.cpp will run on the CPU alone (slow)"))


def _smaller_variants(memory: int) -> str:
    fitting = [n for n in catalog.names() if catalog.variant(n).min_ram_gib * GIB <= memory]
    return f", or one of {', '.join(fitting)}" if fitting else ""


def _check_ktransformers(plan: Plan, version: Version, problems: list[Finding], warnings: list[Finding]) -> None:
    var, f = plan.variant, plan.facts
    big = [g for g in f.gpus if g.memory_mib >= MIN_GPU_MIB]
    if not big:
        seen = ", ".join(f"{g.name} {g.memory_mib} MiB" for g in f.gpus) or "none found (nvidia-smi absent or failed)"
        problems.append(
            Finding(
                "no_gpu",
                f"the KTransformers engine needs an NVIDIA GPU with at least {MIN_GPU_MIB // 1024} GiB; GPUs: {seen}",
            )
        )
    elif any(g.compute_capability is None for g in f.gpus):
        problems.append(
            Finding(
                "gpu_unknown_cc",
                "nvidia-smi did not report the GPUs' compute capability: upgrade the NVIDIA driver (510 or newer)",
            )
        )
    if layout.KTRANSFORMERS not in var.engines:
        problems.append(
            Finding(
                "unsupported_variant",
                f"{var.name} is a small packaged model for the llama.cpp engine (the cpu-demo); KTransformers "
                f"serves DeepSeek-R1: choose one of {', '.join(catalog.names())}, or the llama.cpp engine",
            )
        )
    elif not var.legacy_ktransformers:
        problems.append(
            Finding(
                "unsupported_variant",
                f"{var.name} does not run on the KTransformers v0.2/v0.3 engine (IQ1_M experts are not supported "
                "on x86, upstream #825): choose UD-IQ1_S or UD-IQ2_XXS, or the llama.cpp engine",
            )
        )
    elif kernel_version(plan.kt_version) < parse_kt_version(var.min_kt_version):
        problems.append(
            Finding(
                "kt_version_too_old",
                f"KTransformers {plan.kt_version} cannot run {var.name} (empty or garbled output): it needs "
                f"{var.min_kt_version} or later (or a patch series that backports its kernels); the default is "
                f"{catalog.default_kt_version()}",
            )
        )
    flags = f.cpu.flags
    if Version("0.2.3") <= version < Version("0.2.3.post2") and "avx512f" in flags and "avx512_vpopcntdq" not in flags:
        problems.append(
            Finding(
                "kt_version_cpu",
                f"KTransformers {plan.kt_version} does not compile on AVX-512 CPUs without VPOPCNTDQ "
                f"({f.cpu.model}; upstream #829): use v0.2.3post2 or later",
            )
        )


def _check_quotas(plan: Plan, warnings: list[Finding]) -> None:
    f, cpu = plan.facts, plan.facts.cpu
    if f.cpu_quota is not None and f.cpu_quota < cpu.logical_cpus:
        msg = (
            f"the cgroup CPU quota allows {f.cpu_quota:g} of the {cpu.logical_cpus} CPUs lscpu shows: "
            f"planning with {plan.effective_cpus}"
        )
        if cpu.threads_per_core > 1:
            msg += (
                f"; the quota counts logical CPUs, and with {cpu.threads_per_core} threads per core they may be "
                f"only {max(1, plan.effective_cpus // cpu.threads_per_core)} physical cores (lower cpu_infer if "
                "decoding stalls)"
            )
        warnings.append(Finding("cpu_quota", msg))
    if f.memory_max_bytes is not None and f.memory_max_bytes < f.mem_total_bytes:
        warnings.append(
            Finding(
                "memory_quota",
                f"the cgroup memory limit ({_gib(f.memory_max_bytes)} GiB) is below the host's "
                f"{_gib(f.mem_total_bytes)} GiB: planning with the limit (page cache counts against it too)",
            )
        )
    if cpu.hypervisor and cpu.threads_per_core == 1 and f.cpu_quota is None and plan.engine == layout.KTRANSFORMERS:
        warnings.append(
            Finding(
                "vm_cpus",
                f"virtual machine ({cpu.hypervisor}) reporting 1 thread per core: its vCPUs may be hyperthreads "
                f"of the host, so cpu_infer {plan.cpu_infer} may count hyperthreads",
            )
        )
