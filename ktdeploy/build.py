"""KTransformers build rules: the build environment, the stamp, and the checks before a build.

Pure functions over plain data and raw command outputs; the `cuda`, `torch` and `ktransformers`
roles reach them through `playbooks/filter_plugins/ktdeploy_build.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from urllib.parse import urljoin, urldefrag

from ktdeploy.plan import CUDA_EXT_JOBS, GIB_PER_BUILD_JOB

SETTING_KEYS = ("use_numa", "cpu_instruct", "torch_cuda_arch_list", "max_jobs", "kt_version")
CPU_INSTRUCTS = ("NATIVE", "FANCY", "AVX512", "AVX2")
MIN_CMAKE = (3, 16)  # cmake_minimum_required of ktransformers_ext (v0.2.x)

# RAM one compile job may take: the plan's figure, the one that sized max_jobs.
RAM_PER_JOB_GIB = GIB_PER_BUILD_JOB

# The PyPI sdist is the only legacy release there; its sha256 as published by the index.
KNOWN_SDIST_SHA256 = {
    "0.2.1.post1": "079ee36fbefe1280455f6cb2d9afaf840a9fed350acecdcf94f03b113aa94199",
}
# Commits the legacy tags point to, so a moved tag on a mirror is noticed.
KNOWN_TAG_COMMITS = {
    "v0.2.1.post1": "09f5c5e77e81a5a0c352457b5687c6d9973fda6c",
    "v0.2.3post2": "c51818c39a980baaa754b4306564385d2596fd3b",
}

# setuptools reads this extra config file (relative to the source tree) beside setup.cfg; the build
# script writes it there when the plan builds both extensions at once.
EXTRA_CONFIG_NAME = "ktdeploy-build_ext.cfg"
# Elapsed seconds on every step of both ninja builds (CMake's and torch's), so the build log shows
# where a build's time goes.
NINJA_STATUS = "[%f/%t %es] "
# How a build is scheduled, not what it builds: left out of the stamp, so a change rebuilds nothing.
# CMAKE_ARGS carries only lto_jobs_args() (the same LTO partitions, compiled side by side);
# NVCC_APPEND_FLAGS only nvcc_split_compile(): the Marlin kernels keep every tensor-core and memory
# instruction, only registers and some integer arithmetic differ (docs/benchmarks.md), so a host
# built without it keeps its build (ktransformers_force_rebuild rebuilds).
NOT_STAMPED = ("DIST_EXTRA_CONFIG", "NINJA_STATUS", "CMAKE_ARGS", "NVCC_APPEND_FLAGS")

_ARCH_RE = re.compile(r"^\d+\.\d+(\+PTX)?$")


class BuildSettingsError(ValueError):
    """The plan's build settings cannot drive a build; the message lists every problem."""


def settings(build: Mapping) -> dict:
    """Validated copy of the plan's `build` section (unknown keys are dropped)."""
    problems = []
    missing = [k for k in SETTING_KEYS if k not in build]
    if missing:
        problems.append(f"missing build settings: {', '.join(missing)} (run `ktdeploy preflight` to plan them)")
    nulls = [k for k in SETTING_KEYS if k in build and build[k] is None]
    if nulls:
        problems.append(f"the plan has no {', '.join(nulls)} for this host (see the problems `ktdeploy preflight` reports)")
    out = {k: build[k] for k in SETTING_KEYS if k in build and build[k] is not None}
    if "use_numa" in out and not isinstance(out["use_numa"], bool):
        problems.append(f"use_numa must be true or false, not {out['use_numa']!r}")
    if "cpu_instruct" in out and out["cpu_instruct"] not in CPU_INSTRUCTS:
        problems.append(f"cpu_instruct must be one of {', '.join(CPU_INSTRUCTS)} (exact, upper case), not {out['cpu_instruct']!r}")
    if "torch_cuda_arch_list" in out:
        archs = str(out["torch_cuda_arch_list"]).replace(" ", ";").split(";")
        if not all(_ARCH_RE.match(a) for a in archs):
            problems.append(f"torch_cuda_arch_list must look like '8.6;9.0' or '9.0+PTX', not {out['torch_cuda_arch_list']!r}")
        else:
            out["torch_cuda_arch_list"] = ";".join(archs)
    if "max_jobs" in out:
        jobs = out["max_jobs"]
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            problems.append(f"max_jobs must be a whole number >= 1, not {jobs!r}")
    together = build.get("parallel_extensions")
    if together is not None and not isinstance(together, bool):
        problems.append(f"parallel_extensions must be true or false, not {together!r}")
    out["parallel_extensions"] = together is True  # plans written before this setting build one at a time
    if "kt_version" in out and not str(out["kt_version"]).strip():
        problems.append("kt_version must name a KTransformers version, e.g. v0.2.3post2")
    if problems:
        raise BuildSettingsError("; ".join(problems))
    return out


