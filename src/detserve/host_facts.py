"""This host as detserve sees it without any container engine: OS, CPU, memory, NVIDIA GPUs.

The host half of ``detserve env`` and ``detserve doctor`` (and the host part of every
environment fingerprint) is read here, and nothing here asks a container engine or imports the
Docker SDK or vLLM, so it runs on a GPU machine that has neither (``--host-only``).

The GPUs are what ``nvidia-smi`` says, asked twice: :data:`NVIDIA_SMI_QUERY` (one CSV line a
GPU: index, name, UUID, total memory in MiB, driver version, compute capability) and the plain
banner, the only place it prints the CUDA version the driver supports. Reading is split from
parsing: :func:`parse_gpu_query` and :func:`parse_cuda_version` are pure, so that a capture of
a real machine's output (``tests/unit/fixtures/gpu_host/``) is parsed exactly as the live output
is.

Invariants: a fact that cannot be read is None with the reason, never guessed (no GPU listed is
not "no GPU" unless ``nvidia-smi`` said so); a reason is one of a fixed set of sentences and
never an exception's or a program's text, which can name local paths (the path of
``nvidia-smi``, of a library): a fingerprint built from these facts carries no local path, and
two hosts that fail the same way say the same thing. What ``nvidia-smi`` printed on a failure is
kept apart, in :attr:`GpuHost.detail`, for people only.
"""

from __future__ import annotations

import csv
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from detserve.errors import bounded

#: the fields asked of ``nvidia-smi --query-gpu``, in this order
NVIDIA_SMI_FIELDS: Final = (
    "index",
    "name",
    "uuid",
    "memory.total",
    "driver_version",
    "compute_cap",
)
#: the arguments after ``nvidia-smi`` that list the GPUs (one CSV line each, no header, no units)
NVIDIA_SMI_QUERY: Final = (
    "--query-gpu=" + ",".join(NVIDIA_SMI_FIELDS),
    "--format=csv,noheader,nounits",
)
NVIDIA_SMI_TIMEOUT_S: Final = 20
#: how much of what nvidia-smi printed is kept for people (never for a fingerprint)
_DETAIL_CHARS: Final = 300

_CUDA_VERSION = re.compile(r"CUDA Version:\s*([0-9]+(?:\.[0-9]+)*)")
_COMPUTE_CAPABILITY = re.compile(r"^([0-9]+)\.([0-9]+)$")
_NOT_AVAILABLE = frozenset({"[N/A]", "N/A", "[Not Supported]", ""})


@dataclass(frozen=True)
class GpuDevice:
    """One GPU, one line of :data:`NVIDIA_SMI_QUERY`."""

    index: int
    name: str
    uuid: str
    #: total memory in MiB; None when nvidia-smi does not report it
    memory_mib: int | None
    driver_version: str
    #: (major, minor), e.g. (9, 0) for an H100; None when nvidia-smi does not report it
    compute_capability: tuple[int, int] | None

    @property
    def compute_capability_text(self) -> str | None:
        cc = self.compute_capability
        return None if cc is None else f"{cc[0]}.{cc[1]}"

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "memory_mib": self.memory_mib,
            "driver_version": self.driver_version,
            "compute_capability": self.compute_capability_text,
        }


@dataclass(frozen=True)
class GpuHost:
    """The NVIDIA GPUs of this host, as ``nvidia-smi`` lists them."""

    #: the GPUs; None when they could not be listed (``reason`` says why), () when none are
    gpus: tuple[GpuDevice, ...] | None
    #: the driver version (several, comma-joined and sorted, if GPUs disagree); None if unknown
    driver_version: str | None
    #: the CUDA version the driver supports, from the banner; None if unknown
    cuda_version: str | None
    #: why a field is None, from a fixed set of sentences (never a path); None when all were read
    reason: str | None
    #: whether ``nvidia-smi`` was found at all
    nvidia_smi: bool = True
    #: what nvidia-smi printed when it failed, escaped and cut: for people, never fingerprinted
    detail: str | None = None

    @property
    def count(self) -> int | None:
        return None if self.gpus is None else len(self.gpus)

    def as_json(self) -> dict[str, object]:
        return {
            "nvidia_smi": self.nvidia_smi,
            "count": self.count,
            "gpus": None if self.gpus is None else [gpu.as_json() for gpu in self.gpus],
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "reason": self.reason,
            "detail": self.detail,
        }


NO_NVIDIA_SMI: Final = "nvidia-smi is not on PATH: no NVIDIA driver here"


def _detail(text: str) -> str | None:
    text = text.strip()
    return bounded(text, _DETAIL_CHARS) if text else None


