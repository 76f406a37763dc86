"""The face's claim verbs: the prompts a claim samples, the claim made (``sample``), signed
(``keygen``, ``attest``) and checked (``verify_claim``, ``replay`` on one engine or a fleet).

Wrappers only: each takes paths (or a loaded profile), calls the room that does the work
(:mod:`detserve.sampling_session`, :mod:`detserve.claim_replay`, :mod:`detserve.fleet_replay`,
:mod:`detserve.prompt_bootstrap`, :mod:`detserve.attestation`, :mod:`detserve.keys`) and returns
its result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from detserve.api._common import ProfileLike, StageSink, load_profile
from detserve.errors import UsageError, bounded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from detserve.attestation import AttestedClaim, SignedClaim
    from detserve.claim_replay import ReplayResult, TranscriptReplayResult
    from detserve.fleet import FleetReport
    from detserve.keys import KeyPair
    from detserve.prompts import BundleInfo, PromptBundle
    from detserve.runtime.docker_engine import ContainerEngine
    from detserve.sampling import SampleSummary
    from detserve.sampling_session import SamplingObserver


#: the committed reference prompt bundle and its pin, relative to the working directory: what
#: :func:`load_prompts` loads without a profile (a profile names its own, ``prompts``)
DEFAULT_BUNDLE = Path("artifacts/reference_prompts")
DEFAULT_BUNDLE_PIN = Path("manifests/reference_prompts/reference_prompts.sha256")


def load_prompts(
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    *,
    config: ProfileLike | None = None,
) -> PromptBundle:
    """A prompt bundle, verified against its pin before a prompt is read.

    With ``config``: the profile's bundle (``prompts.bundle`` and ``prompts.manifest``) unless
    ``bundle`` or ``bundle_pin`` is given, and refused unless it was measured with the tokenizer
    the profile's manifest pins (:class:`~detserve.errors.BundleModelMismatch`, exit 1); a
    profile that names no bundle is :class:`~detserve.errors.UnpinnedError` (exit 2). Without:
    ``bundle`` and ``bundle_pin``, by default :data:`DEFAULT_BUNDLE` and
    :data:`DEFAULT_BUNDLE_PIN`.
    """
    if config is not None:
        from detserve.bundle_binding import load_profile_bundle

        return load_profile_bundle(load_profile(config), bundle, bundle_pin)
    from detserve.prompts import load_bundle

    return load_bundle(
        Path(bundle if bundle is not None else DEFAULT_BUNDLE),
        Path(bundle_pin if bundle_pin is not None else DEFAULT_BUNDLE_PIN),
    )


def bootstrap_prompts(
    config: ProfileLike,
    *,
    output_dir: Path | str,
    n_prompts: int,
    dataset_file: Path | str | None = None,
    dataset_sha256: str | None = None,
    hf_dataset: str | None = None,
    dataset_revision: str | None = None,
    dataset_filename: str | None = None,
    fmt: str = "jsonl",
    field: str = "text",
    max_prompt_tokens: int | None = None,
    name: str = "reference_prompts",
    endpoint: str | None = None,
    force: bool = False,
) -> BundleInfo:
    """Build a prompt bundle from a dataset whose content is pinned; nothing is trusted yet.

    Either a local ``dataset_file`` with its ``dataset_sha256``, or a Hugging Face dataset file
    at a pinned commit (``hf_dataset``, ``dataset_revision``, ``dataset_filename``). ``fmt``:
    ``jsonl`` (``field`` holds the prompt, or ``messages`` a conversation), ``text`` (a prompt a
    line) or ``requests`` (whole bundle lines). Prompts are measured with the profile's pinned
    tokenizer (and chat template). Pin the bundle afterwards with :func:`hash_snapshot`.
    """
    from detserve.prompt_bootstrap import bootstrap_prompts as bootstrap

    return bootstrap(
        config,
        output_dir=output_dir,
        n_prompts=n_prompts,
        dataset_file=dataset_file,
        dataset_sha256=dataset_sha256,
        hf_dataset=hf_dataset,
        dataset_revision=dataset_revision,
        dataset_filename=dataset_filename,
        fmt=fmt,
        field=field,
        max_prompt_tokens=max_prompt_tokens,
        name=name,
        endpoint=endpoint,
        force=force,
    )


def sample(
    config: ProfileLike,
    *,
    run_log: Path | str,
    sidecar: Path | str,
    n_prompts: int | None = None,
    max_tokens: int | None = None,
    logprobs: int | None = None,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    force: bool = False,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    audit: float = 0.0,
    audit_seed: int = 0,
    observer: SamplingObserver | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
    full_verify: bool = False,
) -> SampleSummary:
    """Sample the pinned prompt bundle from the bound, running server into a canonical run log.

    Strict only: every pin filled, the snapshot and the bundle verified, the bundle measured on
    the profile's model (``bundle`` and ``bundle_pin``, by default the profile's ``prompts``;
    see :func:`load_prompts`), the container bound to the pins, greedy with the profile's seed,
    one request in flight, unless ``certificate`` (a :func:`check`'s ``certificate.json`` for
    these very pins and parameters, signed by the private key of ``certificate_key`` and
    supported by its trace: :func:`verify_certificate`) covers ``concurrency``; the log is then
    the same bytes as at concurrency 1. ``audit`` re-samples that fraction of the prompts one at
    a time afterwards (seeded by ``audit_seed``) and fails the run on any difference. Any
    failure, Ctrl-C included, leaves nothing at ``run_log`` or ``sidecar``. The run log's sha256
    is the claim.

    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`).
    """
    from detserve.bundle_binding import load_profile_bundle
    from detserve.sampling import SampleRequest
    from detserve.sampling_session import sample_profile

    loaded = load_profile(config)
    loaded.require_pins()
    prompts = load_profile_bundle(loaded, bundle, bundle_pin)
    request = SampleRequest(
        n_prompts=n_prompts,
        max_tokens=max_tokens or loaded.profile.sampling.max_tokens,
        logprobs=logprobs,
        run_log_output=Path(run_log),
        sidecar_output=Path(sidecar),
        force=force,
        concurrency=concurrency,
        certificate=Path(certificate) if certificate is not None else None,
        certificate_key=Path(certificate_key) if certificate_key is not None else None,
        audit_fraction=audit,
        audit_seed=audit_seed,
        full_verify=full_verify,
    )
    return sample_profile(
        loaded, prompts, request, observer=observer, engine=engine, docker_host=docker_host
    )


def replay(
    claim: Path | str,
    config: ProfileLike,
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
    """Re-run a claimed run log under your own pinned profile, and compare, in one step.

    The claim is validated and its pins compared with the profile's before anything starts
    (other pins: :class:`~detserve.replay_plan.NotAReplay`, exit 1); so is the bundle (by
    default the profile's) against the profile's model. Then the server is run (start,
    wait with verification, smoke), the claim's prompts are sampled with its parameters into
    ``output_dir/replay.runlog.jsonl``, and the two logs are compared into
    ``output_dir/report.json``. Returns the result whatever the verdict; ``result.report.error()``
    is the error to raise when it is not IDENTICAL.

    A signed claim: ``claim`` is its DSSE envelope, ``public_key`` the signer's key and
    ``run_log`` the run log it signs. The signature is checked first (a bad or missing one:
    :class:`~detserve.envelope.SignatureError`, exit 1, before anything else is read), then the
    subject's sha256 against ``run_log``, then the pins as above.

    The claim is compared as the bytes that were verified: its sha256 when it was validated (the
    signed subject's, or ``claim_sha256`` when given) must be what the comparison reads at the
    end, and the replay's log must be what was sampled; a file swapped in between is
    :class:`~detserve.errors.EvidenceChanged` (exit 1), never a verdict.

    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`).
    """
    from detserve.claim_replay import replay_claim

    return replay_claim(
        claim,
        config,
        output_dir=output_dir,
        bundle=bundle,
        bundle_pin=bundle_pin,
        stop_after=stop_after,
        force=force,
        public_key=public_key,
        run_log=run_log,
        on_stage=on_stage,
        observer=observer,
        engine=engine,
        docker_host=docker_host,
        full_verify=full_verify,
        claim_sha256=claim_sha256,
    )


def replay_evidence(
    claim: Path | str,
    config: ProfileLike,
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
) -> ReplayResult | TranscriptReplayResult:
    """``detserve replay`` in one call: a gateway transcript (an unsigned ``claim`` whose first
    line is a transcript's header) is :func:`~detserve.api.replay_transcript`, anything else
    :func:`replay`. A transcript records its own requests, so ``bundle``, ``bundle_pin`` and
    ``run_log`` beside one are :class:`~detserve.errors.UsageError` (exit 2)."""
    from detserve.api.gateway import replay_transcript
    from detserve.runlog.kinds import is_transcript

    if public_key is None and is_transcript(Path(claim)):
        given = [
            option
            for option, value in (
                ("--bundle", bundle),
                ("--bundle-pin", bundle_pin),
                ("--run-log", run_log),
            )
            if value is not None
        ]
        if given:
            raise UsageError(
                f"{bounded(str(claim))} is a gateway transcript, which records its own requests: "
                f"{', '.join(given)} do not apply",
                hint="give the transcript segment alone, with --config and --output-dir",
            )
        return replay_transcript(
            claim,
            config,
            output_dir=output_dir,
            stop_after=stop_after,
            force=force,
            on_stage=on_stage,
            engine=engine,
            full_verify=full_verify,
            docker_host=docker_host,
        )
    return replay(
        claim,
        config,
        output_dir=output_dir,
        bundle=bundle,
        bundle_pin=bundle_pin,
        stop_after=stop_after,
        force=force,
        public_key=public_key,
        run_log=run_log,
        on_stage=on_stage,
        observer=observer,
        engine=engine,
        docker_host=docker_host,
        full_verify=full_verify,
    )


def replay_fleet(
    claim: Path | str,
    config: ProfileLike,
    *,
    nodes: Sequence[str],
    output_dir: Path | str,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    stop_after: bool = False,
    force: bool = False,
    on_stage: StageSink | None = None,
    docker_host: str | None = None,
) -> FleetReport:
    """Replay one claim on several Docker engines at once, and say which agree.

    Each of ``nodes`` is ``HOST[,config=PATH][,name=LABEL]`` (a Docker host URL; the node's own
    profile, by default ``config``; its name, by default ``node1``, ``node2``, ...). Every node
    replays the claim as :func:`replay` does, in its own thread, into ``output_dir/LABEL/``; the
    report says per node IDENTICAL, DIVERGENT, NOT A REPLAY or FAILED, with its run log's
    sha256 and how its environment fingerprint differs from the first agreeing node's, ranked
    by root-cause category. ``fleet.json`` in ``output_dir`` is the report. Returns it whatever
    the verdict; ``report.error()`` is the error to raise when not every node agrees. Every
    node samples ``bundle`` and ``bundle_pin`` if given, else its own profile's bundle; each is
    loaded and checked against its profile's model before any node is asked anything. Every node
    requires the claim's bytes the fleet validated (``claim_sha256`` of :func:`replay`).
    Without ``nodes``, one node: the engine ``docker_host`` (or ``DOCKER_HOST``, or the current
    Docker context) names; ``docker_host`` with ``nodes`` is refused.
    """
    from detserve.fleet_replay import replay_fleet as replay_core

    return replay_core(
        claim,
        config,
        nodes=nodes,
        output_dir=output_dir,
        bundle=bundle,
        bundle_pin=bundle_pin,
        stop_after=stop_after,
        force=force,
        on_stage=on_stage,
        docker_host=docker_host,
    )


def keygen(
    output_dir: Path | str, *, algorithm: str = "ed25519", name: str = "detserve"
) -> KeyPair:
    """Make a signing key pair for :func:`attest`: ``NAME.key`` (PKCS#8 PEM, mode 0600: keep it
    secret) and ``NAME.pub`` (PEM: publish it) in ``output_dir``. Never overwrites either; the
    key itself is never returned. ``algorithm``: ``ed25519`` or ``ecdsa-p256``."""
    from detserve.keys import ALGORITHMS, generate_key_pair

    if algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm {algorithm!r}: choose {' or '.join(ALGORITHMS)}")
    return generate_key_pair(Path(output_dir), algorithm=algorithm, name=name)


def attest(
    run_log: Path | str,
    sidecar: Path | str,
    key: Path | str,
    output: Path | str,
    *,
    environment: Path | str | None = None,
    force: bool = False,
) -> SignedClaim:
    """Sign a claim about ``run_log``: an in-toto Statement in a DSSE envelope, written to
    ``output`` atomically.

    The subject is the run log (file name and sha256); the predicate holds its pins, sampling
    parameters, the detserve version, the environment fingerprint and the sidecar's sha256. The
    run log is validated completely, the sidecar must name its sha256, and the fingerprint (the
    sidecar's, or for a sidecar without one ``environment``) must be of the run log's image.
    """
    from detserve.attestation import attest as attest_core

    return attest_core(
        Path(run_log),
        Path(sidecar),
        Path(key),
        Path(output),
        environment=Path(environment) if environment is not None else None,
        force=force,
    )


def verify_claim(
    envelope: Path | str, public_key: Path | str, run_log: Path | str
) -> AttestedClaim:
    """Check a signed claim without replaying it, stopping at the first failure: the signature
    with ``public_key`` (before the envelope's content is read), the statement, the subject's
    sha256 against ``run_log``'s bytes, the predicate's pins and sampling against the run log's
    header. A failure is a :class:`~detserve.errors.VerificationError` (exit 1); a file that is
    not a key, an envelope or a run log is :class:`~detserve.errors.InputError` (exit 2)."""
    from detserve.attestation import verify_claim as verify_core

    return verify_core(Path(envelope), Path(public_key), Path(run_log))
