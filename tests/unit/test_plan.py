"""The plan of every fixture machine, worked out by hand from the rules in docs/plan.md."""

import json
from pathlib import Path

import pytest
import yaml

from ktdeploy import catalog, downloads, facts, plan
from ktdeploy.errors import BadInput

FIXTURES = Path(__file__).parent.parent / "fixtures" / "facts"
GB = 10**9


def facts_of(machine: str, **changes) -> facts.Facts:
    raw = facts.load_dir(FIXTURES / machine)
    for name, text in changes.items():
        name = name.replace("_", "-").replace("-txt", ".txt").replace("-csv", ".csv").replace("-max", ".max")
        if text is None:
            raw.pop(name, None)
        else:
            raw[name] = text
    return facts.parse(raw)


def plan_of(machine: str, variant=None, **kw) -> plan.Plan:
    return plan.make_plan(facts_of(machine), variant, **kw)


def cpu(model, sockets, cores, threads, physical, effective, quota, numa, amx, avx512, avx2=True):
    return {
        "model": model, "vendor": "AuthenticAMD" if "AMD" in model else "GenuineIntel", "sockets": sockets,
        "cores_per_socket": cores, "threads_per_core": threads, "logical_cpus": sockets * cores * threads,
        "physical_cores": physical, "effective_cpus": effective, "cgroup_quota": quota, "numa_nodes": numa,
        "amx": amx, "avx512": avx512, "avx2": avx2,
    }  # fmt: skip


# Fixtures without a recorded Python env: the flash-attn route waits for the torch role.
UNDECIDED = {"route": "undecided", "wheel": "", "reason": "decided by the torch role once torch is in the env (no torch there yet)"}


H200_SDPA = {"route": "sdpa", "wheel": "", "reason": (
    "no prebuilt flash-attn for torch 2.11.0+cu130, CUDA 13.0, Python 3.12 (release 2.8.3 has CUDA 12 wheels for "
    "torch 2.4-2.8): ktdeploy's flash_attn_func on torch's scaled_dot_product_attention")}


def build(use_numa, instruct, arch, jobs, together, kt="v0.2.3post2", flash_attn=UNDECIDED):
    return {"use_numa": use_numa, "cpu_instruct": instruct, "torch_cuda_arch_list": arch, "max_jobs": jobs,
            "parallel_extensions": together, "kt_version": kt,
            "flash_attn": flash_attn}


def serve(cpu_infer, rule, layers, supervisor, shipped=False):
    return {
        "engine": "ktransformers", "cpu_infer": cpu_infer, "optimize_rule": rule, "optimize_rule_shipped": shipped,
        "n_gpu_layers": layers, "port": 10002, "supervisor": supervisor,
    }  # fmt: skip


FULL = round(140.218e9 * 1.05)  # UD-IQ1_S plus the config repo, +5 %
SINGLE, MULTI = "DeepSeek-V3-Chat.yaml", "DeepSeek-V3-Chat-multi-gpu.yaml"

