import subprocess
from pathlib import Path

import pytest

from ktdeploy import facts
from ktdeploy.errors import BadInput

FIXTURES = Path(__file__).parent.parent / "fixtures" / "facts"


def load(machine: str) -> facts.Facts:
    return facts.parse(facts.load_dir(FIXTURES / machine))


def test_indented_and_flat_lscpu_layouts_read_alike():
    indented = (FIXTURES / "dual-gold6430-64vcpu-4090" / "lscpu.txt").read_text()
    flat = "\n".join(line.strip() for line in indented.splitlines())
    assert indented != flat
    a, b = facts.parse_lscpu(indented), facts.parse_lscpu(flat)
    assert a == b
    assert (a.sockets, a.cores_per_socket, a.threads_per_core, a.logical_cpus, a.numa_nodes) == (2, 32, 2, 128, 2)
    assert a.model == "Intel(R) Xeon(R) Gold 6430" and a.amx and a.avx512


@pytest.mark.parametrize(
    "machine, sockets, cores, threads, numa, vendor",
    [
        ("centos7-6226r-2x3090", 2, 16, 2, 2, "GenuineIntel"),  # util-linux 2.23
        ("dgx-a100-8gpu", 2, 64, 2, 2, "AuthenticAMD"),  # util-linux 2.34, flags after the vulnerabilities
        ("epyc-9654-nps4-2xa6000", 1, 96, 2, 4, "AuthenticAMD"),  # more NUMA nodes than sockets
        ("spr-8480-snc2-h100", 2, 56, 2, 4, "GenuineIntel"),
        ("ci-kvm-2cpu-nogpu", 1, 2, 1, 1, "GenuineIntel"),  # recorded for real
    ],
)
def test_lscpu_of_each_layout(machine, sockets, cores, threads, numa, vendor):
    cpu = load(machine).cpu
    assert (cpu.sockets, cpu.cores_per_socket, cpu.threads_per_core, cpu.numa_nodes) == (sockets, cores, threads, numa)
    assert cpu.vendor == vendor
    assert cpu.physical_cores == sockets * cores
    assert "avx2" in cpu.flags


def test_numa_nodes_counted_from_node_lines_when_the_total_line_is_missing():
    text = "CPU(s): 8\nSocket(s): 1\nCore(s) per socket: 8\nNUMA node0 CPU(s): 0-3\nNUMA node1 CPU(s): 4-7\n"
    assert facts.parse_lscpu(text).numa_nodes == 2
    assert facts.parse_lscpu("CPU(s): 4\n").numa_nodes == 1


def test_arm_style_clusters_and_missing_sockets():
    cpu = facts.parse_lscpu("CPU(s): 64\nThread(s) per core: 1\nCore(s) per cluster: 64\nSocket(s): -\nCluster(s): 1\n")
    assert (cpu.sockets, cpu.cores_per_socket) == (1, 64)


def test_container_limits_and_the_rest_of_the_tutorial_box():
    f = load("autodl-8352v-vgpu32")
    assert f.cpu_quota == 16.0
    assert f.memory_max_bytes == 90 * 2**30
    assert f.mem_total_bytes == 1056437116 * 1024
    assert f.gpus == (facts.Gpu(0, "NVIDIA vGPU-32GB", 32760, "535.104.05", "8.9"),)
    assert (f.disk_avail_bytes, f.disk_mount) == (214748364800, "/root/autodl-tmp")
    assert f.os["ID"] == "ubuntu" and f.os["VERSION_ID"] == "22.04"
    assert not f.systemd and f.model_files == {}


def test_cgroup_v1_no_limit_values_mean_no_limit():
    f = load("centos7-6226r-2x3090")
    assert f.cpu_quota is None and f.memory_max_bytes is None
    assert f.systemd and f.os["PRETTY_NAME"] == "CentOS Linux 7 (Core)"