def _compute_capability(text: str) -> tuple[int, int] | None:
    match = _COMPUTE_CAPABILITY.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_gpu_query(text: str) -> tuple[tuple[GpuDevice, ...] | None, str | None]:
    """The GPUs in the output of ``nvidia-smi`` with :data:`NVIDIA_SMI_QUERY`, and None; or
    None and the reason the output is not that (never a guess)."""
    gpus: list[GpuDevice] = []
    lines = [line for line in text.splitlines() if line.strip()]
    for number, row in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        fields = [field.strip() for field in row]
        if len(fields) != len(NVIDIA_SMI_FIELDS) or not fields[0].isdigit() or not fields[1]:
            return None, f"nvidia-smi printed an unexpected line (line {number} of its GPU list)"
        index, name, uuid, memory, driver, capability = fields
        gpus.append(
            GpuDevice(
                index=int(index),
                name=name,
                uuid=uuid,
                memory_mib=int(memory) if memory.isdigit() else None,
                driver_version=driver,
                compute_capability=(
                    None if capability in _NOT_AVAILABLE else _compute_capability(capability)
                ),
            )
        )
        if capability not in _NOT_AVAILABLE and gpus[-1].compute_capability is None:
            return None, f"nvidia-smi printed an unexpected compute capability (line {number})"
    return tuple(gpus), None


def parse_cuda_version(banner: str) -> str | None:
    """The ``CUDA Version: X.Y`` of the plain ``nvidia-smi`` banner; None when it has none."""
    match = _CUDA_VERSION.search(banner)
    return match.group(1) if match else None


def parse_nvidia_smi(query_csv: str, banner: str) -> GpuHost:
    """The GPU facts of one ``nvidia-smi`` query (:data:`NVIDIA_SMI_QUERY`) and its banner."""
    gpus, problem = parse_gpu_query(query_csv)
    cuda = parse_cuda_version(banner)
    if gpus is None:
        return GpuHost(None, None, cuda, problem, detail=_detail(query_csv))
    if not gpus:
        return GpuHost((), None, cuda, "nvidia-smi lists no GPU")
    drivers = ",".join(sorted({gpu.driver_version for gpu in gpus}))
    return GpuHost(gpus, drivers, cuda, None if cuda else "nvidia-smi printed no CUDA version")


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
    )


def read_gpu_host() -> GpuHost:
    """What ``nvidia-smi`` says about this host's GPUs; None fields with the reason when it is
    absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuHost(None, None, None, NO_NVIDIA_SMI, nvidia_smi=False)
    try:
        listed = _run([smi, *NVIDIA_SMI_QUERY])
        if listed.returncode != 0:
            return GpuHost(
                None,
                None,
                None,
                f"nvidia-smi exited with status {listed.returncode}",
                detail=_detail(listed.stderr or listed.stdout),
            )
        banner = _run([smi])
    except subprocess.TimeoutExpired:
        return GpuHost(None, None, None, f"nvidia-smi did not answer in {NVIDIA_SMI_TIMEOUT_S} s")
    except (OSError, subprocess.SubprocessError) as exc:
        # the exception's text names the program's path: only its kind is kept
        return GpuHost(None, None, None, f"nvidia-smi could not be run ({type(exc).__name__})")
    return parse_nvidia_smi(listed.stdout, banner.stdout)


# --- the rest of the host -----------------------------------------------------------------------


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_info(text: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The model name and the sorted flags of the first processor in ``/proc/cpuinfo``."""
    model: str | None = None
    flags: tuple[str, ...] = ()
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in {"flags", "Features"} and not flags:
            flags = tuple(sorted(set(value.split())))
    return model, flags


def memory_total(text: str | None) -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in bytes."""
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB$", text or "", re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


@dataclass(frozen=True)
class HostFacts:
    """This host: what ``detserve env --host-only`` reports and a fingerprint's host part holds."""

    os: str
    kernel: str
    machine: str
    cpu_model: str | None
    cpu_flags: tuple[str, ...]
    cpu_count: int | None
    memory_bytes: int | None
    gpu: GpuHost

    def as_json(self) -> dict[str, object]:
        return {
            "os": self.os,
            "kernel": self.kernel,
            "machine": self.machine,
            "cpu_model": self.cpu_model,
            "cpu_flags": list(self.cpu_flags),
            "cpu_count": self.cpu_count,
            "memory_bytes": self.memory_bytes,
            "gpu": self.gpu.as_json(),
        }


def read_host_facts(*, proc: Path = Path("/proc"), gpu: GpuHost | None = None) -> HostFacts:
    """This host, from the files under ``proc`` and ``nvidia-smi`` (or ``gpu`` when given)."""
    model, flags = cpu_info(read_text(proc / "cpuinfo"))
    return HostFacts(
        os=platform.system(),
        kernel=platform.release(),
        machine=platform.machine(),
        cpu_model=model,
        cpu_flags=flags,
        cpu_count=os.cpu_count(),
        memory_bytes=memory_total(read_text(proc / "meminfo")),
        gpu=gpu if gpu is not None else read_gpu_host(),
    )
