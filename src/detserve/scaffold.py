"""Profile scaffolding (``detserve init``): an unpinned profile for a model on a device, and the
ordered commands that pin, fetch, trust and serve it.

The profile written has defaults that fit the device: on ``nvidia``, bfloat16, vLLM's
batch-invariant mode, tensor parallelism over every GPU requested, and the upstream vLLM image of
the same vLLM version as the CPU image (``vllm/vllm-openai:v0.32.0``; ``scripts/stack`` builds
``127.0.0.1:5000/detserve/vllm-cpu:0.32.0``); on ``cpu``, what the tiny profile sets
(``configs/tiny-cpu.json``). It names where its snapshot, manifests and prompt bundle go (under
the working directory's ``artifacts/`` and ``manifests/``, or ``/var/lib/detserve/hf-home`` for
a GPU's weights, as the committed GPU profiles do), relative to the profile file.

Invariants: both pins are null (``model.revision``, ``runtime.image``): init never resolves or
trusts anything; the document is validated by the same models as every profile before a byte is
written; an existing path is never replaced, nor anything that is not a regular file (exit 2),
and the write is atomic; the model id is a hub id ``ORG/NAME`` and the name a profile name, which
is also a plain file name (no separator, never ``.`` or ``..``). The checklist's commands are shown
exactly as they are to be run, paths quoted for a POSIX shell; an UPPER-CASE word is a value only
the operator has (a dataset, a publisher's signature, the commit ``lock-model`` writes).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detserve.errors import OutputExistsError, UsageError, bounded
from detserve.fileio import atomic_write_bytes, check_outputs
from detserve.profile import MODEL_ID_RE, Profile, parse_profile

#: the vLLM version of the CPU image ``scripts/stack`` builds, and of the engine policy's parser
VLLM_VERSION = "0.32.0"
#: the CPU image ``scripts/stack`` builds and pushes to the local registry
CPU_IMAGE_TAG = f"127.0.0.1:5000/detserve/vllm-cpu:{VLLM_VERSION}"
#: the upstream vLLM image of the same version, for NVIDIA GPUs
GPU_IMAGE_TAG = f"vllm/vllm-openai:v{VLLM_VERSION}"
#: where the committed GPU profiles keep their weights: large, and outside the repository
GPU_HF_HOME = "/var/lib/detserve/hf-home"
#: the first prompt bundle the checklist bootstraps
BUNDLE_PROMPTS = 64

Device = Literal["cpu", "nvidia"]
PROFILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class InitRequest:
    """What ``detserve init`` was asked for."""

    model_id: str
    device: Device
    name: str
    #: GPUs to request (``nvidia`` only; default 1)
    gpus: int | None = None
    #: the profile file; by default ``configs/NAME.json`` under ``root``
    output: Path | None = None
    #: the snapshot's Hugging Face home; by default ``artifacts/hf-cache`` under ``root`` (CPU)
    #: or :data:`GPU_HF_HOME` (GPU)
    hf_home: Path | None = None
    #: the directory the checklist's commands run in, holding ``artifacts/`` and ``manifests/``
    root: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class Step:
    """One step of the checklist: its name, what it establishes, and its commands in order;
    ``instead``, where given, is the other way to take the step."""

    name: str
    purpose: str
    commands: tuple[str, ...]
    instead: tuple[str, ...] = ()
    instead_when: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "step": self.name,
            "purpose": self.purpose,
            "commands": list(self.commands),
            "instead": list(self.instead),
            "instead_when": self.instead_when or None,
        }


@dataclass(frozen=True)
class InitResult:
    """The profile written, and what to run next."""

    path: Path
    profile: Profile
    checklist: tuple[Step, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "profile": str(self.path),
            "name": self.profile.name,
            "model_id": self.profile.model.id,
            "device": self.profile.runtime.device,
            "checklist": [step.as_json() for step in self.checklist],
        }


def check_request(request: InitRequest) -> None:
    """Refuse a bad model id, name, device or GPU count (exit 2), before anything is written."""
    model = request.model_id
    if (
        not MODEL_ID_RE.fullmatch(model)
        or any(part in model for part in ("--", ".."))
        or any(len(part) > 96 for part in model.split("/"))
        or model.endswith(".git")
    ):
        # the hub's rules: its cache folder is models--ORG--NAME, so '--' would be ambiguous
        raise UsageError(
            f"--model {bounded(repr(model), 200)}: expected a Hugging Face model id 'ORG/NAME' "
            "(letters, digits, '.', '_' and '-', at most 96 each; no '--' or '..', no '.git' "
            "ending)"
        )
    if not PROFILE_NAME_RE.fullmatch(request.name):
        raise UsageError(
            f"--name {bounded(repr(request.name), 200)}: expected a profile name, a plain file "
            "name of lower-case letters, digits, '.', '_' and '-', starting with a letter or a "
            "digit, at most 64 characters (it names NAME.json, its manifests and its container)"
        )
    if request.device not in ("cpu", "nvidia"):
        raise UsageError(f"--device {bounded(repr(request.device), 200)}: choose cpu or nvidia")
    if request.device == "cpu" and request.gpus is not None:
        raise UsageError("--gpus is for --device nvidia; a CPU profile requests no GPU")
    if request.gpus is not None and not 1 <= request.gpus <= 1024:
        raise UsageError(f"--gpus {request.gpus}: choose 1..1024")
    for path in (request.output, request.hf_home):
        if path is not None and _CONTROL_RE.search(str(path)):
            raise UsageError(f"{bounded(str(path), 200)}: a path with a control character")


def profile_path(request: InitRequest) -> Path:
    return (
        request.output if request.output is not None else Path("configs") / f"{request.name}.json"
    )


def _under_root(request: InitRequest, path: Path) -> Path:
    return path if path.is_absolute() else request.root / path


def _as_named(request: InitRequest, target: Path) -> str:
    """``target`` as the profile names it: relative to the profile file's directory when both
    lie under ``root`` (the layout moves with the repository), else absolute."""
    directory = _under_root(request, profile_path(request)).parent.resolve()
    target = _under_root(request, target).resolve()
    root = request.root.resolve()
    if directory.is_relative_to(root) and target.is_relative_to(root):
        return os.path.relpath(target, directory)
    return str(target)


def bundle_name(request: InitRequest) -> str:
    return f"{request.name}-prompts"


def profile_document(request: InitRequest) -> dict[str, Any]:
    """The profile ``init`` writes for ``request``, as a JSON document (not yet validated)."""
    name = request.name
    bundle = bundle_name(request)
    gpu = request.device == "nvidia"
    gpus = request.gpus or 1
    hf_home = request.hf_home or (Path(GPU_HF_HOME) if gpu else Path("artifacts/hf-cache"))
    where = "on one GPU" if gpus == 1 else f"over {gpus} GPUs with tensor parallelism"
    runtime: dict[str, Any] = {"image_tag": GPU_IMAGE_TAG if gpu else CPU_IMAGE_TAG, "image": None}
    if gpu:
        runtime |= {
            "device": "nvidia",
            "gpu_count": gpus,
            "shm_size": "8g" if gpus == 1 else "16g",
            # tensor parallelism over several GPUs shares memory between their processes
            "ipc_mode": None if gpus == 1 else "host",
            "host": "127.0.0.1",
            "port": 8000,
            "environment": {},
            "startup_timeout_s": 3600,
        }
        vllm: dict[str, Any] = {
            "served_model_name": name,
            "dtype": "bfloat16",
            "max_model_len": 8192,
            "tensor_parallel_size": gpus,
            "gpu_memory_utilization": 0.9,
            "max_num_seqs": 8,
            "batch_invariant": True,
        }
        sampling = {"temperature": 0.0, "seed": 0, "concurrency": 1, "max_tokens": 256}
    else:
        runtime |= {
            "device": "cpu",
            "shm_size": "1g",
            "host": "127.0.0.1",
            "port": 8000,
            "environment": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "startup_timeout_s": 600,
            "cpu_placement": "engine-core-with-worker-when-concurrent",
        }
        vllm = {
            "served_model_name": name,
            "dtype": "float32",
            "max_model_len": 512,
            "max_num_seqs": 32,
            "enforce_eager": True,
            "structured_outputs": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        sampling = {"temperature": 0.0, "seed": 0, "concurrency": 1, "max_tokens": 32}
    device = f"bfloat16 {where}" if gpu else "float32 on vLLM's CPU build"
    return {
        "schema_version": 1,
        "name": name,
        "description": (
            f"{request.model_id} in {device}, written by `detserve init`. Pins are null until a "
            "person runs lock-model and lock-image, reviews and commits them; detserve refuses "
            "to run this profile until then."
        ),
        "model": {"id": request.model_id, "ref": "main", "revision": None},
        "snapshot": {
            "hf_home": _as_named(request, hf_home),
            "manifest_dir": _as_named(request, Path("manifests")),
        },
        "runtime": runtime,
        "vllm": vllm,
        "sampling": sampling,
        "prompts": {
            "bundle": _as_named(request, Path("artifacts") / bundle),
            "manifest": _as_named(request, Path("manifests") / bundle / f"{bundle}.sha256"),
        },
    }


def checklist(request: InitRequest) -> tuple[Step, ...]:
    """What to run after ``init``, in order, each command exactly as it is to be run."""
    name = request.name
    profile = shlex.quote(str(profile_path(request)))
    gpu = request.device == "nvidia"
    # A locally built CPU image has this machine's digest: pinned into a git-ignored copy.
    local_path = profile_path(request).with_name(f"{name}.local.json")
    served = profile if gpu else shlex.quote(str(local_path))
    bundle = bundle_name(request)
    bundle_dir = f"artifacts/{bundle}"
    bundle_pin = f"manifests/{bundle}/{bundle}.sha256"
    manifest = f"manifests/{name}/REVISION.sha256"
    runs = f"artifacts/runs/{name}"
    lock_image = f"detserve lock-image --config {profile} --write"
    return (
        Step(
            "lock-model",
            "pin model.revision: the commit model.ref names now (review and commit it)",
            (f"detserve lock-model --config {profile} --write",),
        ),
        Step(
            "download",
            "fetch exactly that commit's files into snapshot.hf_home",
            (f"detserve download --config {profile}",),
        ),
        Step(
            "hash",
            "make the snapshot's manifest, its trust root (REVISION is the commit lock-model "
            "wrote; review and commit the manifest)",
            (f"detserve hash --config {profile} --manifest-output {manifest}",),
            instead=(
                f"detserve hash --config {profile} --model-signature SIGNATURE "
                f"--public-key PUBLIC_KEY --manifest-output {manifest}",
            ),
            instead_when="the publisher signs the model (the manifest is written only once the "
            "signature and every signed digest verify)",
        ),
        Step(
            "lock-image",
            "pin runtime.image: the digest runtime.image_tag names now"
            + ("" if gpu else " (built on this machine: pinned into a git-ignored copy)"),
            (lock_image if gpu else f"{lock_image} --profile-output {served}",),
        ),
        Step(
            "bundle",
            "bootstrap the prompt bundle prompts.bundle names, measured with this model's "
            "tokenizer, and pin it (review and commit both)",
            (
                f"detserve prompts bootstrap --config {profile} --dataset-file DATASET "
                f"--dataset-sha256 DATASET_SHA256 --n-prompts {BUNDLE_PROMPTS} --name {bundle} "
                f"--output-dir {bundle_dir}",
                f"detserve hash --snapshot {bundle_dir} --manifest-output {bundle_pin}",
                f"detserve prompts verify --config {profile}",
            ),
        ),
        Step(
            "run",
            "start the pinned container, wait while the whole snapshot verifies, smoke-test",
            (f"detserve run --config {served}",),
        ),
        Step(
            "sample",
            "sample the bundle strictly into a run log: the claim",
            (
                f"detserve sample --config {served} --run-log-output {runs}.runlog.jsonl "
                f"--sidecar-output {runs}.sidecar.json",
            ),
        ),
        Step(
            "attest",
            "sign the claim, with the environment fingerprint sample wrote into the sidecar "
            "(publish the envelope, the run log and the public key)",
            (
                "detserve keygen --output-dir keys/",
                # no `detserve env`: attest refuses a second fingerprint beside the sidecar's
                f"detserve attest --run-log {runs}.runlog.jsonl --sidecar {runs}.sidecar.json "
                f"--key keys/detserve.key --envelope-output {runs}.claim.intoto.json",
            ),
        ),
    )


def init_profile(request: InitRequest) -> InitResult:
    """Write the unpinned profile for ``request`` and return it with the checklist.

    Refuses (exit 2) a bad request, an existing path (never replaced) and a path that is not a
    regular file; the document is validated as any profile before it is written.
    """
    check_request(request)
    path = profile_path(request)
    target = _under_root(request, path)
    data = (json.dumps(profile_document(request), indent=2, ensure_ascii=False) + "\n").encode()
    profile = parse_profile(data, source=str(path))  # what is written loads as it is
    try:
        check_outputs([target], force=False)
        atomic_write_bytes(target, data, force=False)
    except OutputExistsError as exc:
        raise OutputExistsError(
            exc.message,
            hint="init never replaces a profile: choose another --name or --output, or remove "
            "the file yourself",
        ) from exc
    return InitResult(path=path, profile=profile, checklist=checklist(request))