EXPECTED = {
    # The tutorial's AutoDL container: 16 CPUs and 90 GB of a 2-socket host; NUMA build would need 2 copies.
    "autodl-8352v-vgpu32": dict(
        cpu=cpu("Intel(R) Xeon(R) Platinum 8352V CPU @ 2.10GHz", 2, 36, 2, 72, 16, 16.0, 2, False, True),
        memory_gib=90.0,
        gpus=[("NVIDIA vGPU-32GB", 32760, "8.9")],
        build=build(False, "FANCY", "8.9", 14, False),
        serve=serve(17, SINGLE, 10, "supervisord"),
        disk_needed=FULL,
        problems=[],
        warnings={"numa_off", "ram_below_model", "cpu_quota", "memory_quota"},
    ),
    # The tutorial's dual-socket Gold 6430 with 64 vCPUs: NUMA build on (480 GiB >= 2 x 140.2 GB x 1.05).
    "dual-gold6430-64vcpu-4090": dict(
        cpu=cpu("Intel(R) Xeon(R) Gold 6430", 2, 32, 2, 64, 64, 64.0, 2, True, True),
        memory_gib=480.0,
        gpus=[("NVIDIA GeForce RTX 4090", 24564, "8.9")],
        build=build(True, "FANCY", "8.9", 64, True),
        serve=serve(65, SINGLE, 7, "supervisord"),
        disk_needed=FULL,
        problems=[],
        warnings={"amx_unused", "cpu_quota", "memory_quota"},
    ),
    # NPS4: 4 nodes x 140.2 GB x 1.05 = 548 GiB > 503.6 GiB, so no NUMA build.
    "epyc-9654-nps4-2xa6000": dict(
        cpu=cpu("AMD EPYC 9654 96-Core Processor", 1, 96, 2, 96, 96, None, 4, False, True),
        memory_gib=503.6,
        gpus=[("NVIDIA RTX A6000", 49140, "8.6")] * 2,
        build=build(False, "FANCY", "8.6", 83, False),
        serve=serve(97, MULTI, 40, "systemd"),
        disk_needed=FULL,
        problems=[],
        warnings={"numa_off"},
    ),
    # SNC2: 4 nodes, but 1007 GiB hold 4 copies (548 GiB).
    "spr-8480-snc2-h100": dict(
        cpu=cpu("Intel(R) Xeon(R) Platinum 8480+", 2, 56, 2, 112, 112, None, 4, True, True),
        memory_gib=1007.4,
        gpus=[("NVIDIA H100 80GB HBM3", 81559, "9.0")],
        build=build(True, "FANCY", "9.0", 112, True),
        serve=serve(113, SINGLE, 33, "systemd"),
        disk_needed=FULL,
        problems=[],
        warnings={"amx_unused"},
    ),
    # Recorded on the CI machine: nothing fits.
    "ci-kvm-2cpu-nogpu": dict(
        cpu=cpu("Intel(R) Xeon(R) Processor", 1, 2, 1, 2, 2, None, 1, False, True),
        memory_gib=23.5,
        gpus=[],
        build=build(False, "FANCY", None, 2, False),
        serve=serve(3, None, 0, "supervisord"),
        disk_needed=FULL,
        problems=["ram_below_minimum", "disk_full", "no_gpu"],
        warnings={"vm_cpus"},
    ),
    # Recorded on the team's GPU machine (a KVM guest, no systemd): the GPU and RAM fit, the 64 GiB
    # disk does not; one NUMA node, so no NUMA build.
    "h200-ubuntu2404-16vcpu": dict(
        cpu=cpu("Intel(R) Xeon(R) Processor", 1, 16, 1, 16, 16, None, 1, True, True),
        memory_gib=125.9,
        gpus=[("NVIDIA H200", 143771, "9.0")],
        # its torch env was recorded too (python-env.json): torch 2.11 / CUDA 13 has no flash-attn wheel
        build=build(False, "FANCY", "9.0", 16, True, flash_attn=H200_SDPA),
        serve=serve(17, SINGLE, 61, "supervisord"),
        disk_needed=FULL,
        problems=["disk_full"],
        warnings={"ram_below_model", "amx_unused", "vm_cpus"},
    ),
    # 8 GPUs: the two-GPU rule, six idle; Zen 2 has no AVX-512.
    "dgx-a100-8gpu": dict(
        cpu=cpu("AMD EPYC 7742 64-Core Processor", 2, 64, 2, 128, 128, None, 2, False, False),
        memory_gib=2015.5,
        gpus=[("NVIDIA A100-SXM4-80GB", 81920, "8.0")] * 8,
        build=build(True, "AVX2", "8.0", 128, True),
        serve=serve(129, MULTI, 61, "systemd"),
        disk_needed=FULL,
        problems=[],
        warnings={"gpus_idle"},
    ),
    # Cascade Lake: AVX-512 with VNNI but no VPOPCNTDQ, so not FANCY.
    "centos7-6226r-2x3090": dict(
        cpu=cpu("Intel(R) Xeon(R) Gold 6226R CPU @ 2.90GHz", 2, 16, 2, 32, 32, None, 2, False, True),
        memory_gib=376.4,
        gpus=[("NVIDIA GeForce RTX 3090", 24576, "8.6")] * 2,
        build=build(True, "AVX512", "8.6", 32, True),
        serve=serve(33, MULTI, 18, "systemd"),
        disk_needed=FULL,
        problems=[],
        warnings=set(),
    ),
    # The budget RTX 2080 Ti 22 GB: Turing, so ktdeploy's torch-linear rule.
    "desktop-9900k-2080ti22g": dict(
        cpu=cpu("Intel(R) Core(TM) i9-9900K CPU @ 3.60GHz", 1, 8, 2, 8, 8, None, 1, False, False),
        memory_gib=125.7,
        gpus=[("NVIDIA GeForce RTX 2080 Ti", 22528, "7.5")],
        build=build(False, "AVX2", "7.5", 8, True),
        serve=serve(9, "DeepSeek-V3-Chat-torch-linear.yaml", 6, "systemd", shipped=True),
        disk_needed=FULL,
        problems=[],
        warnings={"pre_ampere", "ram_below_model"},
    ),
    # 10 GB GPU; 110.8 GB of the shards already there, so only 29.4 GB (+5 %) to download.
    "ws-5950x-3080-partial": dict(
        cpu=cpu("AMD Ryzen 9 5950X 16-Core Processor", 1, 16, 2, 16, 16, None, 1, False, False),
        memory_gib=62.7,
        gpus=[("NVIDIA GeForce RTX 3080", 10240, "8.6")],
        build=build(False, "AVX2", "8.6", 9, False),
        serve=serve(17, SINGLE, 0, "systemd"),
        disk_needed=30909522168,
        problems=["no_gpu"],
        warnings={"ram_below_model"},
    ),
}


