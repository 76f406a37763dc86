"""``detserve check``: measure, against the running pinned server, why runs could differ.

The same pre-flight as strict sampling, nothing weaker: every pin filled, the snapshot verified
against its manifest, the bundle measured with the verified snapshot's tokenizer
(:mod:`detserve.bundle_binding`), the container bound to the pins (:func:`checked_container`),
the pinned model served. Then every pass of the plan (:mod:`~detserve.diagnosis.measure`), with the
container's identity checked while requests are in flight (:mod:`detserve.verified`). At the
end the identity is checked again, the snapshot verified again against the same manifest and,
when a probe is given, the environment fingerprinted again: any change is ``ENV_CHANGED`` and the
measurements are not compared (a restarted server's tokens are not one server's).

The core never prints; it returns a :class:`CheckResult`, whatever the verdict. A server that
fails to answer is an environment error (exit 3), not a verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from detserve.bundle_binding import prompts_within_budget, require_bundle_tokenizer
from detserve.diagnosis.measure import CheckPlan, Measurements, PassKey, measure
from detserve.diagnosis.verdict import Diagnosis, diagnose, env_changed
from detserve.errors import ContainerError, SnapshotMismatch, UsageError
from detserve.fingerprint import EnvironmentFingerprint, FingerprintEngine, environment_fingerprint
from detserve.profile import LoadedProfile
from detserve.prompts import PromptBundle
from detserve.request_kinds import GenerationParams, PromptRecord, generate
from detserve.runlog import RunPins
from detserve.runtime.cluster_nodes import NodeEngines
from detserve.runtime.docker_engine import ContainerEngine
from detserve.runtime.metrics import read_counters
from detserve.runtime.vllm_client import Completion, VllmServer
from detserve.snapshot_state import Lifetime, PinnedManifest, verify_in_lifetime
from detserve.verified import opened_server, verified_server


@dataclass(frozen=True)
class CheckResult:
    """What a check measured and concluded; written out by :mod:`~detserve.diagnosis.repropack`."""

    plan: CheckPlan
    diagnosis: Diagnosis
    measurements: Measurements | None
    pins: RunPins
    seed: int
    fingerprint: EnvironmentFingerprint | None
    container_id: str
    started_at: str
    finished_at: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.diagnosis.passed


def check_plan(loaded: LoadedProfile, bundle: PromptBundle, plan: CheckPlan) -> None:
    """Refuse a plan before any work: pins, prompts, token budget, levels, runs, tier."""
    loaded.require_pins()
    prompts_within_budget(loaded, bundle, plan.n_prompts, plan.max_tokens)
    if plan.levels[0] != 1 or len(plan.levels) < 2:
        raise UsageError("--concurrency needs at least one level above 1 (1 is the baseline)")
    if plan.tier >= 1 and plan.runs < 2:
        raise UsageError(f"tier {plan.tier} needs --runs 2 or more: one run shows no run variance")
    if plan.tier == 2 and plan.logprobs is None:
        raise UsageError("tier 2 compares logprobs: give --logprobs N (0 or more)")


def _complete(
    server: VllmServer, plan: CheckPlan, seed: int, model: str
) -> Callable[[PromptRecord], Completion]:
    params = GenerationParams(
        max_tokens=plan.max_tokens, seed=seed, logprobs=plan.logprobs, model=model
    )

    def complete(prompt: PromptRecord) -> Completion:
        # every request kind, as sample makes it (detserve.request_kinds)
        result = generate(server.generate, prompt, params, f"prompt {prompt.id}")
        assert isinstance(result, Completion)
        return result

    return complete


def run_check(
    loaded: LoadedProfile,
    bundle: PromptBundle,
    plan: CheckPlan,
    *,
    engine: ContainerEngine,
    probe: FingerprintEngine | None = None,
    on_pass: Callable[[PassKey], None] | None = None,
    full_verify: bool = False,
    nodes: NodeEngines | None = None,
) -> CheckResult:
    """Measure ``plan`` against the profile's running, verified container (on a cluster, given
    ``nodes``: every node's, each bound, verified and watched, the head serving).

    The snapshot is verified for the container's lifetime at the start and at the end
    (:mod:`detserve.snapshot_state`; ``full_verify`` hashes every byte both times)."""
    check_plan(loaded, bundle, plan)
    prompts = bundle.take(plan.n_prompts)
    seed = loaded.profile.sampling.seed
    manifest = PinnedManifest.read(loaded.manifest_path)
    # the bytes the snapshot is verified against next (sampling.sample), before the engine
    require_bundle_tokenizer(bundle, loaded, manifest.digests())
    bound = verified_server(
        loaded, engine, manifest, nodes=nodes, what="check", full_verify=full_verify
    )
    container, watch, lifetime, first = bound.container, bound.watch, bound.lifetime, bound.report
    fingerprint = environment_fingerprint(loaded, probe) if probe is not None else None
    started_wall = datetime.now(UTC).isoformat()
    started = time.perf_counter()
    base_url = bound.url
    measurements: Measurements | None = None
    with opened_server(loaded, base_url) as (server, vllm_version):
        run_pins = bound.pins.run_pins(
            prompt_bundle_sha256=bundle.sha256,
            vllm_version=vllm_version,
            ray_version=bound.ray_version,
        )
        try:
            measurements = measure(
                prompts,
                plan,
                _complete(server, plan, seed, loaded.profile.vllm.served_model_name),
                counters=lambda: read_counters(base_url),
                between=watch.check,
                on_pass=on_pass,
            )
            watch.check(force=True)
            diagnosis = _after(
                loaded, plan, first.manifest_sha256, fingerprint, probe, lifetime, full_verify
            )
            if diagnosis is None:
                diagnosis = diagnose(measurements, plan.tier)
        except ContainerError as exc:
            diagnosis = env_changed(plan.tier, f"{exc.message} ({'; '.join(exc.details)})")
    return CheckResult(
        plan=plan,
        diagnosis=diagnosis,
        measurements=measurements,
        pins=run_pins,
        seed=seed,
        fingerprint=fingerprint,
        container_id=container.id,
        started_at=started_wall,
        finished_at=datetime.now(UTC).isoformat(),
        seconds=time.perf_counter() - started,
    )


def _after(
    loaded: LoadedProfile,
    plan: CheckPlan,
    manifest_sha256: str,
    fingerprint: EnvironmentFingerprint | None,
    probe: FingerprintEngine | None,
    lifetime: Lifetime,
    full_verify: bool,
) -> Diagnosis | None:
    """ENV_CHANGED when the snapshot, its manifest or the environment changed; else None."""
    try:
        final = verify_in_lifetime(
            loaded.snapshot_dir,
            PinnedManifest.read(loaded.manifest_path),
            lifetime,
            full=full_verify,
        )
    except SnapshotMismatch as exc:
        return env_changed(plan.tier, f"the snapshot changed during the check: {exc.message}")
    if final.manifest_sha256 != manifest_sha256:
        return env_changed(
            plan.tier,
            f"the manifest changed during the check: sha256 {manifest_sha256} at start, "
            f"{final.manifest_sha256} at end",
        )
    if probe is not None and fingerprint is not None:
        now = environment_fingerprint(loaded, probe)
        if now.sha256 != fingerprint.sha256:
            return env_changed(
                plan.tier,
                f"the environment fingerprint changed during the check: {fingerprint.sha256} "
                f"at start, {now.sha256} at end",
            )
    return None
