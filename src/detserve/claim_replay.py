"""Replay a claim under your own pinned profile, and compare, in one step.

A run log (:func:`replay_claim`), signed or not, or one gateway transcript segment
(:func:`replay_transcript_claim`). The claim is validated and its pins compared with the
profile's before anything starts (other pins: :class:`~detserve.replay_plan.NotAReplay`,
exit 1); a signed claim's signature is checked before anything else is read. The outputs are
checked against every input before the claim is read. Then the server is run (start, wait with
verification, smoke), the claim is replayed into ``output_dir`` and the two are compared into
``output_dir/report.json``. The comparison reads the bytes that were verified and sampled: a
file swapped in between is :class:`~detserve.errors.EvidenceChanged` (exit 1), never a verdict.
The result is returned whatever the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.errors import UsageError, bounded
from detserve.fileio import check_output_dir, check_outputs, write_json_report

if TYPE_CHECKING:
    from detserve.attestation import AttestedClaim
    from detserve.evaluation import DeterminismReport
    from detserve.profile import LoadedProfile
    from detserve.replay_plan import ReplayPlan
    from detserve.runtime.docker_engine import ContainerEngine
    from detserve.sampling import SampleSummary
    from detserve.sampling_session import SamplingObserver

#: told each stage as it begins
StageSink = Callable[[str], None]


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` did: the plan it checked, the run it sampled and the comparison."""

    plan: ReplayPlan
    summary: SampleSummary
    report: DeterminismReport
    report_path: Path
    #: the verified envelope, when the claim was a signed one
    attested: AttestedClaim | None = None

    def as_json(self) -> dict[str, object]:
        return self.report.as_json() | {"replay_run_log": str(self.summary.run_log)}


def replay_claim(
    claim: Path | str,
    config: LoadedProfile | Path | str,
    *,
    output_dir: Path | str,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    stop_after: bool = False,
    force: bool = False,
    public_key: Path | str | None = None,
    run_log: Path | str | None = None,
    on_stage: StageSink | None = None,
    observer: SamplingObserver | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
    full_verify: bool = False,
    claim_sha256: str | None = None,
) -> ReplayResult:
    """Re-run ``claim`` under the profile and compare (:func:`detserve.api.replay`)."""
    from detserve.attestation import verify_claim
    from detserve.bundle_binding import load_profile_bundle
    from detserve.evaluation import evaluate as evaluate_core
    from detserve.profile import load_profile
    from detserve.replay_plan import plan_replay
    from detserve.runtime import lifecycle
    from detserve.runtime.connect import engine_for
    from detserve.sampling import SampleRequest
    from detserve.sampling_session import fingerprint_for, sample_observed

    stage = on_stage or (lambda _message: None)
    claim = Path(claim)
    output_dir = Path(output_dir)
    replay_log = output_dir / "replay.runlog.jsonl"
    sidecar = output_dir / "replay.sidecar.json"
    report_path = output_dir / "report.json"
    attested = None
    signed: tuple[Path, ...] = ()
    if public_key is not None or run_log is not None:
        if public_key is None or run_log is None:
            raise UsageError(
                "a signed claim needs both --public-key KEY and --run-log LOG (the log it signs)"
            )
        # The files named here, before the signature is checked (which reads nothing of the
        # outputs): no output may be one of them; the profile's own files follow once read.
        named: tuple[Path, ...] = (claim, Path(public_key), Path(run_log))
        named += tuple(Path(given) for given in (bundle_pin, bundle) if given is not None)
        named += (Path(config),) if isinstance(config, str | Path) else ()
        check_output_dir(output_dir, force=True, inputs=named)
        check_outputs((replay_log, sidecar, report_path), force=force, inputs=named)

        attested = verify_claim(claim, Path(public_key), Path(run_log))
        stage(f"envelope {claim}: signature and subject verified")
        signed = (claim, Path(public_key))
        claim = Path(run_log)
    loaded = load_profile(config)
    prompts = load_profile_bundle(loaded, bundle, bundle_pin)
    inputs = (
        claim,
        *signed,
        loaded.path,
        loaded.manifest_path,
        loaded.snapshot_dir,
        *prompts.files,
    )
    # Before the claim is read and anything runs; the outputs are named, so a directory that
    # holds other files is fine.
    check_output_dir(output_dir, force=True, inputs=inputs)
    check_outputs((replay_log, sidecar, report_path), force=force, inputs=inputs)
    if attested is not None:
        if claim_sha256 is not None and claim_sha256 != attested.run_log_sha256:
            raise UsageError("claim_sha256 is not the signed run log's sha256")
        claim_sha256 = attested.run_log_sha256
    plan = plan_replay(claim, loaded, prompts, claim_sha256=claim_sha256)
    request = SampleRequest(
        n_prompts=plan.n_prompts,
        max_tokens=plan.max_tokens,
        logprobs=plan.logprobs,
        run_log_output=replay_log,
        sidecar_output=sidecar,
        force=force,
        full_verify=full_verify,
    )
    engine = engine_for(engine, docker_host)
    fingerprint = fingerprint_for(loaded, engine)
    stage(f"claim {claim}: {plan.n_prompts} samples x {plan.max_tokens} tokens; pins match")
    lifecycle.run(loaded, engine=engine, on_stage=stage, full_verify=full_verify)
    try:
        summary = sample_observed(loaded, prompts, request, engine, observer, fingerprint)
    finally:
        if stop_after:
            lifecycle.stop(loaded, engine=engine)
    # what was verified and what was sampled, not whatever the paths hold now
    report = evaluate_core(
        claim, summary.run_log, expected_sha256=(plan.claim_sha256, summary.run_log_sha256)
    )
    write_json_report(report_path, report.as_json(), force=force)
    return ReplayResult(
        plan=plan, summary=summary, report=report, report_path=report_path, attested=attested
    )