def test_every_fixture_machine_has_an_expected_plan():
    assert sorted(EXPECTED) == sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    assert len(EXPECTED) >= 8


@pytest.mark.parametrize("machine", sorted(EXPECTED))
def test_full_plan_of_each_machine(machine):
    want = EXPECTED[machine]
    d = plan_of(machine, host=machine).to_dict()
    assert d["host"] == machine
    assert d["cpu"] == want["cpu"]
    assert d["memory_gib"] == want["memory_gib"]
    assert [(g["name"], g["memory_mib"], g["compute_capability"]) for g in d["gpus"]] == want["gpus"]
    assert d["build"] == want["build"]
    assert d["serve"] == want["serve"]
    assert d["disk"]["needed_bytes"] == want["disk_needed"]
    assert d["model"]["variant"] == "UD-IQ1_S" and len(d["model"]["files"]) == 3
    assert [p["code"] for p in d["problems"]] == want["problems"]
    assert {w["code"] for w in d["warnings"]} == want["warnings"]
    assert d["fits"] is (not want["problems"])
    json.dumps(d)  # serialisable as it is


def test_partial_download_counts_complete_and_incomplete_shards():
    d = plan_of("ws-5950x-3080-partial").to_dict()["model"]
    assert d["present_bytes"] == 49346124576 + 49434235264 + 12000000000
    assert d["to_download_bytes"] == 140_200_000_000 - d["present_bytes"] + 18_000_000


def test_messages_carry_the_figures():
    p = plan_of("autodl-8352v-vgpu32")
    numa = next(w.message for w in p.warnings if w.code == "numa_off")
    assert "2 NUMA nodes" in numa and "274.2 GiB" in numa and "90.0 GiB" in numa
    quota = next(w.message for w in p.warnings if w.code == "cpu_quota")
    assert "16 of the 144 CPUs" in quota and "only 8 physical cores" in quota
    ci = plan_of("ci-kvm-2cpu-nogpu")
    assert "none found" in next(x.message for x in ci.problems if x.code == "no_gpu")
    ws = plan_of("ws-5950x-3080-partial")
    assert "NVIDIA GeForce RTX 3080 10240 MiB" in ws.problems[0].message