def build_env(build: Mapping, cuda_home: str, split_compile: bool = True) -> dict[str, str]:
    """Environment for `pip install . --no-build-isolation`.

    `USE_NUMA` appears only when NUMA is wanted: CMake tests whether it is defined, so any value,
    "0" too, turns NUMA on. `KTRANSFORMERS_FORCE_BUILD` must be exactly TRUE, or setup.py tries to
    download a prebuilt wheel instead of building.
    """
    s = settings(build)
    if not cuda_home or not cuda_home.startswith("/"):
        raise BuildSettingsError(f"CUDA_HOME must be an absolute path, not {cuda_home!r}")
    jobs = str(s["max_jobs"])
    env = {
        "KTRANSFORMERS_FORCE_BUILD": "TRUE",
        "CPU_INSTRUCT": s["cpu_instruct"],
        "TORCH_CUDA_ARCH_LIST": s["torch_cuda_arch_list"],
        "MAX_JOBS": jobs,
        "CMAKE_BUILD_PARALLEL_LEVEL": jobs,
        "CUDA_HOME": cuda_home.rstrip("/"),
        "CUDA_PATH": cuda_home.rstrip("/"),
        "CMAKE_ARGS": lto_jobs_args(s["max_jobs"]),
        "NINJA_STATUS": NINJA_STATUS,
    }
    if split_compile and s["max_jobs"] > 1:
        env["NVCC_APPEND_FLAGS"] = nvcc_split_compile(s["max_jobs"])
    if s["use_numa"]:
        env["USE_NUMA"] = "1"
    if s["parallel_extensions"]:
        env["DIST_EXTRA_CONFIG"] = EXTRA_CONFIG_NAME
    return env


def lto_jobs_args(jobs: int) -> str:
    """CMake arguments that run cpuinfer_ext's link-time code generation as `jobs` parallel jobs.

    pybind11 links the module with a bare `-flto`: under ninja (no make jobserver) GCC's lto-wrapper
    then compiles every LTO partition one after the other ("using serial compilation of 13 LTRANS
    jobs"). GCC takes the job count from any `-flto=N` on the link line. setup.py appends
    `$CMAKE_ARGS`, split at spaces, to its CMake call.
    """
    return f"-DCMAKE_MODULE_LINKER_FLAGS=-flto={int(jobs)}"


def nvcc_split_compile(jobs: int) -> str:
    """nvcc flags that run the device optimizer of one source on `jobs` threads.

    KTransformersOps' gptq_marlin.cu is one source with every Marlin kernel instance in it: alone it
    is nearly the whole build (668 of 676 s on the H200, the rest of the build beside it). nvcc reads
    NVCC_APPEND_FLAGS on every call; the build script drops it where the toolkit does not know the
    option.
    """
    return f"--split-compile={int(jobs)}"


def peak_jobs(build: Mapping) -> int:
    """Compile jobs running at once: CMake's, plus nvcc's when both extensions build together."""
    s = settings(build)
    return s["max_jobs"] + (CUDA_EXT_JOBS if s["parallel_extensions"] else 0)