@dataclass(frozen=True)
class TranscriptReplayResult:
    """What :func:`replay_transcript` did: the replay's transcript and the comparison."""

    replay_transcript: Path
    report: DeterminismReport
    report_path: Path

    def as_json(self) -> dict[str, object]:
        return self.report.as_json() | {"replay_transcript": str(self.replay_transcript)}


def replay_transcript_claim(
    claim: Path | str,
    config: LoadedProfile | Path | str,
    *,
    output_dir: Path | str,
    stop_after: bool = False,
    force: bool = False,
    on_stage: StageSink | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    docker_host: str | None = None,
) -> TranscriptReplayResult:
    """Re-send a gateway transcript's exchanges under the profile and compare
    (:func:`detserve.api.replay_transcript`)."""
    from detserve.gateway.replay import plan_transcript_replay
    from detserve.gateway.replay import replay_transcript as replay_core
    from detserve.profile import load_profile
    from detserve.runtime import lifecycle
    from detserve.runtime.connect import engine_for

    stage = on_stage or (lambda _message: None)
    claim = Path(claim)
    output_dir = Path(output_dir)
    loaded = load_profile(config)
    inputs = (claim, loaded.path, loaded.manifest_path, loaded.snapshot_dir)
    replay_path = output_dir / "replay.transcript.jsonl"
    report_path = output_dir / "report.json"
    check_output_dir(output_dir, force=True, inputs=inputs)
    _refuse_a_transcript_dir(output_dir, replay_path)
    check_outputs((replay_path, report_path), force=force, inputs=inputs)
    if force:
        replay_path.unlink(missing_ok=True)  # a transcript is never written over, only anew
    plan = plan_transcript_replay(claim, loaded)
    engine = engine_for(engine, docker_host)
    stage(f"claim {claim}: a gateway transcript of {plan.n_exchanges} exchanges; pins match")
    lifecycle.run(loaded, engine=engine, on_stage=stage, full_verify=full_verify)
    try:
        report = replay_core(plan, loaded, replay_path, engine=engine, full_verify=full_verify)
    finally:
        if stop_after:
            lifecycle.stop(loaded, engine=engine)
    write_json_report(report_path, report.as_json(), force=force)
    return TranscriptReplayResult(
        replay_transcript=replay_path, report=report, report_path=report_path
    )


def _refuse_a_transcript_dir(output_dir: Path, replay_path: Path) -> None:
    """A directory that holds a gateway's transcript segments is the gateway's: a replay
    written there would be read as one of its segments (``runlog validate DIR``, the next
    ``serve``), whatever ``--force`` says."""
    from detserve.errors import UnsafeOutputError
    from detserve.runlog.transcript import SUFFIX

    if not output_dir.is_dir():
        return
    segments = sorted(
        path.name
        for path in output_dir.iterdir()
        if path.name.endswith(SUFFIX) and path.name != replay_path.name
    )
    if segments:
        raise UnsafeOutputError(
            f"refusing to write a replay into {bounded(str(output_dir))}: it holds a gateway's "
            f"transcript segments ({bounded(segments[0])}"
            f"{f' and {len(segments) - 1} more' if len(segments) > 1 else ''})",
            hint="give the replay a directory of its own",
        )