# --- NUMA rule -----------------------------------------------------------------------------------


def test_numa_needs_one_copy_per_node_plus_five_percent():
    need = 140.2 * GB * 2 * 1.05
    just = facts_of("dual-gold6430-64vcpu-4090", memory_max=f"{int(need)}\n")
    below = facts_of("dual-gold6430-64vcpu-4090", memory_max=f"{int(need) - 4096}\n")
    assert plan.make_plan(just).use_numa is True
    p = plan.make_plan(below)
    assert p.use_numa is False and "numa_off" in {w.code for w in p.warnings}


def test_bigger_variant_turns_numa_off_on_snc_host():
    p = plan_of("spr-8480-snc2-h100", "Q4_K_M")
    assert p.use_numa is False
    assert {w.code for w in p.warnings} == {"numa_off", "amx_unused"}
    assert p.fits


def test_single_node_never_uses_numa_and_never_warns():
    p = plan_of("desktop-9900k-2080ti22g", "UD-IQ1_S")
    assert p.use_numa is False and "numa_off" not in {w.code for w in p.warnings}


# --- problems and their fixes ------------------------------------------------------------------


def test_unsupported_variant_on_the_legacy_engine():
    p = plan_of("spr-8480-snc2-h100", "UD-IQ1_M")
    assert [x.code for x in p.problems] == ["unsupported_variant"]
    assert "upstream #825" in p.problems[0].message
    ok = plan_of("spr-8480-snc2-h100", "UD-IQ1_M", engine="llama.cpp")
    assert ok.fits and ok.optimize_rule is None and ok.kt_version is None and ok.use_numa is False


def test_kt_version_before_iq1s_support():
    p = plan_of("spr-8480-snc2-h100", kt_version="v0.2.1")
    assert [x.code for x in p.problems] == ["kt_version_too_old"]
    assert "v0.2.3" in p.problems[0].message
    assert plan_of("spr-8480-snc2-h100", "Q4_K_M", kt_version="0.2.1.post1").fits


def test_v023_does_not_build_on_cascade_lake():
    p = plan_of("centos7-6226r-2x3090", kt_version="v0.2.3")
    assert [x.code for x in p.problems] == ["kt_version_cpu"]
    assert plan_of("centos7-6226r-2x3090", kt_version="v0.2.3post2").fits
    assert plan_of("spr-8480-snc2-h100", kt_version="v0.2.3").fits  # has VPOPCNTDQ


def test_unreadable_version_is_bad_input():
    with pytest.raises(BadInput, match="v0.2.3post2"):
        plan_of("spr-8480-snc2-h100", kt_version="latest")


def test_cpu_without_avx2():
    lscpu = (FIXTURES / "ci-kvm-2cpu-nogpu" / "lscpu.txt").read_text()
    flags = next(line for line in lscpu.splitlines() if line.startswith("Flags:"))
    old = lscpu.replace(flags, "Flags: fpu vme de pse tsc msr pae mce cx8 sse sse2 ssse3 sse4_1 sse4_2 avx")
    p = plan.make_plan(facts_of("spr-8480-snc2-h100", lscpu_txt=old))
    assert [x.code for x in p.problems] == ["no_avx2"] and p.cpu_instruct is None