def stamp(*, source: str, patches: Sequence[str], torch_version: str, env: Mapping[str, str]) -> str:
    """Key of a finished build: any change to source, patches, torch or settings changes it."""
    doc = {
        "source": source,
        "patches": [hashlib.sha256(p.encode()).hexdigest() for p in patches],
        "torch": torch_version,
        "env": dict(sorted((k, v) for k, v in env.items() if k not in NOT_STAMPED)),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def steps(wanted: str, installed: str, wheel_kept: bool, force: bool = False) -> dict[str, bool]:
    """Whether to build and whether to install the wanted build (`wanted` and `installed` are stamps).

    Every build leaves a wheel in a directory of its stamp; installing a build is installing its
    kept wheel, so going back to an earlier build (a rollback) needs no rebuild. A build runs only
    when no wheel is kept for the wanted stamp and that stamp is not installed already (a host built
    before wheels were kept has none, and keeps its installed build), or when forced.
    """
    installed = (installed or "").strip()
    build = bool(force) or (not wheel_kept and installed != wanted)
    return {"build": build, "install": bool(force) or installed != wanted}


def version_dir(version: str) -> str:
    """Directory name of a version's patch series: tags and sdist versions alike, without a leading v."""
    v = str(version).strip()
    return v[1:] if v.startswith("v") else v


def parse_nvcc_release(text: str) -> tuple[int, int] | None:
    m = re.search(r"release (\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_glibcxx(text: str) -> list[tuple[int, ...]]:
    found = {tuple(int(p) for p in m.group(1).split(".")) for m in re.finditer(r"GLIBCXX_(\d+(?:\.\d+)+)", text or "")}
    return sorted(found)


def mem_available_gib(meminfo: str) -> float | None:
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo or "", re.M)
    return int(m.group(1)) / 1024 / 1024 if m else None


def _fmt(v: Sequence[int]) -> str:
    return "GLIBCXX_" + ".".join(str(p) for p in v)


def build_problems(probe: Mapping, max_jobs: int) -> list[str]:
    """Everything that stops a build, each with its fix. `probe` holds raw outputs from the host:

    driver        text of /proc/driver/nvidia/version ("" when there is none)
    nvcc          output of `$CUDA_HOME/bin/nvcc -V` ("" when there is no nvcc)
    cuda_home     the CUDA_HOME the build will use
    torch         {"version", "cuda"} from the env's torch, or null when it does not import
    cpufeature    whether `cpufeature` imports in the env
    glibcxx_runtime / glibcxx_compiler   GLIBCXX_* strings of the env's and the compiler's libstdc++
    runtime_libstdcxx   path of the env's libstdc++
    meminfo       /proc/meminfo
    cmake         output of `cmake --version` on the build's PATH ("" when there is none; absent: not probed)
    """
    problems = []
    if not (probe.get("driver") or "").strip():
        problems.append("no NVIDIA driver: neither /proc/driver/nvidia/version nor nvidia-smi answers; install the driver (ktdeploy never touches it) and reboot")
    nvcc = parse_nvcc_release(probe.get("nvcc") or "")
    cuda_home = probe.get("cuda_home") or "?"
    if nvcc is None:
        problems.append(f"CUDA toolkit not found: no working {cuda_home}/bin/nvcc; run the cuda role (cuda_install: true) or set cuda_home to an installed toolkit")
    torch = probe.get("torch")
    if not torch:
        problems.append("torch does not import in the Python env; run the torch role first")
    elif not torch.get("cuda"):
        problems.append(f"torch {torch.get('version')} is a CPU-only build; install a CUDA build of torch (torch role, torch_index_url)")
    elif nvcc is not None:
        torch_major = int(str(torch["cuda"]).split(".")[0])
        if torch_major != nvcc[0]:
            problems.append(
                f"CUDA major mismatch: nvcc in {cuda_home} is {nvcc[0]}.{nvcc[1]} but torch {torch.get('version')} was built for CUDA {torch['cuda']}; "
                f"install the CUDA {torch_major}.x toolkit (cuda role) or a torch built for CUDA {nvcc[0]}.x"
            )
    if not probe.get("cpufeature"):
        problems.append("cpufeature is missing from the Python env (setup.py imports it); run the torch role, which installs it")
    runtime = parse_glibcxx(probe.get("glibcxx_runtime") or "")
    compiler = parse_glibcxx(probe.get("glibcxx_compiler") or "")
    if not compiler:
        problems.append("no C++ compiler: g++ and its libstdc++ were not found; run the base role (build-essential)")
    elif not runtime or runtime[-1] < compiler[-1]:
        # the extensions link against the compiler's libstdc++ but load the env's one
        have = _fmt(runtime[-1]) if runtime else "none"
        problems.append(
            f"GLIBCXX too old: {probe.get('runtime_libstdcxx') or 'the env libstdc++'} provides {have}, g++ builds for {_fmt(compiler[-1])}; "
            "upgrade libstdc++6, or in conda install conda-forge libstdcxx-ng"
        )
    if "cmake" in probe:
        m = re.search(r"cmake version (\d+)\.(\d+)", probe.get("cmake") or "")
        if not m:
            problems.append("cmake not found on the build's PATH (the env's bin, then the system's); run the base role "
                            "(package cmake) or pip install cmake into the env")
        elif (int(m.group(1)), int(m.group(2))) < MIN_CMAKE:
            problems.append(f"cmake {m.group(1)}.{m.group(2)} is older than {MIN_CMAKE[0]}.{MIN_CMAKE[1]}, which "
                            "KTransformers' extension needs; pip install cmake into the env")
    avail = mem_available_gib(probe.get("meminfo") or "")
    if avail is not None and avail < max_jobs * RAM_PER_JOB_GIB:
        fit = max(1, int(avail // RAM_PER_JOB_GIB))
        problems.append(
            f"not enough RAM for {max_jobs} build jobs: {avail:.1f} GiB available, {RAM_PER_JOB_GIB:g} GiB per job needed; "
            f"lower max_jobs to {fit} or free memory"
        )
    return problems


def numa_log_problem(log: str, use_numa: bool) -> str | None:
    """Whether CMake's NUMA line in the build log agrees with the plan (libnuma missing turns NUMA off silently)."""
    enabled = re.search(r"NUMA library found: .* - enabling NUMA support", log or "")
    disabled = re.search(r"disabling NUMA support", log or "")
    if use_numa and not enabled:
        return "the plan wants NUMA but the build log has no 'NUMA library found … enabling NUMA support' line; install libnuma-dev and rebuild"
    if not use_numa and not disabled:
        return "the plan wants NUMA off but the build log does not say 'disabling NUMA support'; rebuild without USE_NUMA in the environment"
    if not use_numa and enabled:
        return "the build enabled NUMA although the plan says off; rebuild without USE_NUMA in the environment"
    return None


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def sdist_link(index_page: str, page_url: str, filename: str) -> dict:
    """URL and sha256 of `filename` on a PEP 503 project page (the sha256 from its `#sha256=` fragment)."""
    parser = _Links()
    parser.feed(index_page or "")
    for href in parser.hrefs:
        url, frag = urldefrag(urljoin(page_url, href))
        if url.rsplit("/", 1)[-1] == filename:
            sha = frag.split("=", 1)[1] if frag.startswith("sha256=") else None
            return {"url": url, "sha256": sha}
    raise BuildSettingsError(f"{filename} is not listed on {page_url}; add it to the index or wheelhouse, or set ktransformers_sdist_path")


def driver_toolkit_problem(driver_cuda: str, nvcc: str) -> str | None:
    """A toolkit newer (by major) than the CUDA version the driver supports builds kernels the driver cannot load.

    `driver_cuda` is the "CUDA Version: X.Y" that `nvidia-smi` prints for the installed driver.
    """
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", driver_cuda or "")
    release = parse_nvcc_release(nvcc)
    if not m or release is None:
        return None
    if release[0] > int(m.group(1)):
        return (
            f"the NVIDIA driver supports CUDA up to {m.group(1)}.{m.group(2)} but the toolkit is {release[0]}.{release[1]}; "
            "upgrade the driver, or set cuda_version to a toolkit of the driver's major version"
        )
    return None


def series_entries(text: str) -> list[str]:
    """Patch paths of a quilt-style `series` file, in order (blank lines and # comments skipped)."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def load_series(patches_root: str, version: str) -> list[dict]:
    """The series for `version` as [{name, content}]; entries are paths relative to the series file."""
    from pathlib import Path

    folder = Path(patches_root) / version_dir(version)
    series = folder / "series"
    if not Path(patches_root).is_dir():
        raise BuildSettingsError(f"patch folder {patches_root} does not exist; set ktransformers_patches_root")
    if not series.is_file():
        raise BuildSettingsError(
            f"no patch series for KTransformers {version} (looked for {series}); "
            f"known versions: {', '.join(sorted(p.name for p in Path(patches_root).iterdir() if (p / 'series').is_file()))}"
        )
    out = []
    for entry in series_entries(series.read_text()):
        path = (folder / entry).resolve()
        if not path.is_file():
            raise BuildSettingsError(f"{series} names {entry}, which does not exist")
        out.append({"name": path.name, "content": path.read_text()})
    return out


def series_digest(patches: Sequence[Mapping]) -> str:
    """Short digest of a loaded series; it names the patched source tree, so a new series gets a fresh tree."""
    h = hashlib.sha256()
    for p in patches:
        h.update(p["name"].encode() + b"\0" + p["content"].encode() + b"\0")
    return h.hexdigest()[:12]


SOURCES = ("git", "sdist", "tarball")


def source_problem(source: str, version: str, tarball: str = "") -> str | None:
    """Whether the chosen source can provide the chosen version."""
    if source not in SOURCES:
        return f"ktransformers_source must be one of {', '.join(SOURCES)}, not {source!r}"
    if source == "sdist" and version_dir(version) not in KNOWN_SDIST_SHA256:
        return (
            f"the PyPI sdist exists only for {', '.join(KNOWN_SDIST_SHA256)} (later legacy versions were never "
            f"published as sdists), not {version}; use ktransformers_source: git for {version}"
        )
    if source == "tarball" and not tarball:
        return "ktransformers_source is tarball but ktransformers_tarball names no archive"
    return None


def pip_args_text(args) -> str:
    """python_env's pip settings (a list of options, or already one string) as one shell-quoted string."""
    import shlex

    if isinstance(args, str):
        return args
    return " ".join(shlex.quote(str(a)) for a in args or [])
