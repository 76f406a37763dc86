"""GPU hosts for tests: the real capture in ``fixtures/gpu_host/`` and synthetic ones built from
it a field at a time (another GPU, another capability), parsed as the live output is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from detserve.host_facts import GpuDevice, GpuHost, parse_nvidia_smi

FIXTURES = Path(__file__).parent / "fixtures" / "gpu_host"
#: what the capture in FIXTURES is (README.md there says how it was taken)
CAPTURED_ON = "2026-12-05"
CAPTURED_GPU = "NVIDIA H100 80GB HBM3"

QUERY_CSV = (FIXTURES / "nvidia-smi-query.csv").read_text(encoding="utf-8")
BANNER = (FIXTURES / "nvidia-smi.txt").read_text(encoding="utf-8")

#: the lent GPU machine, as detserve reads it
CAPTURED: GpuHost = parse_nvidia_smi(QUERY_CSV, BANNER)


def with_gpus(*gpus: GpuDevice) -> GpuHost:
    """The captured host with other GPUs."""
    return dataclasses.replace(CAPTURED, gpus=gpus)


def captured_gpu(**changes: object) -> GpuDevice:
    """The captured host's first GPU, with ``changes``."""
    assert CAPTURED.gpus
    return dataclasses.replace(CAPTURED.gpus[0], **changes)  # type: ignore[arg-type]
