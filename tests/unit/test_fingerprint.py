"""Environment fingerprints offline: parsing the host's files and nvidia-smi, the numerics
environment (never a secret), the probe's output, and the canonical document and its hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from detserve.errors import ContainerError, InputError
from detserve.fingerprint import (
    ContainerFacts,
    EngineVersion,
    EnvironmentFingerprint,
    environment_fingerprint,
    numerics_environment,
    parse_probe_output,
    read_fingerprint,
)
from detserve.profile import LoadedProfile, load_profile

from .committed import CliRunner, TinyWorkspace

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a1" * 32


def test_the_numerics_environment_never_holds_a_secret() -> None:
    environment = {
        "VLLM_API_KEY": "s3cret",
        "HF_TOKEN": "hf_x",
        "NCCL_PASSWORD": "x",
        "OMP_NUM_THREADS": "2",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "PATH": "/usr/bin",
        "LANG": "C",
    }
    assert numerics_environment(environment) == {
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "OMP_NUM_THREADS": "2",
    }


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"python": "3.11"}', b'{"python": 3, "vllm": null, "torch": null}'],
    ids=["not-json", "array", "missing-keys", "not-a-string"],
)
def test_a_probe_that_prints_something_else_is_a_container_error(raw: bytes) -> None:
    with pytest.raises(ContainerError):
        parse_probe_output(raw, where="image X")


class FakeFingerprintEngine:
    def engine_version(self) -> EngineVersion:
        return EngineVersion("20.10.24", "1.41")

    def container_facts(self, loaded: LoadedProfile) -> ContainerFacts:
        return ContainerFacts(
            image_id="sha256:" + "b" * 64,
            environment={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_TOKEN": "hf_secret", "PATH": "/x"},
            versions=parse_probe_output(
                b'{"python": "3.11.2", "vllm": "0.32.0", "torch": "2.13.0+cpu"}\n', where="x"
            ),
        )


def test_the_fingerprint_is_canonical_and_named_by_its_sha256(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    document = json.loads(tiny_workspace.config.read_text())
    document["runtime"]["image"] = IMAGE
    tiny_workspace.config.write_text(json.dumps(document))
    fingerprint = environment_fingerprint(
        load_profile(tiny_workspace.config), FakeFingerprintEngine()
    )
    assert fingerprint.container.image == IMAGE
    assert fingerprint.container.vllm_version == "0.32.0"
    assert fingerprint.container.numerics_environment == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert "hf_secret" not in fingerprint.canonical().decode()
    assert fingerprint.sha256 == hashlib.sha256(fingerprint.canonical()).hexdigest()
    path = tmp_path / "env.json"
    path.write_bytes(fingerprint.canonical())
    assert read_fingerprint(path) == fingerprint
    assert (
        EnvironmentFingerprint.model_validate_json(path.read_bytes()).sha256 == fingerprint.sha256
    )


def test_a_file_that_is_not_a_fingerprint_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "env.json"
    path.write_text('{"format": "detserve-environment", "format_version": 1}')
    with pytest.raises(InputError, match="not an environment fingerprint"):
        read_fingerprint(path)


def test_env_exits_3_when_the_engine_does_not_answer(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    document = json.loads(tiny_workspace.config.read_text())
    document["runtime"]["image"] = IMAGE
    tiny_workspace.config.write_text(json.dumps(document))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    output = tmp_path / "env.json"
    ran = cli("env", "--config", tiny_workspace.config, "--fingerprint-output", output)
    assert ran.code == 3, ran
    assert f"the container engine at unix://{tmp_path}/no-engine.sock does not answer" in ran.err
    assert not output.exists()