def test_gpu_below_14_gib_and_no_gpu():
    small = facts_of("spr-8480-snc2-h100", nvidia_smi_csv="0, NVIDIA GeForce RTX 4080, 14335, 550.54.15, 8.9\n")
    assert [x.code for x in plan.make_plan(small).problems] == ["no_gpu"]
    enough = facts_of("spr-8480-snc2-h100", nvidia_smi_csv="0, Tesla T4 16GB, 15360, 535.183.01, 7.5\n")
    p = plan.make_plan(enough)
    assert p.fits and p.optimize_rule == "DeepSeek-V3-Chat-torch-linear.yaml"
    none = facts_of("spr-8480-snc2-h100", nvidia_smi_csv=None)
    p = plan.make_plan(none)
    assert [x.code for x in p.problems] == ["no_gpu"] and p.torch_cuda_arch_list is None and p.optimize_rule is None
    cpu_only = plan.make_plan(none, engine="llama.cpp")
    assert cpu_only.fits and {w.code for w in cpu_only.warnings} == {"cpu_only"}  # amx_unused is about KTransformers


def test_gpu_without_compute_capability():
    f = facts_of("spr-8480-snc2-h100", nvidia_smi_csv="0, NVIDIA H100 80GB HBM3, 81559, 550.54.15, [N/A]\n")
    assert [x.code for x in plan.make_plan(f).problems] == ["gpu_unknown_cc"]


def test_ram_below_minimum_names_variants_that_would_fit():
    f = facts_of("spr-8480-snc2-h100", memory_max=str(100 * 2**30))
    p = plan.make_plan(f, "Q4_K_M")
    assert [x.code for x in p.problems] == ["ram_below_minimum"]
    assert "one of UD-IQ1_S, UD-IQ1_M, UD-IQ2_XXS, UD-Q2_K_XL" in p.problems[0].message
    assert plan.make_plan(f, "UD-IQ1_S").fits


def test_disk_must_hold_what_is_left_plus_five_percent():
    need = round(140.218e9 * 1.05)
    assert plan.make_plan(facts_of("spr-8480-snc2-h100", df_txt=f"Avail Mounted on\n{need} /data\n")).fits
    short = plan.make_plan(facts_of("spr-8480-snc2-h100", df_txt=f"Avail Mounted on\n{need - 1} /data\n"))
    assert [x.code for x in short.problems] == ["disk_full"]
    assert "/data" in short.problems[0].message


def test_complete_download_needs_almost_no_disk():
    files = "".join(f"50000000000 DeepSeek-R1-GGUF/{f}\n" for f in catalog.variant("UD-IQ1_S").files)
    p = plan.make_plan(facts_of("spr-8480-snc2-h100", model_files_txt=files, df_txt="Avail Mounted on\n20000000 /data\n"))
    assert p.present_bytes == 140.2 * GB and p.fits


def test_unknown_engine_and_variant_are_bad_input():
    with pytest.raises(BadInput, match="unknown engine"):
        plan_of("spr-8480-snc2-h100", engine="vllm")
    with pytest.raises(BadInput, match="UD-IQ1_S, UD-IQ1_M"):
        plan_of("spr-8480-snc2-h100", "IQ1_S")


def test_the_demo_model_fits_the_ci_machine_on_llama_cpp():
    p = plan_of("ci-kvm-2cpu-nogpu", "gemma3-270m", engine="llama.cpp")
    assert p.fits and [w.code for w in p.warnings] == ["cpu_only"]
    d = p.to_dict()["model"]
    assert d["source"] == "package" and d["files"] == [] and d["to_download_bytes"] == 253_113_024
    assert d["present_bytes"] == 0 and d["min_ram_gib"] == 1


def test_the_demo_model_is_refused_on_ktransformers_and_by_downloads():
    p = plan_of("spr-8480-snc2-h100", "gemma3-270m")
    assert [x.code for x in p.problems] == ["unsupported_variant"]
    assert "llama.cpp engine" in p.problems[0].message
    assert downloads.download_items("gemma3-270m", "modelscope", "/m") == []
    with pytest.raises(BadInput, match="PyPI package"):
        catalog.variant("gemma3-270m").gguf_dir("/m")


