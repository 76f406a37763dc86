"""The host half: nvidia-smi's output read as the real machine printed it (fixtures/gpu_host/),
parsing that never guesses, and facts that carry no local path (a fingerprint embedded the path
of nvidia-smi when it failed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from detserve import host_facts
from detserve.fingerprint import EngineVersion, host_fingerprint
from detserve.host_facts import (
    NO_NVIDIA_SMI,
    NVIDIA_SMI_QUERY,
    cpu_info,
    memory_total,
    parse_cuda_version,
    parse_gpu_query,
    parse_nvidia_smi,
    read_gpu_host,
    read_host_facts,
)

from .gpu_hosts import BANNER, CAPTURED, CAPTURED_GPU, CAPTURED_ON, FIXTURES, QUERY_CSV

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9654
flags\t\t: fpu sse avx2 avx512f avx2

processor\t: 1
model name\t: AMD EPYC 9654
flags\t\t: fpu sse avx2 avx512f
"""


def test_the_captured_machine_is_read_as_it_is() -> None:
    # the lent GPU machine, captured 2026-12-05: one NVIDIA H100 80GB HBM3
    assert CAPTURED.reason is None, CAPTURED
    assert CAPTURED.count == 1
    assert CAPTURED.gpus is not None
    gpu = CAPTURED.gpus[0]
    assert (gpu.index, gpu.name) == (0, CAPTURED_GPU)
    assert gpu.compute_capability == (9, 0)
    assert gpu.compute_capability_text == "9.0"
    assert gpu.memory_mib == 81559
    assert gpu.uuid.startswith("GPU-")
    assert CAPTURED.driver_version == gpu.driver_version == "580.159.04"
    assert CAPTURED.cuda_version == "13.0"
    assert (FIXTURES / "capture.txt").read_text().startswith(f"date: {CAPTURED_ON}T")


def test_the_fixture_was_captured_with_the_arguments_the_code_passes() -> None:
    assert NVIDIA_SMI_QUERY == (
        "--query-gpu=index,name,uuid,memory.total,driver_version,compute_cap",
        "--format=csv,noheader,nounits",
    )
    assert " ".join(NVIDIA_SMI_QUERY) in (FIXTURES / "README.md").read_text()


def test_several_gpus_and_a_capability_not_reported() -> None:
    line = QUERY_CSV.strip()
    second = line.replace("0, ", "1, ", 1).replace(", 9.0", ", [N/A]")
    gpus, problem = parse_gpu_query(f"{line}\n{second}\n")
    assert problem is None
    assert gpus is not None
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].compute_capability is None


@pytest.mark.parametrize(
    "text",
    [
        "garbage\n",
        "0, NVIDIA H100, GPU-x, 81559, 580.159.04\n",  # a field short: another query's output
        "x, NVIDIA H100, GPU-x, 81559, 580.159.04, 9.0\n",
        "0, NVIDIA H100, GPU-x, 81559, 580.159.04, nine\n",
    ],
    ids=["garbage", "five-fields", "index", "capability"],
)
def test_unexpected_output_is_none_with_a_reason_never_guessed(text: str) -> None:
    facts = parse_nvidia_smi(text, BANNER)
    assert facts.gpus is None
    assert facts.driver_version is None
    assert facts.reason is not None
    assert "unexpected" in facts.reason
    assert "H100" not in facts.reason  # what was printed is kept apart, for people
    assert facts.detail is not None


def test_no_gpu_and_no_cuda_version_are_said() -> None:
    assert parse_nvidia_smi("", BANNER).reason == "nvidia-smi lists no GPU"
    assert parse_nvidia_smi("", BANNER).gpus == ()
    assert parse_cuda_version("no banner") is None
    assert parse_nvidia_smi(QUERY_CSV, "").reason == "nvidia-smi printed no CUDA version"


def fake_nvidia_smi(directory: Path, script: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "nvidia-smi"
    program.write_text(script)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def test_the_live_path_reads_what_the_machine_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "query.csv").write_text(QUERY_CSV)
    (tmp_path / "banner.txt").write_text(BANNER)
    fake_nvidia_smi(
        tmp_path / "bin",
        f'#!/bin/sh\nif [ "$1" = "{NVIDIA_SMI_QUERY[0]}" ] && [ "$2" = "{NVIDIA_SMI_QUERY[1]}" ]; '
        f"then cat {tmp_path}/query.csv; else cat {tmp_path}/banner.txt; fi\n",
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    assert read_gpu_host() == CAPTURED


def test_without_nvidia_smi_the_facts_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    facts = read_gpu_host()
    assert (facts.gpus, facts.driver_version, facts.cuda_version) == (None, None, None)
    assert facts.reason == NO_NVIDIA_SMI
    assert not facts.nvidia_smi


#: nvidia-smi failing in each way a program can; every one names its own path somewhere
FAILURES = {
    "exit-status": '#!/bin/sh\necho "$0: NVML: driver/library version mismatch" >&2\nexit 9\n',
    "garbage": '#!/bin/sh\necho "$0 is not what you think"\n',
    "not-runnable": "#!/nonexistent/interpreter\n",
    "hangs": "#!/bin/sh\nexec sleep 30\n",
    "garbage-banner-only": (
        '#!/bin/sh\nif [ -n "$1" ]; then echo "0, GPU, GPU-1, 1, 1.0, 9.0"; '
        'else echo "$0 CUDA Version: $0"; fi\n'
    ),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_fingerprint_carries_no_local_path(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "opt-weird-place" / "bin"
    fake_nvidia_smi(directory, FAILURES[failure])
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setattr(host_facts, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    facts = read_gpu_host()
    assert facts.reason is not None or facts.gpus is not None
    fingerprint = host_fingerprint(EngineVersion("20.10.24", "1.41"), proc=tmp_path)
    document = json.dumps(fingerprint.model_dump(mode="json"))
    assert str(tmp_path) not in document, document
    assert "opt-weird-place" not in document, document
    assert str(tmp_path) not in (facts.reason or "")


def test_cpu_model_and_sorted_unique_flags_of_the_first_processor() -> None:
    assert cpu_info(CPUINFO) == ("AMD EPYC 9654", ("avx2", "avx512f", "fpu", "sse"))
    assert cpu_info(None) == (None, ())


def test_memory_total_in_bytes() -> None:
    assert memory_total("MemTotal:       24684092 kB\nMemFree: 1 kB\n") == 24684092 * 1024
    assert memory_total("nothing") is None


def test_the_host_facts_gather_the_files_and_the_gpus(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    (tmp_path / "meminfo").write_text("MemTotal:       1024 kB\n")
    facts = read_host_facts(proc=tmp_path, gpu=CAPTURED)
    document = facts.as_json()
    assert document["cpu_model"] == "AMD EPYC 9654"
    assert document["memory_bytes"] == 1024 * 1024
    gpu = document["gpu"]
    assert isinstance(gpu, dict)
    assert gpu["count"] == 1
    assert gpu["cuda_version"] == "13.0"
    assert gpu["gpus"][0]["compute_capability"] == "9.0"
