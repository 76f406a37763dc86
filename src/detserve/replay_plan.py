"""Planning a replay: whether a claim can be replayed under a profile, and what it needs.

A verifier's claim is a run log. Before anything runs, the claim's pins are compared with the
verifier's own profile, manifest and prompt bundle: a claim made under other pins cannot be
replayed and is reported as such (exit 1), not sampled against. The plan keeps the sha256 of
the bytes it validated, so that the comparison at the end can require those very bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detserve.errors import VerificationError
from detserve.pins import pin_differences, profile_pins
from detserve.profile import LoadedProfile
from detserve.prompts import PromptBundle
from detserve.runlog import RunLogHeader, validate_run_log
from detserve.runtime.container_spec import manifest_sha256


class NotAReplay(VerificationError):
    kind = "not-a-replay"


@dataclass(frozen=True)
class ReplayPlan:
    """What to sample so that the result is comparable with the claim."""

    claim: Path
    #: the sha256 of the claim that was validated: the comparison must read these bytes
    claim_sha256: str
    header: RunLogHeader
    n_prompts: int
    max_tokens: int
    logprobs: int | None


def plan_replay(
    claim: Path,
    loaded: LoadedProfile,
    bundle: PromptBundle,
    *,
    claim_sha256: str | None = None,
) -> ReplayPlan:
    """Validate the claim completely and refuse unless the local pins are the claim's;
    ``claim_sha256``, when given (a signature verified it), must be the bytes validated."""
    summary = validate_run_log(claim, expected_sha256=claim_sha256)
    header = summary.header
    local = profile_pins(loaded, manifest_sha256=manifest_sha256(loaded))
    differences = pin_differences(header.pins, local, prompt_bundle_sha256=bundle.sha256)
    if header.sampling.seed != loaded.profile.sampling.seed:
        differences.append(
            f"seed: claim {header.sampling.seed!r}, local {loaded.profile.sampling.seed!r}"
        )
    if differences:
        raise NotAReplay(
            f"{claim} was made under other pins than {loaded.path}: not a replay",
            details=differences,
            hint="replay with the claim's profile, manifest, image and prompt bundle",
        )
    if header.n_samples > len(bundle.prompts):
        raise NotAReplay(
            f"{claim} has {header.n_samples} samples; the pinned bundle has {len(bundle.prompts)}"
        )
    return ReplayPlan(
        claim=claim,
        claim_sha256=summary.sha256,
        header=header,
        n_prompts=header.n_samples,
        max_tokens=header.sampling.max_tokens,
        logprobs=header.sampling.logprobs,
    )


def replay_requirements(header: RunLogHeader) -> list[tuple[str, str]]:
    """What a verifier's profile must hold to replay a claim: (profile field, required value).

    The claim's pins, translated into the profile fields and files that produce them; a
    verifier fills these in (or takes the operator's profile) and ``replay`` checks them all.
    """
    pins = header.pins
    environment = {
        k: v for k, v in pins.environment.items() if k not in {"HF_HOME", "HF_HUB_OFFLINE"}
    }
    gpus = "" if pins.device.kind == "cpu" else f" with {pins.device.gpus} GPU(s)"
    return [
        ("model.id", pins.model_id),
        ("model.revision", pins.model_revision),
        (
            "manifest (manifests/<name>/<revision>.sha256)",
            f"a file whose sha256 is {pins.manifest_sha256}",
        ),
        ("runtime.image", pins.image),
        ("runtime.device", f"{pins.device.kind}{gpus}"),
        (
            "runtime.entrypoint",
            "null (the image's)" if pins.entrypoint is None else repr(list(pins.entrypoint)),
        ),
        ("runtime.environment", repr(environment)),
        ("vllm.served_model_name", pins.served_model_name),
        ("vllm.* and vllm.extra_args", "giving the engine arguments " + " ".join(pins.engine_args)),
        ("sampling.seed", str(header.sampling.seed)),
        (
            "prompts.bundle / prompts.manifest (or --bundle / --bundle-pin)",
            f"a prompt bundle whose sha256 is {pins.prompt_bundle_sha256}, measured on that model",
        ),
        ("the image's vLLM", pins.vllm_version),
    ]
