"""Environment fingerprints for tests, built field by field."""

from __future__ import annotations

from typing import Any

from detserve.fingerprint import EnvironmentFingerprint

IMAGE = "localhost:5000/detserve/vllm-cpu@sha256:" + "c" * 64


def make_fingerprint(**changes: Any) -> EnvironmentFingerprint:
    """A fingerprint of a GPU host; ``host__kernel="..."`` or
    ``container__numerics_environment={...}`` changes one field."""
    document: dict[str, Any] = {
        "host": {
            "os": "Linux",
            "kernel": "6.1.0",
            "machine": "x86_64",
            "cpu_model": "Intel Xeon",
            "cpu_flags": ["avx2", "avx512f", "sse4_2"],
            "cpu_count": 16,
            "memory_bytes": 128 * 2**30,
            "gpus": [{"name": "NVIDIA H200", "memory_mib": 143771}],
            "gpu_driver_version": "570.86",
            "cuda_version": "12.8",
            "gpu_reason": None,
            "docker_engine_version": "26.1.5",
            "docker_api_version": "1.45",
        },
        "container": {
            "image": IMAGE,
            "image_id": "sha256:" + "d" * 64,
            "python_version": "3.11.2",
            "vllm_version": "0.32.0",
            "torch_version": "2.13.0",
            "numerics_environment": {"VLLM_BATCH_INVARIANT": "1"},
        },
    }
    for key, value in changes.items():
        part, field = key.split("__")
        document[part][field] = value
    return EnvironmentFingerprint.model_validate_json(__import__("json").dumps(document))
