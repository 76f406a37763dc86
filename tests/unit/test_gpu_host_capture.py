"""The host half of ``env`` and ``doctor`` as the lent GPU machine printed it, and as this code
prints it from the same nvidia-smi output.

``fixtures/gpu_host/`` holds what ``scripts/gpu_host_facts.sh`` captured on the machine (its
README says when and how): the raw nvidia-smi output, and ``detserve env --host-only`` and
``detserve doctor --host-only`` for ``configs/qwen3-8b.json`` and ``configs/tiny-cpu.json`` with
their exit codes. Here the same commands run with nvidia-smi answering what it answered there,
and must say the same about the GPU: a parser or a doctor item that drifts from what the real
machine gives fails here, not on a GPU host. What differs between the two machines by nature
(this host's processor, memory and kernel, the clock) is not compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .committed import REPO_ROOT, CliRunner
from .gpu_hosts import CAPTURED, CAPTURED_GPU, CAPTURED_ON, FIXTURES

#: the items whose verdict depends on the host, not on the engine or this checkout's clock
HOST_ITEMS = ("batch-invariant mode", "GPU compute capability", "no GPU under a CPU profile")


def _captured(name: str) -> tuple[dict[str, Any], int]:
    document = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return document, int((FIXTURES / f"{name}.rc").read_text(encoding="utf-8"))


def _no_engine(*_args: object, **_kwargs: object) -> object:
    raise AssertionError("the host half asked for an engine")


@pytest.fixture
def as_on_the_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi answers what it answered there; no engine may be asked."""
    monkeypatch.chdir(REPO_ROOT)  # the capture names the profiles by their relative paths
    monkeypatch.setattr("detserve.host_facts.read_gpu_host", lambda: CAPTURED)
    monkeypatch.setattr("detserve.doctor_checks.read_gpu_host", lambda: CAPTURED)
    monkeypatch.setattr("detserve.runtime.probe.DockerProbe.from_env", _no_engine)


def test_the_capture_is_the_lent_machine() -> None:
    capture = (FIXTURES / "capture.txt").read_text(encoding="utf-8")
    assert f"date: {CAPTURED_ON}T" in capture
    assert f"gpus: {CAPTURED_GPU}, 9.0" in capture
    assert "docker: absent" in capture
    assert "vllm importable: False" in capture


@pytest.mark.usefixtures("as_on_the_gpu_machine")
def test_env_reads_the_gpu_as_the_machine_did(cli: CliRunner) -> None:
    captured, code = _captured("env-host-only")
    ran = cli("env", "--config", "configs/qwen3-8b.json", "--host-only", "--json")
    assert ran.code == code, ran.text
    here = json.loads(ran.out)
    assert here["host"]["gpu"] == captured["host"]["gpu"]
    assert (here["engine"], here["fingerprint"], here["ok"]) == (
        captured["engine"],
        captured["fingerprint"],
        captured["ok"],
    )
    text = (FIXTURES / "env-host-only.txt").read_text(encoding="utf-8")
    gpu_lines = [line for line in text.splitlines() if "nvidia" in line or "gpu 0" in line]
    assert gpu_lines, text
    shown = cli("env", "--config", "configs/qwen3-8b.json", "--host-only")
    for line in gpu_lines:
        assert line in shown.out, f"{line!r} not in\n{shown.out}"


@pytest.mark.usefixtures("as_on_the_gpu_machine")
@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("doctor-host-only", "configs/qwen3-8b.json"),
        ("doctor-tiny-cpu-host-only", "configs/tiny-cpu.json"),
    ],
)
def test_the_doctor_judges_the_host_as_it_did_there(cli: CliRunner, name: str, config: str) -> None:
    captured, code = _captured(name)
    ran = cli("doctor", "--config", config, "--host-only", "--json")
    assert ran.code == code, ran.text
    here = json.loads(ran.out)
    assert [(i["name"], i["status"]) for i in here["items"]] == [
        (i["name"], i["status"]) for i in captured["items"]
    ]
    by_name = {item["name"]: item for item in here["items"]}
    for item in captured["items"]:
        if item["name"] in HOST_ITEMS:
            assert by_name[item["name"]] == item


def test_the_cpu_profile_on_that_machine_failed_for_its_gpu() -> None:
    captured, code = _captured("doctor-tiny-cpu-host-only")
    (item,) = [i for i in captured["items"] if i["name"] == "no GPU under a CPU profile"]
    assert item["status"] == "FAIL"
    assert CAPTURED_GPU in item["detail"]
    assert code == 1  # a host item failed: verification, not environment


def test_the_gpu_profile_on_that_machine_passed_compute_capability() -> None:
    captured, _ = _captured("doctor-host-only")
    (item,) = [i for i in captured["items"] if i["name"] == "GPU compute capability"]
    assert item["status"] == "PASS"
    assert f"GPU 0 {CAPTURED_GPU} 9.0" in item["detail"]


def test_the_fixture_directory_is_what_the_readme_lists() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for path in sorted(Path(FIXTURES).iterdir()):
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, f"{path.name} is not described in README.md"
