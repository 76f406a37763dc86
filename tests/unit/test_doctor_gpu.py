"""The doctor's GPU items (compute capability under batch invariance, a GPU under a CPU profile)
on the real capture of the lent GPU machine and hosts built from it, and the host half
(``--host-only``): engine items NOT RUN, never PASS, and an exit code that says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from detserve.doctor_checks import DoctorEngine, gather_facts, run_checks
from detserve.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_VERIFICATION
from detserve.host_facts import NO_NVIDIA_SMI, GpuHost
from detserve.profile import LoadedProfile, load_profile

from .committed import REPO_ROOT, CliRunner, TinyWorkspace
from .gpu_hosts import CAPTURED, CAPTURED_GPU, captured_gpu, with_gpus
from .test_doctor import NO_GPU, FakeDoctorEngine, facts_for, failed, pinned_profile

COMPUTE = "GPU compute capability"
CPU_GPUS = "no GPU under a CPU profile"


def gpu_profile(ws: TinyWorkspace, **runtime: Any) -> LoadedProfile:
    """The tiny model as a GPU profile in batch-invariant mode, as configs/qwen3-8b.json is."""

    def edit(document: dict[str, Any]) -> None:
        document["runtime"].update(device="nvidia", gpu_count=1, cpu_placement=None, **runtime)
        if "gpu_ids" in runtime:
            document["runtime"]["gpu_count"] = None
        document["runtime"]["environment"] = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        document["vllm"]["batch_invariant"] = True

    return load_profile(pinned_profile(ws, edit))


def with_engine(loaded: LoadedProfile, gpu: GpuHost) -> Any:
    return facts_for(loaded, FakeDoctorEngine(loaded), gpu=gpu)


def items(loaded: LoadedProfile, gpu: GpuHost) -> dict[str, Any]:
    report = run_checks(loaded, with_engine(loaded, gpu))
    return {item.name: item for item in report.items}


def test_the_lent_h100_passes_batch_invariance(tiny_workspace: TinyWorkspace) -> None:
    loaded = gpu_profile(tiny_workspace)
    item = items(loaded, CAPTURED)[COMPUTE]
    assert item.status == "PASS", item
    assert f"GPU 0 {CAPTURED_GPU} 9.0" in item.detail


@pytest.mark.parametrize(
    ("gpu", "shown"),
    [
        (captured_gpu(name="Tesla V100-SXM2-16GB", compute_capability=(7, 0)), "7.0"),
        (captured_gpu(name="Tesla T4", compute_capability=(7, 5)), "7.5"),
        (captured_gpu(compute_capability=None), "(not reported)"),
    ],
    ids=["volta", "turing", "not-reported"],
)
def test_a_gpu_below_8_0_fails_batch_invariance(
    tiny_workspace: TinyWorkspace, gpu: Any, shown: str
) -> None:
    loaded = gpu_profile(tiny_workspace)
    fails = failed(loaded, with_engine(loaded, with_gpus(gpu)))
    assert list(fails) == [COMPUTE]
    assert "needs compute capability 8.0 or higher" in fails[COMPUTE]
    assert shown in fails[COMPUTE]


@pytest.mark.parametrize(
    "host",
    [
        GpuHost(None, None, None, NO_NVIDIA_SMI, nvidia_smi=False),
        GpuHost(None, None, None, "nvidia-smi exited with status 9"),
        GpuHost((), None, "13.0", "nvidia-smi lists no GPU"),
    ],
    ids=["no-nvidia-smi", "nvidia-smi-fails", "no-gpu"],
)
def test_a_capability_that_cannot_be_read_fails(
    tiny_workspace: TinyWorkspace, host: GpuHost
) -> None:
    loaded = gpu_profile(tiny_workspace)
    assert items(loaded, host)[COMPUTE].status == "FAIL"


def test_the_gpus_the_profile_names_are_the_ones_checked(tiny_workspace: TinyWorkspace) -> None:
    mixed = with_gpus(
        captured_gpu(),
        captured_gpu(index=1, uuid="GPU-old", name="Tesla T4", compute_capability=(7, 5)),
    )
    assert items(gpu_profile(tiny_workspace), mixed)[COMPUTE].status == "FAIL"  # any of them
    assert items(gpu_profile(tiny_workspace, gpu_ids=["0"]), mixed)[COMPUTE].status == "PASS"
    assert items(gpu_profile(tiny_workspace, gpu_ids=["GPU-old"]), mixed)[COMPUTE].status == "FAIL"
    unknown = items(gpu_profile(tiny_workspace, gpu_ids=["7"]), mixed)[COMPUTE]
    assert unknown.status == "FAIL"
    assert "names GPUs nvidia-smi does not list: 7" in unknown.detail


def test_without_batch_invariance_no_capability_is_required(
    tiny_workspace: TinyWorkspace,
) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["runtime"].update(device="nvidia", gpu_count=1, cpu_placement=None)
        document["runtime"]["environment"] = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        document["vllm"]["max_num_seqs"] = 1

    loaded = load_profile(pinned_profile(tiny_workspace, edit))
    old = with_gpus(captured_gpu(compute_capability=(7, 0)))
    assert items(loaded, old)[COMPUTE].status == "PASS"


def test_a_cpu_profile_on_a_gpu_host_fails(tiny_workspace: TinyWorkspace) -> None:
    loaded = load_profile(pinned_profile(tiny_workspace))
    fails = failed(loaded, with_engine(loaded, CAPTURED))
    assert list(fails) == [CPU_GPUS]
    assert f"GPU 0 {CAPTURED_GPU}" in fails[CPU_GPUS]
    assert items(loaded, NO_GPU)[CPU_GPUS].status == "PASS"
    assert items(loaded, GpuHost((), None, None, "nvidia-smi lists no GPU"))[CPU_GPUS].passed
    broken = GpuHost(None, None, None, "nvidia-smi exited with status 9")
    assert items(loaded, broken)[CPU_GPUS].status == "FAIL"  # cannot tell: never a pass


# --- the host half ------------------------------------------------------------------------------


def test_the_host_half_asks_no_engine_and_passes_nothing_it_did_not_check(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = load_profile(pinned_profile(tiny_workspace))
    report = run_checks(loaded, gather_facts(loaded, None, gpu=lambda: NO_GPU))
    statuses = {item.name: item.status for item in report.items}
    assert statuses == {
        "pins filled": "PASS",
        "manifest present and verifying": "PASS",
        "engine reachable": "NOT RUN",
        "image present by digest": "NOT RUN",
        "container bound to the pins": "NOT RUN",
        "prefix caching off": "NOT RUN",
        "seed set": "NOT RUN",
        "batch-invariant mode": "PASS",
        COMPUTE: "PASS",
        CPU_GPUS: "PASS",
        "numerics environment": "NOT RUN",
        "host clock sane": "NOT RUN",
    }
    assert not report.passed
    assert report.as_json()["not_run"] == 7


def _no_engine() -> DoctorEngine:
    raise AssertionError("--host-only asked an engine")


@pytest.mark.parametrize(
    ("gpu", "code"),
    [(NO_GPU, EXIT_ENVIRONMENT), (CAPTURED, EXIT_VERIFICATION)],
    ids=["host-items-pass", "a-host-item-fails"],
)
def test_doctor_host_only_exit_codes(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    gpu: GpuHost,
    code: int,
) -> None:
    config = pinned_profile(tiny_workspace)
    monkeypatch.setattr("detserve.doctor_checks.read_gpu_host", lambda: gpu)
    monkeypatch.setattr("detserve.runtime.probe.DockerProbe.from_env", _no_engine)
    ran = cli("doctor", "--config", config, "--host-only", "--json")
    assert ran.code == code, ran.text
    report = json.loads(ran.out)
    assert report["ok"] is False
    assert report["not_run"] == 7
    text = cli("doctor", "--config", config, "--host-only")
    assert text.code == code
    assert "NOT RUN engine reachable: --host-only" in text.out
    assert "7 not run (--host-only)" in text.err


def test_env_host_only_reports_the_host_and_says_the_engine_half_was_not_run(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    config = pinned_profile(tiny_workspace)
    monkeypatch.setattr("detserve.host_facts.read_gpu_host", lambda: CAPTURED)
    monkeypatch.setattr("detserve.runtime.probe.DockerProbe.from_env", _no_engine)
    ran = cli("env", "--config", config, "--host-only", "--json")
    assert ran.code == EXIT_ENVIRONMENT, ran.text
    document = json.loads(ran.out)
    assert document["engine"]["run"] is False
    assert document["fingerprint"] is None
    gpu = document["host"]["gpu"]
    assert (gpu["count"], gpu["driver_version"], gpu["cuda_version"]) == (1, "580.159.04", "13.0")
    assert gpu["gpus"][0]["name"] == CAPTURED_GPU
    assert gpu["gpus"][0]["compute_capability"] == "9.0"
    text = cli("env", "--config", config, "--host-only")
    assert text.code == EXIT_ENVIRONMENT
    assert f"gpu 0: {CAPTURED_GPU}, 81559 MiB, compute capability 9.0" in text.out
    assert "the engine half was not run" in text.out
    for extra in (
        ["--fingerprint-output", str(tmp_path / "env.json")],
        ["--docker-host", "unix:///x"],
    ):
        refused = cli("env", "--config", config, "--host-only", *extra)
        assert refused.code == EXIT_INPUT, refused.text
        assert not (tmp_path / "env.json").exists()


@pytest.mark.parametrize("command", ["env", "doctor"])
def test_the_host_half_runs_without_the_docker_sdk(command: str) -> None:
    """As on the GPU machine: the Docker SDK (and httpx) are never imported."""
    code = (
        "import sys\n"
        "from detserve.cli import main\n"
        "try:\n"
        f"    main([{command!r}, '--config', 'configs/qwen3-8b.json', '--host-only', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in ('docker', 'requests', 'httpx', 'vllm') if m in sys.modules)\n"
        "sys.stderr.write('IMPORTED ' + ','.join(loaded) + '\\n')\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "IMPORTED \n" in ran.stderr, ran.stderr
    assert json.loads(ran.stdout)["ok"] is False
