"""``vllm.batch_invariant: true``: the exact container configuration, and what it refuses.

No GPU ran this here (the lent GPU machine has no Docker engine and no vLLM): what is checked is
the configuration sent to the engine, against vLLM 0.32's own code in the pinned image
(``vllm/model_executor/determinism/batch_invariant.py`` reads VLLM_BATCH_INVARIANT and sets
CUBLAS_WORKSPACE_CONFIG=:4096:8; only FLASH_ATTN, FLEX_ATTENTION and TRITON_ATTN among the
allowlisted backends answer ``supports_batch_invariance()``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import ProfileError
from detserve.pins import profile_pins
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.container_spec import build_container_spec

from .committed import REPO_ROOT
from .test_container_spec import gpu_document


def _write(tmp_path: Path, document: dict[str, Any]) -> LoadedProfile:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir(exist_ok=True)
    revision = document["model"]["revision"]
    manifest = tmp_path / "manifests" / document["name"] / f"{revision}.sha256"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(b"ab" * 32 + b"  ./config.json\n")
    document["snapshot"]["hf_home"] = str(hf_home)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_profile(path)


def _invariant(tmp_path: Path, **vllm: Any) -> dict[str, Any]:
    document = gpu_document(tmp_path / "hf-home")
    document["vllm"]["batch_invariant"] = True
    document["vllm"].update(vllm)
    return document


def test_the_container_gets_exactly_the_batch_invariant_environment(tmp_path: Path) -> None:
    loaded = _write(tmp_path, _invariant(tmp_path))
    kwargs = build_container_spec(loaded, {}).to_create_kwargs()
    assert kwargs["environment"] == {
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "HF_HOME": "/hf-home",
        "HF_HUB_OFFLINE": "1",
        "VLLM_BATCH_INVARIANT": "1",
        "VLLM_LOGGING_LEVEL": "INFO",
    }
    # and it is a pin: the run log's environment holds it
    pins = profile_pins(loaded, manifest_sha256="0" * 64)
    assert pins.environment["VLLM_BATCH_INVARIANT"] == "1"


def test_without_it_nothing_is_added(tmp_path: Path) -> None:
    document = gpu_document(tmp_path / "hf-home")
    loaded = _write(tmp_path, document)
    environment = build_container_spec(loaded, {}).to_create_kwargs()["environment"]
    assert "VLLM_BATCH_INVARIANT" not in environment
    assert "CUBLAS_WORKSPACE_CONFIG" not in environment


@pytest.mark.parametrize("backend", ["FLASHINFER", "CPU_ATTN"])
def test_an_unsupported_attention_backend_is_refused(tmp_path: Path, backend: str) -> None:
    document = _invariant(tmp_path)
    document["vllm"]["extra_args"]["--attention-backend"] = backend
    with pytest.raises(ProfileError) as raised:
        _write(tmp_path, document)
    assert f"attention backend {backend} is not supported" in raised.value.diagnostics()


@pytest.mark.parametrize("backend", ["FLASH_ATTN", "FLEX_ATTENTION", "TRITON_ATTN"])
def test_a_supported_attention_backend_passes(tmp_path: Path, backend: str) -> None:
    document = _invariant(tmp_path)
    document["vllm"]["extra_args"]["--attention-backend"] = backend
    loaded = _write(tmp_path, document)
    assert ["--attention-backend", backend] == [
        arg
        for arg in build_container_spec(loaded, {}).command
        if arg in ("--attention-backend", backend)
    ]


@pytest.mark.parametrize(
    ("name", "value"), [("VLLM_BATCH_INVARIANT", "0"), ("CUBLAS_WORKSPACE_CONFIG", ":16:8")]
)
def test_a_clashing_environment_is_refused(tmp_path: Path, name: str, value: str) -> None:
    document = _invariant(tmp_path)
    document["runtime"]["environment"][name] = value
    with pytest.raises(ProfileError) as raised:
        _write(tmp_path, document)
    assert f"runtime.environment sets {name}={value}" in raised.value.diagnostics()


def test_a_cpu_profile_cannot_ask_for_it(tmp_path: Path) -> None:
    document = json.loads((REPO_ROOT / "configs" / "tiny-cpu.json").read_text(encoding="utf-8"))
    document["vllm"]["batch_invariant"] = True
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ProfileError, match="invalid profile") as raised:
        load_profile(path)
    assert "device 'cpu' has none" in raised.value.diagnostics()


@pytest.mark.parametrize("name", ["qwen3-8b", "qwen3-235b-a22b-instruct-2507"])
def test_the_committed_gpu_profiles_use_it(name: str) -> None:
    document = json.loads((REPO_ROOT / "configs" / f"{name}.json").read_text(encoding="utf-8"))
    assert document["vllm"]["batch_invariant"] is True
