"""The checklist's GPU items: batch-invariant mode, compute capability, GPUs under a CPU profile.

Pure functions of ``(profile, facts)`` like every item of :data:`detserve.doctor_checks.CHECKS`; the
GPUs are what ``nvidia-smi`` listed (:mod:`detserve.host_facts`), so these run in the host half
(``--host-only``) too.

Decisions: vLLM 0.32's batch-invariant mode needs NVIDIA GPUs of compute capability 8.0 or
higher; a GPU profile with that mode on fails on any GPU it may get below it, or whose capability
nvidia-smi does not report. A CPU profile on a host whose ``nvidia-smi`` lists a GPU is a FAIL,
not a warning (the checklist has no third verdict for a problem): an engine whose default
runtime is NVIDIA's, or an image that asks for the GPUs, can hand them to a container whose pins
say ``cpu``, which no pin records, and the claim's fingerprint then names GPUs its replays'
hosts lack. A host without ``nvidia-smi`` has no NVIDIA GPU for this item; one whose
``nvidia-smi`` fails cannot say, which fails too.
"""

from __future__ import annotations

from typing import Final

from detserve.doctor_facts import CheckItem, DoctorFacts, item
from detserve.host_facts import NO_NVIDIA_SMI, GpuDevice
from detserve.profile import LoadedProfile

#: vLLM's default ``--max-num-seqs`` when the profile sets none: the server may batch.
VLLM_DEFAULT_MAX_NUM_SEQS: Final = 256
#: vLLM 0.32's batch-invariant mode needs NVIDIA GPUs of at least this compute capability
#: (https://docs.vllm.ai/en/v0.32.0/features/batch_invariance/, "Hardware Requirements").
BATCH_INVARIANT_MIN_COMPUTE_CAPABILITY: Final = (8, 0)


def _batch_invariant_value(loaded: LoadedProfile) -> str | None:
    if loaded.profile.vllm.batch_invariant:
        return "1"  # vllm.batch_invariant sets it (the profile refuses another value)
    return loaded.profile.runtime.environment.get("VLLM_BATCH_INVARIANT")


def check_batch_invariant(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    profile = loaded.profile
    if profile.runtime.device != "nvidia":
        return CheckItem(
            "batch-invariant mode",
            "PASS",
            "not required on CPU: one request at a time, CPU kernels do not split by batch",
            None,
        )
    seqs = profile.vllm.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
    concurrency = max(profile.sampling.concurrency, seqs)
    value = _batch_invariant_value(loaded)
    problem = None
    if concurrency > 1 and value != "1":
        problem = (
            f"GPU profile whose server may batch {concurrency} sequences "
            f"(vllm.max_num_seqs {profile.vllm.max_num_seqs}) without VLLM_BATCH_INVARIANT=1 "
            f"(found {value!r}): a request's tokens then depend on what shares its batch"
        )
    return item(
        "batch-invariant mode",
        problem,
        "VLLM_BATCH_INVARIANT=1" if concurrency > 1 else "vllm.max_num_seqs 1: never batched",
        "set vllm.batch_invariant to true (or vllm.max_num_seqs to 1)",
    )


def _profile_gpus(loaded: LoadedProfile, gpus: tuple[GpuDevice, ...]) -> list[GpuDevice] | str:
    """The listed GPUs the profile's container gets: those ``runtime.gpu_ids`` names (by index
    or UUID), else all of them (``gpu_count`` lets the engine choose any)."""
    ids = loaded.profile.runtime.gpu_ids
    if ids is None:
        return list(gpus)
    chosen = [gpu for gpu in gpus if str(gpu.index) in ids or gpu.uuid in ids]
    unknown = sorted(set(ids) - {str(g.index) for g in chosen} - {g.uuid for g in chosen})
    if unknown:
        return f"runtime.gpu_ids names GPUs nvidia-smi does not list: {', '.join(unknown)}"
    return chosen


def check_compute_capability(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    name = "GPU compute capability"
    minimum = ".".join(str(part) for part in BATCH_INVARIANT_MIN_COMPUTE_CAPABILITY)
    if loaded.profile.runtime.device != "nvidia":
        return CheckItem(name, "PASS", "CPU profile: no GPU is used", None)
    if _batch_invariant_value(loaded) != "1":
        return CheckItem(
            name, "PASS", "batch-invariant mode is off: no compute capability is required", None
        )
    gpu = facts.gpu
    problem: str | None = None
    shown = ""
    if gpu.gpus is None:
        problem = f"cannot read the GPUs' compute capability: {gpu.reason}"
    elif not gpu.gpus:
        problem = "nvidia-smi lists no GPU"
    else:
        used = _profile_gpus(loaded, gpu.gpus)
        if isinstance(used, str):
            problem = used
        else:
            shown = ", ".join(
                f"GPU {g.index} {g.name} {g.compute_capability_text or '(not reported)'}"
                for g in used
            )
            below = [
                g
                for g in used
                if g.compute_capability is None
                or g.compute_capability < BATCH_INVARIANT_MIN_COMPUTE_CAPABILITY
            ]
            if below:
                problem = (
                    f"batch-invariant mode needs compute capability {minimum} or higher "
                    f"(vLLM's requirement); found {shown}"
                )
    return item(
        name,
        problem,
        f"{shown}: at least {minimum}, as vLLM's batch-invariant mode needs",
        f"run on NVIDIA GPUs of compute capability {minimum} or higher (A100, H100, ...); "
        "`runtime.gpu_ids` picks them on a mixed host",
    )


def check_no_gpu_under_cpu_profile(loaded: LoadedProfile, facts: DoctorFacts) -> CheckItem:
    name = "no GPU under a CPU profile"
    if loaded.profile.runtime.device != "cpu":
        return CheckItem(name, "PASS", "GPU profile", None)
    gpu = facts.gpu
    if gpu.gpus is None:
        if gpu.reason == NO_NVIDIA_SMI:
            return CheckItem(name, "PASS", f"no NVIDIA GPU seen ({gpu.reason})", None)
        problem: str | None = f"cannot tell whether this host has GPUs: {gpu.reason}"
    elif gpu.gpus:
        listed = ", ".join(f"GPU {g.index} {g.name}" for g in gpu.gpus)
        problem = (
            f"a CPU profile on a host with {len(gpu.gpus)} NVIDIA GPU(s) ({listed}): an engine "
            "whose default runtime is NVIDIA's, or an image that asks for them, can hand them "
            "to a container whose pins say cpu, and the claim's fingerprint names GPUs its "
            "replays' hosts lack"
        )
    else:
        problem = None
    return item(
        name,
        problem,
        "nvidia-smi lists no GPU",
        "serve the model with a GPU profile (`runtime.device: nvidia`), or make CPU claims on a "
        "host without NVIDIA GPUs",
    )