def test_the_demo_model_still_needs_some_ram_and_disk():
    tiny = plan.make_plan(facts_of("ci-kvm-2cpu-nogpu", memory_max=f"{512 * 2**20}\n",
                                   df_txt="Avail Mounted on\n100000000 /\n"), "gemma3-270m", engine="llama.cpp")
    assert [x.code for x in tiny.problems] == ["ram_below_minimum", "disk_full"]


# --- smaller rules -------------------------------------------------------------------------------


def test_max_jobs_bounds():
    assert plan.max_jobs(64, 2 * 2**30) == 1
    assert plan.max_jobs(64, 64 * 2**30) == 10  # (64 - 4) / 6
    assert plan.max_jobs(4, 1024 * 2**30) == 4


def test_arch_list_is_distinct_and_ascending():
    gpus = tuple(
        facts.Gpu(i, "x", 24000, "550", cc) for i, cc in enumerate(["8.9", "7.5", "10.0", "8.9", "8.6"])
    )
    assert plan.torch_cuda_arch_list(gpus) == "7.5;8.6;8.9;10.0"


def test_pre_ampere_among_two_gpus_picks_the_multi_gpu_torch_rule():
    f = facts_of("centos7-6226r-2x3090", nvidia_smi_csv="0, NVIDIA GeForce RTX 3090, 24576, 535, 8.6\n1, Tesla V100-SXM2-32GB, 32768, 535, 7.0\n")
    p = plan.make_plan(f)
    assert (p.optimize_rule, p.optimize_rule_shipped) == ("DeepSeek-V3-Chat-multi-gpu-torch-linear.yaml", True)
    assert p.torch_cuda_arch_list == "7.0;8.6"
    assert "Tesla V100-SXM2-32GB (compute capability 7.0)" in next(w.message for w in p.warnings if w.code == "pre_ampere")


def test_port_can_be_chosen():
    assert plan_of("spr-8480-snc2-h100", port=8080).to_dict()["serve"]["port"] == 8080


# --- the optimize rules ktdeploy ships ------------------------------------------------------------


@pytest.mark.parametrize("name", ["DeepSeek-V3-Chat-torch-linear.yaml", "DeepSeek-V3-Chat-multi-gpu-torch-linear.yaml"])
def test_shipped_rules_keep_experts_on_the_cpu_and_use_no_marlin(name):
    rules = yaml.safe_load(plan.shipped_rule_path(name).read_text())
    kwargs = [r["replace"].get("kwargs", {}) for r in rules]
    assert not any("Marlin" in str(v) for kw in kwargs for v in kw.values())
    linears = [r for r in rules if r["match"].get("class") == "torch.nn.Linear"]
    assert linears and all(r["replace"]["kwargs"]["generate_op"] == "KLinearTorch" for r in linears)
    experts = [r for r in rules if r["replace"]["class"].endswith("KTransformersExperts")]
    assert experts and all(r["replace"]["kwargs"]["generate_device"] == "cpu" for r in experts)


def test_multi_gpu_rule_puts_every_layer_on_exactly_one_gpu():
    import re

    rules = yaml.safe_load(plan.shipped_rule_path("DeepSeek-V3-Chat-multi-gpu-torch-linear.yaml").read_text())
    attn = [r for r in rules if r["match"].get("name", "").endswith("self_attn$")]
    for layer in range(61):
        name = f"model.layers.{layer}.self_attn"
        devices = [r["replace"]["kwargs"]["generate_device"] for r in attn if re.match(r["match"]["name"], name)]
        assert devices == (["cuda:0"] if layer < 30 else ["cuda:1"]), layer


def test_unknown_shipped_rule_is_bad_input():
    with pytest.raises(BadInput):
        plan.shipped_rule_path("DeepSeek-V3-Chat.yaml")


