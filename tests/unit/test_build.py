"""The KTransformers build rules in ktdeploy.build."""

from pathlib import Path

import pytest

from ktdeploy import build, facts, plan

PLAN_SINGLE = {"use_numa": False, "cpu_instruct": "FANCY", "torch_cuda_arch_list": "8.9", "max_jobs": 8, "kt_version": "v0.2.3post2"}
PLAN_MULTI = {"use_numa": True, "cpu_instruct": "AVX512", "torch_cuda_arch_list": "8.0;9.0", "max_jobs": 16, "kt_version": "v0.2.3post2"}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"


def fixture_build(machine: str) -> dict:
    return plan.make_plan(facts.parse(facts.load_dir(FIXTURES / machine))).to_dict()["build"]


def test_plans_of_recorded_machines_render_their_numa_choice():
    single = build.build_env(fixture_build("autodl-8352v-vgpu32"), "/usr/local/cuda")
    multi = build.build_env(fixture_build("dual-gold6430-64vcpu-4090"), "/usr/local/cuda")
    assert "USE_NUMA" not in single and multi["USE_NUMA"] == "1"
    assert single["CPU_INSTRUCT"] == multi["CPU_INSTRUCT"] == "FANCY"
    assert single["MAX_JOBS"] == single["CMAKE_BUILD_PARALLEL_LEVEL"] == "14"
    assert multi["TORCH_CUDA_ARCH_LIST"] == "8.9"


def test_plan_without_gpu_cannot_build():
    with pytest.raises(build.BuildSettingsError, match="the plan has no torch_cuda_arch_list for this host"):
        build.build_env(fixture_build("ci-kvm-2cpu-nogpu"), "/usr/local/cuda")

NVCC_126 = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.6, V12.6.85\n"
NVCC_130 = "Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n"
MEMINFO_64G = "MemTotal:       65859000 kB\nMemFree:        1000 kB\nMemAvailable:   62914560 kB\n"
GLIBCXX_12 = "GLIBCXX_3.4 GLIBCXX_3.4.29 GLIBCXX_3.4.30"
GLIBCXX_9 = "GLIBCXX_3.4 GLIBCXX_3.4.28"


def good_probe(**over):
    probe = {
        "driver": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.35.03",
        "nvcc": NVCC_126,
        "cuda_home": "/usr/local/cuda",
        "torch": {"version": "2.6.0+cu126", "cuda": "12.6"},
        "cpufeature": True,
        "runtime_libstdcxx": "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        "glibcxx_runtime": GLIBCXX_12,
        "glibcxx_compiler": GLIBCXX_12,
        "meminfo": MEMINFO_64G,
    }
    probe.update(over)
    return probe


def test_single_numa_plan_leaves_use_numa_out():
    env = build.build_env(PLAN_SINGLE, "/usr/local/cuda-12.6/")
    assert "USE_NUMA" not in env
    assert env == {
        "KTRANSFORMERS_FORCE_BUILD": "TRUE",
        "CPU_INSTRUCT": "FANCY",
        "TORCH_CUDA_ARCH_LIST": "8.9",
        "MAX_JOBS": "8",
        "CMAKE_BUILD_PARALLEL_LEVEL": "8",
        "CUDA_HOME": "/usr/local/cuda-12.6",
        "CUDA_PATH": "/usr/local/cuda-12.6",
        "CMAKE_ARGS": "-DCMAKE_MODULE_LINKER_FLAGS=-flto=8",
        "NINJA_STATUS": "[%f/%t %es] ",
        "NVCC_APPEND_FLAGS": "--split-compile=8",
    }


def test_multi_numa_plan_sets_use_numa():
    env = build.build_env(PLAN_MULTI, "/usr/local/cuda")
    assert env["USE_NUMA"] == "1"
    assert env["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    assert env["MAX_JOBS"] == env["CMAKE_BUILD_PARALLEL_LEVEL"] == "16"


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("use_numa", "0", "use_numa must be true or false"),
        ("cpu_instruct", "fancy", "exact, upper case"),
        ("torch_cuda_arch_list", "sm_90", "torch_cuda_arch_list must look like"),
        ("max_jobs", 0, "max_jobs must be a whole number"),
        ("max_jobs", True, "max_jobs must be a whole number"),
        ("kt_version", " ", "kt_version must name"),
    ],
)
def test_bad_settings_are_named(key, value, words):
    with pytest.raises(build.BuildSettingsError, match=words):
        build.settings({**PLAN_SINGLE, key: value})