def test_eight_gpus_and_partial_downloads():
    assert [g.index for g in load("dgx-a100-8gpu").gpus] == list(range(8))
    files = load("ws-5950x-3080-partial").model_files
    assert files["DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00003-of-00003.gguf.incomplete"] == 12000000000


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("lscpu.txt", "hello\n", "not lscpu output"),
        ("meminfo.txt", "MemFree: 1 kB\n", "MemTotal"),
        ("df.txt", "/dev/sda1 100 /\n", "df -B1"),
        ("df.txt", "Avail Mounted on\nlots /\n", "free bytes"),
        ("nvidia-smi.csv", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n", "unexpected line"),
        ("cpu.max", "150000\n", "<quota|max> <period>"),
        ("memory.max", "lots\n", "byte count"),
    ],
)
def test_garbled_files_name_the_file_and_the_problem(tmp_path, name, text, message):
    raw = facts.load_dir(FIXTURES / "autodl-8352v-vgpu32")
    raw[name] = text
    with pytest.raises(BadInput) as exc:
        facts.parse(raw)
    assert name in str(exc.value) and message in str(exc.value)


def test_incomplete_directory_is_bad_input(tmp_path):
    (tmp_path / "lscpu.txt").write_text("CPU(s): 1\n")
    with pytest.raises(BadInput, match="lacks meminfo.txt, os-release.txt, df.txt"):
        facts.load_dir(tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        facts.load_dir(tmp_path / "nope")


def test_save_replaces_stale_optional_files(tmp_path):
    raw = facts.load_dir(FIXTURES / "autodl-8352v-vgpu32")
    facts.save_dir(raw, tmp_path)
    assert (tmp_path / "nvidia-smi.csv").exists()
    del raw["nvidia-smi.csv"]
    facts.save_dir(raw, tmp_path)
    assert not (tmp_path / "nvidia-smi.csv").exists()
    assert facts.load_dir(tmp_path) == raw


def _run_script(model_dir: str, env: dict | None = None) -> str:
    return subprocess.run(
        ["bash", "-c", facts.facts_script(model_dir)], capture_output=True, text=True, check=True, env=env
    ).stdout


def test_facts_script_runs_here_and_its_stream_parses(tmp_path):
    models = tmp_path / "models"
    shard = models / "DeepSeek-R1-GGUF" / "DeepSeek-R1-UD-IQ1_S" / "DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"x" * 1234)
    (models / "notes.txt").write_text("not a model")
    raw, errors = facts.parse_stream(_run_script(str(models)))
    assert set(facts.REQUIRED) <= set(raw)
    f = facts.parse(raw, errors)
    assert f.model_files == {"DeepSeek-R1-GGUF/DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf": 1234}
    assert f.mem_total_bytes == facts.parse_meminfo(Path("/proc/meminfo").read_text())
    assert f.cpu.logical_cpus >= 1


def test_facts_script_measures_the_nearest_existing_parent(tmp_path):
    raw, _ = facts.parse_stream(_run_script(str(tmp_path / "not" / "yet" / "there")))
    assert "model-files.txt" not in raw
    _, mount = facts.parse_df(raw["df.txt"])
    df = subprocess.run(["df", "--output=target", str(tmp_path)], capture_output=True, text=True).stdout
    assert mount == df.splitlines()[1].strip()


def test_failed_optional_command_is_kept_as_an_error(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2\nexit 9\n")
    smi.chmod(0o755)
    import os

    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    raw, errors = facts.parse_stream(_run_script(str(tmp_path), env))
    assert "nvidia-smi.csv" not in raw
    assert "could not communicate" in errors["nvidia-smi.csv"]
    assert facts.parse(raw, errors).gpus == ()


def test_stream_missing_required_facts_is_bad_input():
    with pytest.raises(BadInput, match="did not return lscpu.txt"):
        facts.parse_stream("KTDEPLOY-FACT lscpu.txt 127 - bHNjcHU6IG5vdCBmb3VuZAo=\nsome banner\n")