def test_flash_attn_route_follows_the_envs_torch():
    """The facts' python-env.json (the attention probe) decides build.flash_attn, as the torch role will."""
    raw = facts.load_dir(FIXTURES / "h200-ubuntu2404-16vcpu")
    h200_env = {"python": "3.12", "torch": "2.11.0+cu130", "cuda": "13.0", "cxx11abi": True, "flash_attn": "", "shim": ""}
    route = plan.make_plan(facts.parse({**raw, "python-env.json": json.dumps(h200_env)})).to_dict()["build"]["flash_attn"]
    assert route["route"] == "sdpa" and "torch 2.11.0+cu130" in route["reason"]
    older = dict(h200_env, torch="2.6.0+cu124", cuda="12.4", cxx11abi=False)
    route = plan.make_plan(facts.parse({**raw, "python-env.json": json.dumps(older)})).to_dict()["build"]["flash_attn"]
    assert route["route"] == "wheel"
    assert route["wheel"].endswith("flash_attn-2.8.3%2Bcu12torch2.6cxx11abiFALSE-cp312-cp312-linux_x86_64.whl")
    llama = plan.make_plan(facts.parse(raw), engine="llama.cpp").to_dict()["build"]["flash_attn"]
    assert llama is None


# --- the generated tiny DeepSeek-V3 (ktdeploy/lab/tiny_dsv3.py) -----------------------------------------


def test_tiny_iq1s_fits_the_h200_on_ktransformers_v0_2_3post2():
    p = plan_of("h200-ubuntu2404-16vcpu", "tiny-dsv3-iq1s", engine="ktransformers", kt_version="v0.2.3post2")
    assert p.problems == [] and p.fits
    d = p.to_dict()
    assert d["model"]["source"] == "generated" and d["model"]["files"] == ["tiny-dsv3-iq1s/gguf/tiny-dsv3-iq1s.gguf"]
    assert d["model"]["to_download_bytes"] == catalog.variant("tiny-dsv3-iq1s").bytes  # no R1 config repo
    assert d["serve"]["optimize_rule"] == SINGLE and d["build"]["kt_version"] == "v0.2.3post2"


def test_tiny_k_runs_on_0_2_1_post1_and_tiny_iq1s_only_with_the_backport(monkeypatch):
    assert plan_of("h200-ubuntu2404-16vcpu", "tiny-dsv3-k", kt_version="v0.2.1.post1").problems == []
    # the 0.2.1.post1 series carries 0003 (v0.2.3post2's IQ1_S/IQ2_XXS kernels): the tutorial's patched sdist
    assert plan_of("h200-ubuntu2404-16vcpu", "tiny-dsv3-iq1s", kt_version="v0.2.1.post1").problems == []
    assert plan_of("spr-8480-snc2-h100", "UD-IQ1_S", kt_version="0.2.1.post1").fits
    monkeypatch.setattr(catalog, "kt_backports", lambda: [])
    old = plan_of("h200-ubuntu2404-16vcpu", "tiny-dsv3-iq1s", kt_version="v0.2.1.post1")
    assert [x.code for x in old.problems] == ["kt_version_too_old"] and "v0.2.3" in old.problems[0].message


def test_kernel_version_counts_the_series_backports():
    assert str(plan.kernel_version("0.2.1.post1")) == "0.2.3.post2"
    assert str(plan.kernel_version("v0.2.1")) == "0.2.1"  # no series for it: no backport
    assert str(plan.kernel_version("v0.2.3post2")) == "0.2.3.post2"


def test_tiny_models_fit_the_ci_machine_on_llama_cpp():
    for name in catalog.generated_names():
        p = plan_of("ci-kvm-2cpu-nogpu", name, engine="llama.cpp")
        assert p.fits and [w.code for w in p.warnings] == ["cpu_only"], name


def test_tiny_model_on_ktransformers_still_needs_a_gpu():
    p = plan_of("ci-kvm-2cpu-nogpu", "tiny-dsv3-k")
    assert [x.code for x in p.problems] == ["no_gpu"]