def test_missing_settings_point_at_preflight():
    with pytest.raises(build.BuildSettingsError, match="missing build settings: max_jobs.*ktdeploy preflight"):
        build.settings({k: v for k, v in PLAN_SINGLE.items() if k != "max_jobs"})


def test_arch_list_with_spaces_and_ptx_is_normalised():
    assert build.settings({**PLAN_SINGLE, "torch_cuda_arch_list": "8.6 9.0+PTX"})["torch_cuda_arch_list"] == "8.6;9.0+PTX"


def test_relative_cuda_home_is_refused():
    with pytest.raises(build.BuildSettingsError, match="absolute"):
        build.build_env(PLAN_SINGLE, "cuda")


def test_stamp_changes_with_every_input_and_only_then():
    env = build.build_env(PLAN_SINGLE, "/usr/local/cuda")
    base = dict(source="sdist:0.2.1.post1", patches=["a", "b"], torch_version="2.6.0+cu126", env=env)
    key = build.stamp(**base)
    assert key == build.stamp(**{**base, "env": dict(reversed(list(env.items())))})
    variants = [
        {"source": "git:v0.2.3post2"},
        {"patches": ["a", "b2"]},
        {"patches": ["b", "a"]},
        {"torch_version": "2.6.1+cu126"},
        {"env": build.build_env({**PLAN_SINGLE, "max_jobs": 4}, "/usr/local/cuda")},
        {"env": build.build_env({**PLAN_SINGLE, "use_numa": True}, "/usr/local/cuda")},
    ]
    keys = {build.stamp(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_healthy_host_has_no_problems():
    assert build.build_problems(good_probe(), max_jobs=8) == []


def test_every_missing_piece_is_reported_at_once():
    probe = good_probe(driver="", nvcc="", torch=None, cpufeature=False)
    problems = " | ".join(build.build_problems(probe, max_jobs=8))
    assert "no NVIDIA driver" in problems
    assert "CUDA toolkit not found: no working /usr/local/cuda/bin/nvcc" in problems
    assert "torch does not import" in problems
    assert "cpufeature is missing" in problems


def test_cuda_major_mismatch_names_both_versions():
    problems = build.build_problems(good_probe(nvcc=NVCC_130), max_jobs=8)
    assert len(problems) == 1
    assert "CUDA major mismatch: nvcc in /usr/local/cuda is 13.0 but torch 2.6.0+cu126 was built for CUDA 12.6" in problems[0]


def test_minor_difference_is_fine():
    probe = good_probe(nvcc=NVCC_126, torch={"version": "2.5.1+cu124", "cuda": "12.4"})
    assert build.build_problems(probe, max_jobs=8) == []


def test_cpu_only_torch_is_refused():
    problems = build.build_problems(good_probe(torch={"version": "2.6.0+cpu", "cuda": ""}), max_jobs=8)
    assert problems == [p for p in problems if "CPU-only build" in p] and problems


def test_old_env_libstdcxx_is_refused():
    probe = good_probe(glibcxx_runtime=GLIBCXX_9, runtime_libstdcxx="/opt/conda/envs/kt/lib/libstdc++.so.6")
    (problem,) = build.build_problems(probe, max_jobs=8)
    assert problem.startswith("GLIBCXX too old: /opt/conda/envs/kt/lib/libstdc++.so.6 provides GLIBCXX_3.4.28, g++ builds for GLIBCXX_3.4.30")
    assert "libstdcxx-ng" in problem


def test_missing_compiler_is_reported():
    (problem,) = build.build_problems(good_probe(glibcxx_compiler=""), max_jobs=8)
    assert "no C++ compiler" in problem


def test_too_many_jobs_for_ram_suggests_a_number():
    (problem,) = build.build_problems(good_probe(), max_jobs=32)
    assert "not enough RAM for 32 build jobs: 60.0 GiB available" in problem
    assert "6 GiB per job needed; lower max_jobs to 10" in problem


def test_numa_log_must_agree_with_plan():
    on = "-- NUMA support is enabled\n-- NUMA library found: /usr/lib/x86_64-linux-gnu/libnuma.so - enabling NUMA support\n"
    off = "-- NUMA support is disabled\n-- NUMA library not found or user not set USE_NUMA - disabling NUMA support\n"
    silent_off = "-- NUMA support is enabled\n-- NUMA library not found or user not set USE_NUMA - disabling NUMA support\n"
    assert build.numa_log_problem(on, True) is None
    assert build.numa_log_problem(off, False) is None
    assert "install libnuma-dev" in build.numa_log_problem(silent_off, True)
    assert "rebuild without USE_NUMA" in build.numa_log_problem(on, False)
    assert build.numa_log_problem("", False) is not None


def test_driver_older_than_toolkit_major():
    smi = "| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |"
    assert build.driver_toolkit_problem(smi, NVCC_126) is None
    assert "supports CUDA up to 12.4 but the toolkit is 13.0" in build.driver_toolkit_problem(smi, NVCC_130)
    assert build.driver_toolkit_problem("", NVCC_130) is None


def test_version_dir_and_sources():
    assert build.version_dir("v0.2.3post2") == "0.2.3post2"
    assert build.version_dir("0.2.1.post1") == "0.2.1.post1"
    assert build.source_problem("sdist", "0.2.1.post1") is None
    assert "use ktransformers_source: git" in build.source_problem("sdist", "v0.2.3post2")
    assert "must be one of" in build.source_problem("zip", "v0.2.3post2")
    assert "names no archive" in build.source_problem("tarball", "0.2.1.post1")


def test_sdist_link_from_a_pep503_page():
    page = '<html><body><a href="../../packages/ktransformers-0.2.1.tar.gz#sha256=aa">x</a>\n' \
           '<a href="../../packages/ktransformers-0.2.1.post1.tar.gz#sha256=bb">y</a></body></html>'
    link = build.sdist_link(page, "http://10.203.0.1:3141/simple/ktransformers/", "ktransformers-0.2.1.post1.tar.gz")
    assert link == {"url": "http://10.203.0.1:3141/packages/ktransformers-0.2.1.post1.tar.gz", "sha256": "bb"}
    with pytest.raises(build.BuildSettingsError, match="not listed"):
        build.sdist_link(page, "http://x/simple/ktransformers/", "ktransformers-9.tar.gz")


def test_series_files_of_the_repo_load():
    from ktdeploy.resources import share_dir

    root = share_dir() / "patches" / "ktransformers"
    old = build.load_series(str(root), "0.2.1.post1")
    new = build.load_series(str(root), "v0.2.3post2")
    # the tag shares 0001 and 0002; only the sdist needs 0003 (the tag's IQ1_S/IQ2_XXS kernels) and 0004
    # (the tag's OpenAI model list and finish_reason)
    assert old[:2] == new and [p["name"][:4] for p in old] == ["0001", "0002", "0003", "0004"]
    assert old[0]["name"].startswith("0001-") and "llamafile_sgemm" in old[0]["content"]
    assert build.series_digest(old) != build.series_digest(new) == build.series_digest(old[:2])
    with pytest.raises(build.BuildSettingsError, match="no patch series for KTransformers v9"):
        build.load_series(str(root), "v9")


def test_series_comments_and_blank_lines():
    assert build.series_entries("# c\n\n0001-a.patch  # note\n../x/0002-b.patch\n") == ["0001-a.patch", "../x/0002-b.patch"]


def test_pip_args_text_takes_lists_and_strings():
    assert build.pip_args_text(["--index-url", "http://10.203.0.1:3141/simple/", "--find-links", "/srv/my wheels"]) == \
        "--index-url http://10.203.0.1:3141/simple/ --find-links '/srv/my wheels'"
    assert build.pip_args_text("--no-index") == "--no-index"
    assert build.pip_args_text(None) == ""


@pytest.mark.parametrize("cmake,word", [("", "cmake not found"), ("cmake version 3.13.4\n", "older than 3.16")])
def test_missing_or_old_cmake_is_a_problem(cmake, word):
    (problem,) = build.build_problems(good_probe(cmake=cmake), max_jobs=8)
    assert word in problem and "pip install cmake" in problem


def test_pip_cmake_4_is_fine():
    assert build.build_problems(good_probe(cmake="cmake version 4.4.3\n"), max_jobs=8) == []


def test_extensions_build_together_only_where_the_plan_says_so():
    together = build.build_env(fixture_build("dual-gold6430-64vcpu-4090"), "/usr/local/cuda")
    one_by_one = build.build_env(fixture_build("autodl-8352v-vgpu32"), "/usr/local/cuda")
    assert together["DIST_EXTRA_CONFIG"] == build.EXTRA_CONFIG_NAME
    assert "DIST_EXTRA_CONFIG" not in one_by_one
    assert "DIST_EXTRA_CONFIG" not in build.build_env(PLAN_SINGLE, "/usr/local/cuda")  # a plan from before the setting


def test_building_together_counts_the_cuda_jobs_in_the_ram_check():
    assert build.peak_jobs(PLAN_SINGLE) == 8
    assert build.peak_jobs({**PLAN_SINGLE, "parallel_extensions": True}) == 8 + plan.CUDA_EXT_JOBS
    # 60 GiB available: 10 jobs of 6 GiB fit, 8 + 3 do not
    (problem,) = build.build_problems(good_probe(), max_jobs=build.peak_jobs({**PLAN_SINGLE, "parallel_extensions": True}))
    assert "not enough RAM for 11 build jobs" in problem


def test_parallel_extensions_must_be_a_bool():
    with pytest.raises(build.BuildSettingsError, match="parallel_extensions must be true or false, not 'yes'"):
        build.settings({**PLAN_SINGLE, "parallel_extensions": "yes"})


def test_building_together_does_not_change_the_stamp():
    """How the build is scheduled changes nothing in the wheel: hosts built before keep their build."""
    base = dict(source="sdist:0.2.1.post1", patches=["a"], torch_version="2.6.0+cu126")
    env = build.build_env(PLAN_SINGLE, "/usr/local/cuda")
    env_together = build.build_env({**PLAN_SINGLE, "parallel_extensions": True}, "/usr/local/cuda")
    assert env != env_together
    assert build.stamp(**base, env=env) == build.stamp(**base, env=env_together)


def test_lto_code_generation_runs_as_many_jobs_as_the_plan_allows():
    """pybind11's bare -flto compiles the LTO partitions one by one under ninja; -flto=N on the
    module's link line spreads them over the plan's jobs (setup.py splits $CMAKE_ARGS at spaces)."""
    env = build.build_env({**PLAN_SINGLE, "max_jobs": 3}, "/usr/local/cuda")
    assert env["CMAKE_ARGS"].split(" ") == ["-DCMAKE_MODULE_LINKER_FLAGS=-flto=3"]
    assert build.build_env(PLAN_MULTI, "/usr/local/cuda")["CMAKE_ARGS"] == "-DCMAKE_MODULE_LINKER_FLAGS=-flto=16"


def test_scheduling_and_log_settings_do_not_change_the_stamp():
    """LTO jobs, nvcc's optimizer threads and ninja's status line change how the build runs and what
    its log shows (nvcc's threads also the Marlin kernels' register allocation): hosts built before
    them keep their build."""
    base = dict(source="sdist:0.2.1.post1", patches=["a"], torch_version="2.6.0+cu126")
    env = build.build_env(PLAN_SINGLE, "/usr/local/cuda")
    before = {k: v for k, v in env.items() if k not in ("CMAKE_ARGS", "NINJA_STATUS", "NVCC_APPEND_FLAGS")}
    assert build.stamp(**base, env=env) == build.stamp(**base, env=before)
    assert build.stamp(**base, env=env) != build.stamp(**base, env={**env, "MAX_JOBS": "9"})


def test_nvcc_optimizes_the_one_big_source_on_the_plan_s_jobs():
    assert build.build_env({**PLAN_SINGLE, "max_jobs": 3}, "/usr/local/cuda")["NVCC_APPEND_FLAGS"] == "--split-compile=3"
    # one job: nothing to split over (nvcc would ignore --split-compile=1)
    assert "NVCC_APPEND_FLAGS" not in build.build_env({**PLAN_SINGLE, "max_jobs": 1}, "/usr/local/cuda")
    # ktransformers_nvcc_split_compile: false
    assert "NVCC_APPEND_FLAGS" not in build.build_env(PLAN_SINGLE, "/usr/local/cuda", False)