def test_tiny_model_present_on_the_host_counts():
    v = catalog.variant("tiny-dsv3-iq1s")
    p = plan.make_plan(facts_of("ci-kvm-2cpu-nogpu", model_files_txt=f"{v.bytes} {v.files[0]}\n"), v.name,
                       engine="llama.cpp")
    assert p.present_bytes == v.bytes and p.to_download_bytes == 0


def test_generated_models_are_in_the_catalog_and_download_nothing():
    assert catalog.generated_names() == ["tiny-dsv3-iq1s", "tiny-dsv3-k"]
    assert set(catalog.generated_names()) <= set(catalog.all_names())
    assert not set(catalog.generated_names()) & set(catalog.names())  # not R1 variants: never offered as such
    for name in catalog.generated_names():
        v = catalog.variant(name)
        assert v.generated and not v.packaged and not v.downloadable and v.source == "generated"
        assert v.engines == ("ktransformers", "llama.cpp") and v.min_ram_gib == 1 and v.shards == 1
        assert downloads.download_items(name, "modelscope", "/m") == []
        with pytest.raises(BadInput, match="written on the spot"):
            downloads.item_names(name)
    assert catalog.variant("tiny-dsv3-iq1s").min_kt_version == "v0.2.3"
    assert catalog.variant("tiny-dsv3-k").min_kt_version == "v0.2.1.post1"
    assert catalog.variant("gemma3-270m").source == "package" and catalog.variant("UD-IQ1_S").source == "gguf_repo"


# -- where the model lives: the plan carries the paths every role and `render` read ----------------------


@pytest.mark.parametrize(("variant", "gguf_dir", "gguf_file"), [
    ("UD-IQ1_S", "/data/m/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S",
     "/data/m/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf"),
    ("UD-IQ2_XXS", "/data/m/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ2_XXS",
     "/data/m/DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ2_XXS/DeepSeek-R1-UD-IQ2_XXS-00001-of-00004.gguf"),
])
def test_plan_carries_the_served_paths_of_its_variant(variant, gguf_dir, gguf_file):
    m = plan_of("autodl-8352v-vgpu32", variant, model_dir="/data/m").to_dict()["model"]
    assert (m["dir"], m["gguf_dir"], m["config_dir"], m["gguf_file"]) == (
        "/data/m", gguf_dir, "/data/m/DeepSeek-R1", gguf_file)
    # the download writes exactly there: the shards' repo paths under the item's dest
    shards, config = downloads.download_items(variant, "modelscope", m["dir"])
    assert f"{shards['dest']}/{m['files'][0]}" == gguf_file and config["dest"] == m["config_dir"]


def test_plan_carries_the_generated_model_layout_and_none_for_a_packaged_one():
    m = plan_of("ci-kvm-2cpu-nogpu", "tiny-dsv3-k", engine="llama.cpp", model_dir="/m").to_dict()["model"]
    assert (m["gguf_dir"], m["config_dir"], m["gguf_file"]) == (
        "/m/tiny-dsv3-k/gguf", "/m/tiny-dsv3-k/config", "/m/tiny-dsv3-k/gguf/tiny-dsv3-k.gguf")
    m = plan_of("ci-kvm-2cpu-nogpu", "gemma3-270m", engine="llama.cpp", model_dir="/m").to_dict()["model"]
    assert (m["dir"], m["gguf_dir"], m["config_dir"], m["gguf_file"]) == ("/m", None, None, None)


def test_plan_model_dir_defaults_to_what_the_base_role_computes():
    from ktdeploy import rolevars

    want = rolevars.host_vars("gpu1", {})["base_model_dir"]
    assert plan_of("autodl-8352v-vgpu32").to_dict()["model"]["dir"] == want == "/srv/ktdeploy/models"
    assert rolevars.host_vars("gpu1", {"base_data_dir": "/data"})["plan_model_dir"] == "/data/models"
