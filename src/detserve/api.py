"""detserve as a library: one typed function per thing a person does with it.

Every function here takes paths (or an already loaded profile), returns a frozen result object
and raises a :class:`~detserve.errors.DetserveError` subclass on failure; its ``exit_code`` is what
the CLI exits with (1 verification failed, 2 bad input, 3 environment). Nothing here prints or
exits: progress reaches the caller through optional observers, and the CLI is a thin layer that
parses options, calls one of these functions and renders the result.

Verification functions raise on any mismatch and never return a bool. A comparison's verdict,
on the other hand, is data: :func:`evaluate` returns the report whatever it says, and
``report.error()`` is the error to raise when it is not a pass (``None`` when it is).

Heavy dependencies (the Docker SDK, httpx, the evaluation layer) are imported inside the functions
that need them, so that ``import detserve`` and ``detserve verify`` stay fast.

Stability (semantic versioning, see the README): the names in ``__all__`` and the documented
fields of their results are the public API; everything else in ``detserve`` may change in a minor
release.

This module is over 450 lines because it is the one page a library user reads: one thin,
documented function per command, each a few lines over the core. Splitting it would scatter the
reference without separating concepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias

from detserve._public import API_NAMES
from detserve.errors import UsageError
from detserve.fileio import check_output_dir, check_outputs

if TYPE_CHECKING:
    from detserve.attest import AttestedClaim
    from detserve.certificate import VerifiedCertificate
    from detserve.diagnosis.check import CheckResult
    from detserve.diagnosis.measure import PassKey
    from detserve.diagnosis.repropack import ReproPack
    from detserve.download import DownloadObserver, DownloadPlan, DownloadResult
    from detserve.errors import DetserveError
    from detserve.evaluation import DeterminismReport, HashCheckReport, MajorityReport
    from detserve.evaluation.explain import ExplainedReport
    from detserve.fingerprint import FingerprintEngine
    from detserve.fleet import FleetNode, FleetReport, NodeResult
    from detserve.gateway.app import Gateway
    from detserve.locks import LockResult
    from detserve.profile import LoadedProfile
    from detserve.prompts import BundleInfo, PromptBundle
    from detserve.replay_plan import ReplayPlan
    from detserve.runlog import RunLogSummary
    from detserve.runlog.series import TranscriptSeries
    from detserve.runlog.transcript import TranscriptSummary
    from detserve.runtime.cluster_nodes import ClusterStatus, NodeEngines
    from detserve.runtime.cluster_run import ClusterRun, ClusterStop
    from detserve.runtime.engine import ContainerEngine
    from detserve.runtime.lifecycle import (
        RunResult,
        SmokeResult,
        StartResult,
        StatusResult,
        StopResult,
        WaitProgress,
        WaitResult,
    )
    from detserve.runtime.placement import Placement
    from detserve.sampling import CheckedRequest, SampleRequest, SampleSummary
    from detserve.signed_statement import SignedModel
    from detserve.snapshot import VerifyReport

#: the committed reference prompt bundle and its pin, relative to the working directory: what
#: :func:`load_prompts` loads without a profile (a profile names its own, ``prompts``)
DEFAULT_BUNDLE = Path("artifacts/reference_prompts")
DEFAULT_BUNDLE_PIN = Path("manifests/reference_prompts/reference_prompts.sha256")

#: a loaded profile, or the path of a profile file
ProfileLike: TypeAlias = "LoadedProfile | Path | str"


class BytesObserver(Protocol):
    """Told how many bytes there are to hash, then each chunk hashed (from several threads)."""

    def set_total(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


class SamplingObserver(Protocol):
    """Told how many samples a run will take, each snapshot byte verified, each sample done."""

    def planned(self, n_samples: int) -> None: ...

    def verified(self, count: int) -> None: ...

    def sampled(self, done: int, tokens: int) -> None: ...


StageSink = Callable[[str], None]
WaitSink = Callable[["WaitProgress"], None]


def load_profile(config: ProfileLike) -> LoadedProfile:
    """Load and validate a profile (pins may still be null; commands that need them say so)."""
    from detserve.profile import LoadedProfile
    from detserve.profile import load_profile as load_profile_file

    if isinstance(config, LoadedProfile):
        return config
    return load_profile_file(Path(config))


def _engine(engine: ContainerEngine | None, docker_host: str | None = None) -> ContainerEngine:
    """``engine`` as given, else the Docker engine at ``docker_host``, else the one
    ``DOCKER_HOST`` or the current Docker context names."""
    from detserve.runtime.engine import DockerEngine

    if engine is not None:
        if docker_host is not None:
            raise UsageError("give an engine or a docker_host, not both")
        return engine
    return DockerEngine.from_env() if docker_host is None else DockerEngine.from_env(docker_host)


def _engine_at(engine: ContainerEngine | None, docker_host: str | None) -> ContainerEngine | None:
    """The engine for a lifecycle call: as given (None: the lifecycle connects when it first
    needs to) unless a host is named."""
    return engine if docker_host is None else _engine(engine, docker_host)


# --- snapshots ----------------------------------------------------------------------------------


def _snapshot_of(
    config: ProfileLike | None, snapshot: Path | str | None
) -> tuple[Path, LoadedProfile | None]:
    if config is not None:
        if snapshot is not None:
            raise UsageError(
                "--snapshot and --config are exclusive: the profile names the snapshot"
            )
        loaded = load_profile(config)
        loaded.require_pins(("model.revision",))
        return loaded.snapshot_dir, loaded
    if snapshot is None:
        raise UsageError("give --config PROFILE, or --snapshot DIR (with --manifest PATH)")
    return Path(snapshot), None


def verify(
    config: ProfileLike | None = None,
    *,
    snapshot: Path | str | None = None,
    manifest: Path | str | None = None,
    workers: int | None = None,
    observer: BytesObserver | None = None,
    model_signature: Path | str | None = None,
    public_key: Path | str | None = None,
    certificate_chain: Sequence[Path | str] = (),
) -> VerifyReport:
    """Verify every file of a snapshot against its sha256 manifest; raise on any difference.

    Give a profile (its pinned snapshot and committed manifest), or any ``snapshot`` directory
    with a ``manifest``. Raises :class:`~detserve.errors.SnapshotMismatch` (exit 1) naming every
    missing, extra, changed or unsafe file, :class:`~detserve.errors.ManifestError` (exit 2) for a
    missing or malformed manifest.

    With ``model_signature`` (and ``public_key`` or ``certificate_chain``), the publisher's
    signature is verified too, and the snapshot, the manifest and the signature must agree on
    every file (each file read once); the report is a ``SignedVerifyReport``.

    >>> report = detserve.verify("configs/tiny-cpu.json")          # doctest: +SKIP
    >>> report.files, report.manifest_sha256                       # doctest: +SKIP
    """
    from detserve.snapshot import verify_snapshot

    snapshot_dir, loaded = _snapshot_of(config, snapshot)
    if manifest is None:
        if loaded is None:
            raise UsageError("--snapshot needs --manifest PATH")
        manifest_path = loaded.manifest_path
    else:
        manifest_path = Path(manifest)
    progress = observer.advance if observer is not None else None
    on_total = observer.set_total if observer is not None else None
    signed = _signed_model(model_signature, public_key, certificate_chain)
    if signed is not None:
        from detserve.signed_snapshot import verify_signed_snapshot

        return verify_signed_snapshot(
            snapshot_dir,
            manifest_path,
            signed,
            workers=workers,
            progress=progress,
            on_total=on_total,
        )
    return verify_snapshot(
        snapshot_dir, manifest_path, workers=workers, progress=progress, on_total=on_total
    )


def _signed_model(
    model_signature: Path | str | None,
    public_key: Path | str | None,
    certificate_chain: Sequence[Path | str],
) -> SignedModel | None:
    """The verified content of ``model_signature``, before any file of the snapshot is read."""
    if model_signature is None:
        if public_key is not None or certificate_chain:
            raise UsageError("--public-key and --certificate-chain verify a --model-signature")
        return None
    from detserve.model_signature import SignatureTrust, verify_model_signature

    trust = SignatureTrust.of(public_key, certificate_chain)
    return verify_model_signature(Path(model_signature), trust)


@dataclass(frozen=True)
class HashResult:
    """A manifest written by :func:`hash_snapshot`."""

    manifest: Path
    manifest_sha256: str
    files: int
    bytes: int
    seconds: float
    snapshot: Path
    #: the verified model signature the manifest was derived from, if any
    signature: SignedModel | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "manifest": str(self.manifest),
            "manifest_sha256": self.manifest_sha256,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "throughput_bytes_per_s": round(self.bytes / self.seconds) if self.seconds else None,
            "snapshot": str(self.snapshot),
            "signature": None if self.signature is None else self.signature.as_json(),
        }


def hash_snapshot(
    config: ProfileLike | None = None,
    *,
    output: Path | str,
    snapshot: Path | str | None = None,
    force: bool = False,
    workers: int | None = None,
    observer: BytesObserver | None = None,
    model_signature: Path | str | None = None,
    public_key: Path | str | None = None,
    certificate_chain: Sequence[Path | str] = (),
) -> HashResult:
    """Hash every file of a snapshot into a coreutils-compatible sha256 manifest at ``output``.

    Making a manifest creates a trust root: review it and commit it. The output is checked
    before hashing (a regular file or nothing, not inside the snapshot, not replaced without
    ``force``) and written atomically.

    With ``model_signature`` (and ``public_key`` or ``certificate_chain``), the manifest is
    derived from the publisher's signature instead: written only once the signature verifies
    and the snapshot holds exactly the signed files with the signed digests. Raises
    :class:`~detserve.errors.SignatureInvalid` or
    :class:`~detserve.errors.SignatureMismatch` (exit 1), or
    :class:`~detserve.errors.ModelSignatureError` (exit 2).
    """
    import time

    from detserve.snapshot import build_manifest, write_manifest

    snapshot_dir, loaded = _snapshot_of(config, snapshot)
    output = Path(output)
    # Before hashing, not after; a manifest written into the snapshot would pin itself.
    inputs: tuple[Path, ...] = (snapshot_dir,) if loaded is None else (loaded.path, snapshot_dir)
    if model_signature is not None:
        inputs += (Path(model_signature), *map(Path, certificate_chain))
        inputs += () if public_key is None else (Path(public_key),)
    check_outputs([output], force=force, inputs=inputs)
    signed = _signed_model(model_signature, public_key, certificate_chain)
    started = time.perf_counter()
    total = 0

    def on_total(value: int) -> None:
        nonlocal total
        total = value
        if observer is not None:
            observer.set_total(value)

    progress = observer.advance if observer is not None else None
    if signed is None:
        manifest = build_manifest(
            snapshot_dir, workers=workers, progress=progress, on_total=on_total
        )
    else:
        from detserve.signed_snapshot import derive_manifest

        manifest = derive_manifest(
            snapshot_dir, signed, workers=workers, progress=progress, on_total=on_total
        )
    write_manifest(manifest, output, force=force, inputs=inputs)
    return HashResult(
        manifest=output,
        manifest_sha256=manifest.sha256,
        files=manifest.total_files,
        bytes=total,
        seconds=time.perf_counter() - started,
        snapshot=snapshot_dir,
        signature=signed,
    )


# --- download: the files of the pinned commit ---------------------------------------------


@dataclass(frozen=True)
class _DownloadInputs:
    """Every input of a download, read and checked before the hub is asked anything."""

    loaded: LoadedProfile
    endpoint: str
    token: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def __repr__(self) -> str:
        return f"_DownloadInputs({self.loaded.path}, {self.endpoint})"  # never the token

    @classmethod
    def read(
        cls,
        config: ProfileLike,
        secrets_file: Path | str | None,
        endpoint: str | None,
        include: Sequence[str] | None,
        exclude: Sequence[str] | None,
    ) -> _DownloadInputs:
        import detserve.download as room
        from detserve.hub import hub_endpoint

        loaded = load_profile(config)
        loaded.require_pins(("model.revision",))
        chosen = tuple(include) if include is not None else room.DEFAULT_INCLUDE
        left_out = tuple(exclude) if exclude is not None else room.DEFAULT_EXCLUDE
        room.check_patterns(chosen, left_out)
        token = room.token_from(Path(secrets_file) if secrets_file is not None else None)
        return cls(loaded, hub_endpoint(endpoint), token, chosen, left_out)


def plan_download(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    endpoint: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> DownloadPlan:
    """What :func:`download_snapshot` would fetch: the pinned commit's files the patterns
    choose, what is on disk already, the bytes to fetch and the free space. Nothing is written
    but the removal of partial files a killed download left."""
    from detserve.download import plan_download as plan

    what = _DownloadInputs.read(config, secrets_file, endpoint, include, exclude)
    return plan(
        what.loaded,
        endpoint=what.endpoint,
        token=what.token,
        include=what.include,
        exclude=what.exclude,
    )


def download_snapshot(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    endpoint: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    workers: int | None = None,
    observer: DownloadObserver | None = None,
) -> DownloadResult:
    """Fetch the pinned commit's model files into the profile's Hugging Face home, then verify.

    Only ``model.revision`` is asked for (unpinned: :class:`~detserve.errors.UnpinnedError`,
    exit 2), and only the files vLLM loads (``include`` replaces
    :data:`detserve.download.DEFAULT_INCLUDE`, ``exclude`` replaces ``DEFAULT_EXCLUDE``). The
    hub token is ``HF_TOKEN`` of ``secrets_file``, and only that. Too little free space is
    :class:`~detserve.errors.DiskSpaceError` and an unreachable hub
    :class:`~detserve.errors.HubError` (exit 3). With a committed manifest the snapshot is
    verified (:class:`~detserve.errors.SnapshotMismatch`, exit 1, names every file that
    differs); without one the result says so (``trusted`` is false, ``next_command`` makes the
    manifest): nothing here writes a manifest. ``observer`` (a
    :class:`detserve.download.DownloadObserver`) is told the plan, the bytes and the check.

    >>> result = detserve.download_snapshot("configs/qwen3-8b.json")  # doctest: +SKIP
    >>> result.trusted, result.plan.fetch_bytes                    # doctest: +SKIP
    """
    import detserve.download as room

    what = _DownloadInputs.read(config, secrets_file, endpoint, include, exclude)
    return room.download(
        what.loaded,
        endpoint=what.endpoint,
        token=what.token,
        include=what.include,
        exclude=what.exclude,
        workers=workers or room.DEFAULT_WORKERS,
        observer=observer,
    )


# --- locks: the only functions that create pins ---------------------------------------------


@dataclass(frozen=True)
class LockOutcome:
    """A pin resolved (and, with ``write``, written: the profile file it went to)."""

    lock: LockResult
    written: Path | None


def _lock(
    config: Path | str,
    resolve: Callable[[LoadedProfile], LockResult],
    *,
    write: bool,
    profile_output: Path | str | None,
    force: bool,
) -> LockOutcome:
    from detserve.locks import check_unchanged, write_lock

    config = Path(config)
    output = Path(profile_output) if profile_output is not None else None
    # Before the hub or the registry is asked anything: a usage error needs no network.
    if output is not None and not write:
        raise UsageError("--profile-output goes with --write")
    if output is not None:
        check_outputs([output], force=force, inputs=[config])
    elif write:
        # In place is the purpose of --write; the profile must still be a regular file.
        check_outputs([config], force=True)
    loaded = load_profile(config)
    lock = resolve(loaded)
    if not write:
        check_unchanged(lock)  # a pin that no longer matches its reference: PinMismatch, exit 1
        return LockOutcome(lock=lock, written=None)
    return LockOutcome(lock=lock, written=write_lock(loaded, lock, output, force=force))


def lock_model(
    config: Path | str,
    *,
    write: bool = False,
    profile_output: Path | str | None = None,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> LockOutcome:
    """Resolve ``model.ref`` to a commit with huggingface_hub; with ``write``, pin it.

    Without ``write`` nothing is written, and a profile that pins another commit than the
    reference now names raises :class:`~detserve.errors.PinMismatch` (exit 1). The token
    defaults to ``HF_TOKEN``. Making a pin creates a trust root: review and commit it.
    """
    import os

    from detserve.locks import resolve_model_revision

    secret = token if token is not None else os.environ.get("HF_TOKEN")
    return _lock(
        config,
        lambda loaded: resolve_model_revision(loaded, endpoint=endpoint, token=secret),
        write=write,
        profile_output=profile_output,
        force=force,
    )


def lock_image(
    config: Path | str,
    *,
    write: bool = False,
    profile_output: Path | str | None = None,
    force: bool = False,
    docker_host: str | None = None,
) -> LockOutcome:
    """Resolve ``runtime.image_tag`` to its registry digest through the engine (the one at
    ``docker_host`` when given); with ``write``, pin it. Without ``write``, a moved tag raises
    :class:`~detserve.errors.PinMismatch`."""
    from detserve.locks import resolve_image_digest

    def resolve(loaded: LoadedProfile) -> LockResult:
        if docker_host is None:
            return resolve_image_digest(loaded)
        from detserve.runtime.engine import connect

        return resolve_image_digest(loaded, connect(docker_host)[0])

    return _lock(
        config,
        resolve,
        write=write,
        profile_output=profile_output,
        force=force,
    )


# --- the container ------------------------------------------------------------------------------


def start(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> StartResult:
    """Start the profile's pinned container (or find it running, bound to the same pins).

    Every function that talks to an engine takes ``docker_host`` (``unix:///...``,
    ``tcp://...``, ``ssh://...``): that engine instead of the one ``DOCKER_HOST`` or the current
    Docker context names. One that does not answer is an :class:`~detserve.errors.EngineError`
    (exit 3) naming the address.
    """
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    secrets = Path(secrets_file) if secrets_file is not None else None
    return lifecycle.start(loaded, secrets, engine=_engine_at(engine, docker_host))


def wait(
    config: ProfileLike,
    *,
    timeout_s: float | None = None,
    verify_manifest: bool = False,
    on_progress: WaitSink | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> WaitResult:
    """Wait until the bound container serves the pinned model; optionally verify meanwhile."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.wait(
        loaded,
        timeout_s,
        verify_manifest=verify_manifest,
        on_progress=on_progress,
        engine=_engine_at(engine, docker_host),
    )


def smoke(
    config: ProfileLike,
    *,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> SmokeResult:
    """The pinned model is served, and repeated greedy completions are identical; else raise."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.smoke(loaded, engine=_engine_at(engine, docker_host))


def run(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    hash_first: bool = False,
    stop_after: bool = False,
    timeout_s: float | None = None,
    on_stage: StageSink | None = None,
    on_progress: WaitSink | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
    full_verify: bool = False,
) -> RunResult:
    """Start, wait with the whole snapshot verified meanwhile, smoke test: a server to sample.

    A container already running with these pins keeps its lifetime's record of a full pass;
    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`)."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    secrets = Path(secrets_file) if secrets_file is not None else None
    return lifecycle.run(
        loaded,
        secrets,
        hash_first=hash_first,
        stop_after=stop_after,
        timeout_s=timeout_s,
        on_stage=on_stage,
        on_progress=on_progress,
        engine=_engine_at(engine, docker_host),
        full_verify=full_verify,
    )


def stop(
    config: ProfileLike,
    *,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> StopResult:
    """Stop and remove the profile's container; none running is not an error."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.stop(loaded, engine=_engine_at(engine, docker_host))


def status(
    config: ProfileLike,
    *,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> StatusResult:
    """The profile's container, how it differs from the pins (if at all), and its health."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.status(loaded, engine=_engine_at(engine, docker_host))


def _nodes(loaded: LoadedProfile, nodes: NodeEngines | None) -> NodeEngines:
    """A cluster profile's engines: as given (tests), else each node's ``docker_host``."""
    from detserve.runtime.cluster_nodes import connect_nodes

    return nodes if nodes is not None else connect_nodes(loaded)


def run_cluster(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    stop_after: bool = False,
    timeout_s: float | None = None,
    on_stage: StageSink | None = None,
    nodes: NodeEngines | None = None,
) -> ClusterRun:
    """Start a cluster profile's nodes, each on its own engine, bound as one container is; wait
    for the head to serve the pinned model while every node is watched; verify the snapshot
    inside every node's container; smoke. Any failure stops and removes every node's container.
    ``nodes``: the engines by node name (default: each node's ``docker_host``)."""
    from detserve.runtime import cluster_run
    from detserve.runtime.lifecycle import require_manifest
    from detserve.runtime.secrets import SecretEnvironment, load_secrets_file

    loaded = load_profile(config)
    manifest = require_manifest(loaded)
    secrets = load_secrets_file(Path(secrets_file)) if secrets_file else SecretEnvironment()
    return cluster_run.run(
        loaded,
        _nodes(loaded, nodes),
        manifest=manifest,
        secrets=secrets,
        stop_after=stop_after,
        timeout_s=timeout_s,
        on_stage=on_stage,
    )


def stop_cluster(config: ProfileLike, *, nodes: NodeEngines | None = None) -> ClusterStop:
    """Stop and remove every node's container of a cluster profile (workers first)."""
    from detserve.runtime import cluster_run
    from detserve.runtime.cluster_nodes import connect_nodes

    loaded = load_profile(config)
    engines = nodes if nodes is not None else connect_nodes(loaded, reachable_only=True)
    return cluster_run.stop(loaded, engines)


def status_cluster(config: ProfileLike, *, nodes: NodeEngines | None = None) -> ClusterStatus:
    """Every node's container of a cluster profile, how it differs from the pins and the layout,
    and the head's health."""
    from detserve.runtime import cluster_nodes
    from detserve.runtime.container_spec import expected_labels

    loaded = load_profile(config)
    expected_labels(loaded)  # fail closed on an unpinned profile or a missing manifest
    return cluster_nodes.status(loaded, _nodes(loaded, nodes))


def logs(
    config: ProfileLike,
    *,
    follow: bool = False,
    tail: int = 100,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> Iterator[str]:
    """The container's last ``tail`` log lines; with ``follow``, then new ones as they come."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.logs(loaded, follow=follow, tail=tail, engine=_engine_at(engine, docker_host))


# --- claims -------------------------------------------------------------------------------------


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
        return _profile_prompts(load_profile(config), bundle, bundle_pin)
    from detserve.prompts import load_bundle

    return load_bundle(
        Path(bundle if bundle is not None else DEFAULT_BUNDLE),
        Path(bundle_pin if bundle_pin is not None else DEFAULT_BUNDLE_PIN),
    )


def _profile_prompts(
    loaded: LoadedProfile, bundle: Path | str | None, bundle_pin: Path | str | None
) -> PromptBundle:
    """The bundle a command samples: the flags', else the profile's; measured on its model."""
    from detserve.bundle_binding import load_profile_bundle

    return load_profile_bundle(loaded, bundle, bundle_pin)


def _fingerprint_for(
    loaded: LoadedProfile, engine: ContainerEngine
) -> Callable[[], Mapping[str, object]] | None:
    """The environment fingerprint of the bound container, for the sidecar, when the engine is
    Docker's (another engine, a test's, has no probe to ask)."""
    from detserve.runtime.engine import DockerEngine

    if not isinstance(engine, DockerEngine):
        return None
    docker_engine = engine

    def take() -> Mapping[str, object]:
        from detserve.fingerprint import environment_fingerprint
        from detserve.runtime.probe import DockerProbe

        probe = DockerProbe(docker_engine.client, docker_engine.address)
        document: Mapping[str, object] = environment_fingerprint(loaded, probe).model_dump(
            mode="json"
        )
        return document

    return take


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
    from detserve.hashing import sha256_file
    from detserve.prompts import (
        BootstrapRequest,
        DatasetSource,
        build_bundle,
        download_hf_dataset_file,
    )

    if fmt not in ("jsonl", "text", "requests"):
        raise UsageError(f"--format must be 'jsonl', 'text' or 'requests', not {fmt!r}")
    loaded = load_profile(config)
    loaded.require_pins(("model.revision",))
    if (dataset_file is None) == (hf_dataset is None):
        raise UsageError("give exactly one of --dataset-file or --hf-dataset")
    if dataset_file is not None:
        if not dataset_sha256:
            raise UsageError("--dataset-file needs --dataset-sha256 (the content you trust)")
        path = Path(dataset_file)
        source = DatasetSource(
            kind="local-file",
            name=path.name,
            revision=None,
            filename=path.name,
            file_sha256=dataset_sha256.lower(),
            field=field if fmt == "jsonl" else None,
        )
    else:
        assert hf_dataset is not None
        if not dataset_revision or not dataset_filename:
            raise UsageError("--hf-dataset needs --dataset-revision and --dataset-filename")
        path = download_hf_dataset_file(hf_dataset, dataset_revision, dataset_filename, endpoint)
        source = DatasetSource(
            kind="hf-dataset",
            name=hf_dataset,
            revision=dataset_revision,
            filename=dataset_filename,
            file_sha256=dataset_sha256.lower() if dataset_sha256 else sha256_file(path)[0],
            field=field if fmt == "jsonl" else None,
        )
    limit = max_prompt_tokens or (
        loaded.profile.vllm.max_model_len - loaded.profile.sampling.max_tokens
    )
    request = BootstrapRequest(
        dataset_path=path,
        source=source,
        fmt="jsonl" if fmt == "jsonl" else "requests" if fmt == "requests" else "text",
        n_prompts=n_prompts,
        max_prompt_tokens=limit,
        name=name,
    )
    info, _ = build_bundle(loaded, request, Path(output_dir), force=force)
    return info


def _sample_observed(
    loaded: LoadedProfile,
    prompts: PromptBundle,
    request: SampleRequest,
    engine: ContainerEngine,
    observer: SamplingObserver | None,
    fingerprint: Callable[[], Mapping[str, object]] | None = None,
    nodes: NodeEngines | None = None,
    checked: CheckedRequest | None = None,
) -> SampleSummary:
    from detserve.sampling import sample as sample_core

    if observer is not None:
        observer.planned(len(prompts.take(request.n_prompts)))
    return sample_core(
        loaded,
        prompts,
        request,
        engine=engine,
        progress=observer.sampled if observer is not None else None,
        verify_progress=observer.verified if observer is not None else None,
        fingerprint=fingerprint,
        nodes=nodes,
        checked=checked,
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
    from detserve.sampling import SampleRequest, check_request

    loaded = load_profile(config)
    loaded.require_pins()
    prompts = _profile_prompts(loaded, bundle, bundle_pin)
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
    # outputs and budget before the engine is asked; sampling does not check them again
    checked = check_request(loaded, prompts, request)
    if loaded.profile.cluster is not None:
        nodes = _cluster_nodes(loaded, engine, docker_host)
        head = nodes[loaded.profile.cluster.nodes[0].name]

        def every_node() -> Mapping[str, object]:
            from detserve.runtime.cluster_probe import cluster_fingerprint

            return cluster_fingerprint(loaded, nodes).model_dump(mode="json")

        return _sample_observed(
            loaded, prompts, request, head, observer, every_node, nodes, checked=checked
        )
    engine = _engine(engine, docker_host)
    fingerprint = _fingerprint_for(loaded, engine)
    placement = _lay_out(loaded, engine, concurrency)
    summary = _sample_observed(
        loaded, prompts, request, engine, observer, fingerprint, checked=checked
    )
    if placement is None:
        return summary
    return replace(summary, cpu_placement=placement.as_json())


def _lay_out(loaded: LoadedProfile, engine: ContainerEngine, concurrency: int) -> Placement | None:
    """The profile's CPU layout for a command keeping ``concurrency`` requests in flight, where
    it is chosen per workload (``engine-core-with-worker-when-concurrent``); ``run`` lays out the
    other policies once (:mod:`detserve.runtime.placement`)."""
    from detserve.runtime.binding import checked_container
    from detserve.runtime.placement import apply_policy

    policy = loaded.profile.runtime.cpu_placement
    if policy != "engine-core-with-worker-when-concurrent":
        return None
    container = checked_container(loaded, engine, what="place")
    return apply_policy(engine, container, policy, concurrency)


def _cluster_nodes(
    loaded: LoadedProfile, engine: ContainerEngine | None, docker_host: str | None
) -> NodeEngines:
    if engine is not None or docker_host is not None:
        raise UsageError(
            f"profile {loaded.path} is a cluster: its nodes name their engines "
            "(cluster.nodes[].docker_host); no engine or --docker-host is taken"
        )
    return _nodes(loaded, None)


def show_run_log(path: Path | str) -> RunLogSummary:
    """Validate a run log completely (schema, canonical form, order, footer) and summarise it."""
    from detserve.runlog import validate_run_log

    return validate_run_log(Path(path))


def show_transcript(path: Path | str, *, allow_cut: bool = False) -> TranscriptSummary:
    """Validate one gateway transcript segment completely (schema, canonical form, order,
    footer) and summarise it; a cut segment (no footer) raises unless ``allow_cut``."""
    from detserve.runlog.transcript import validate_transcript

    return validate_transcript(Path(path), allow_cut=allow_cut)


def validate_transcripts(
    directory: Path | str, *, allow_cut: bool = False
) -> list[TranscriptSeries]:
    """Validate every transcript segment of ``directory`` and the hash chain of each gateway
    run's series; raise :class:`~detserve.errors.ChainBroken` (exit 1) naming a segment missing,
    reordered, renamed or substituted, and :class:`~detserve.errors.RunLogError` (exit 2) for a
    segment that does not validate. A cut last segment raises unless ``allow_cut``. A directory
    that holds no segment raises :class:`~detserve.errors.RunLogError` too: nothing was
    validated, and that is no pass."""
    from detserve.errors import RunLogError
    from detserve.runlog.series import validate_transcript_dir
    from detserve.runlog.transcript import SUFFIX

    series = validate_transcript_dir(Path(directory), allow_cut=allow_cut)
    if not series:
        raise RunLogError(
            f"{directory}: no transcript segment (*{SUFFIX}) to validate",
            hint="give a run log, a transcript segment, or a directory `detserve serve "
            "--transcript-dir` wrote into",
        )
    return series


def evaluate(
    run_a: Path | str,
    run_b: Path | str,
    *,
    min_exact_match_ratio: float | None = None,
    logprob_tolerance: float | None = None,
    max_reported: int = 20,
    report: Path | str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DeterminismReport:
    """Compare two run logs (or two gateway transcripts) byte for byte and say where they part;
    write the JSON ``report``.

    Returns the report whatever its verdict (IDENTICAL, WITHIN_THRESHOLD, DIVERGENT, NOT A
    REPLAY); ``report.error()`` is the error to raise when it is not a pass. Invalid logs raise
    (exit 2) before anything is compared.
    """
    from detserve.evaluation import evaluate as evaluate_core
    from detserve.runlog.kinds import is_transcript

    logs = [Path(run_a), Path(run_b)]
    output = Path(report) if report is not None else None
    if output is not None:
        check_outputs([output], force=force, inputs=logs)  # a log is evidence: never replaced
    if any(is_transcript(log) for log in logs):
        from detserve.evaluation.transcript_pair import evaluate_transcripts

        if logprob_tolerance is not None:
            raise UsageError("--logprob-tolerance: a gateway transcript records no logprobs")
        result = evaluate_transcripts(
            logs[0], logs[1], min_exact_match_ratio=min_exact_match_ratio, max_reported=max_reported
        )
    else:
        result = evaluate_core(
            logs[0],
            logs[1],
            min_exact_match_ratio=min_exact_match_ratio,
            logprob_tolerance=logprob_tolerance,
            max_reported=max_reported,
            progress=progress,
        )
    if output is not None:
        write_json_report(output, result.as_json(), force=force)
    return result


def check_hash(
    run_log: Path | str,
    expected_sha256: str,
    *,
    report: Path | str | None = None,
    force: bool = False,
) -> HashCheckReport:
    """Check one run log against a published sha256 (after validating it completely)."""
    from detserve.evaluation import check_expected_hash

    output = Path(report) if report is not None else None
    if output is not None:
        check_outputs([output], force=force, inputs=[Path(run_log)])
    result = check_expected_hash(Path(run_log), expected_sha256)
    if output is not None:
        write_json_report(output, result.as_json(), force=force)
    return result


def compare_runs(
    run_logs: Sequence[Path | str],
    *,
    max_reported: int = 20,
    report: Path | str | None = None,
    force: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> MajorityReport:
    """Group one run log per node by sha256 and name the nodes that disagree with the majority."""
    from detserve.evaluation import compare_many

    logs = [Path(path) for path in run_logs]
    output = Path(report) if report is not None else None
    if output is not None:
        check_outputs([output], force=force, inputs=logs)
    result = compare_many(logs, max_reported=max_reported, progress=progress)
    if output is not None:
        write_json_report(output, result.as_json(), force=force)
    return result


def explain(
    result: DeterminismReport | HashCheckReport | MajorityReport,
    sidecars: Sequence[Path | str],
    *,
    report: Path | str | None = None,
    force: bool = False,
) -> ExplainedReport:
    """A comparison's ``result`` with, for every log that disagrees, its first divergence and
    the differences of its environment fingerprint from the reference's, ranked by root-cause
    category (hardware, software version, numerics settings, model files, concurrency).

    ``sidecars`` are one per log in the comparison's order (for ``check_hash``: the log's, then
    the published log's), each naming that log's sha256: a sidecar of another run log, one
    naming none and a bare ``detserve env`` fingerprint file (bound to no run) are
    :class:`~detserve.errors.InputError` (exit 2).
    """
    from detserve.evaluation.explain import explain as explain_core
    from detserve.evaluation.explain import report_logs

    paths = [Path(sidecar) for sidecar in sidecars]
    output = Path(report) if report is not None else None
    if output is not None:
        # every file the report was made from is an input: the logs compared and the sidecars
        check_outputs([output], force=force, inputs=[*report_logs(result), *paths])
    explained = explain_core(result, paths)
    if output is not None:
        write_json_report(output, explained.as_json(), force=force)
    return explained


def write_json_report(path: Path, document: dict[str, object], *, force: bool) -> None:
    """A JSON report for people and machines (indented, sorted keys), written atomically."""
    import json

    from detserve.fileio import atomic_write_bytes

    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"), force=force)


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
    from detserve.replay_plan import plan_replay
    from detserve.runtime import lifecycle
    from detserve.sampling import SampleRequest

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
        from detserve.attest import verify_claim

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
    prompts = _profile_prompts(loaded, bundle, bundle_pin)
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
    engine = _engine(engine, docker_host)
    fingerprint = _fingerprint_for(loaded, engine)
    stage(f"claim {claim}: {plan.n_prompts} samples x {plan.max_tokens} tokens; pins match")
    lifecycle.run(loaded, engine=engine, on_stage=stage, full_verify=full_verify)
    try:
        summary = _sample_observed(loaded, prompts, request, engine, observer, fingerprint)
    finally:
        if stop_after:
            lifecycle.stop(loaded, engine=engine)
    from detserve.evaluation import evaluate as evaluate_core

    # what was verified and what was sampled, not whatever the paths hold now
    report = evaluate_core(
        claim, summary.run_log, expected_sha256=(plan.claim_sha256, summary.run_log_sha256)
    )
    write_json_report(report_path, report.as_json(), force=force)
    return ReplayResult(
        plan=plan, summary=summary, report=report, report_path=report_path, attested=attested
    )


# --- the gateway --------------------------------------------------------------------------------

#: where ``serve`` listens unless told otherwise
DEFAULT_GATEWAY_PORT = 8088
#: how often ``serve`` checks the snapshot's record and advances its paced full pass
#: (:mod:`detserve.snapshot_watch`); a change through the file system is caught within it
DEFAULT_REVERIFY_INTERVAL_S = 2.0


def build_gateway(
    config: ProfileLike,
    *,
    transcript_dir: Path | str,
    api_key: str | None = None,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    queue_size: int = 32,
    reverify_interval_s: float = DEFAULT_REVERIFY_INTERVAL_S,
    identity_interval_s: float = 2.0,
    rotate_exchanges: int | None = None,
    allowed_hosts: Sequence[str] = (),
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    reverify_bytes_per_s: int | None = None,
    docker_host: str | None = None,
) -> Gateway:
    """Verify as :func:`sample` does (pins, snapshot, the bound container, the served model) and
    return the gateway's ASGI application object (``gateway.app``), its transcript opened.

    The segments already in ``transcript_dir`` (earlier gateway runs) are read and checked
    completely first, and their exchanges indexed, so that their provenance ids resolve: a
    segment that does not validate raises :class:`~detserve.errors.RunLogError` (exit 2), a
    broken chain :class:`~detserve.errors.ChainBroken` (exit 1), each naming the segment; an
    empty segment file is skipped (``gateway.transcript.earlier.ignored``). A ``transcript_dir``
    others may enter is refused (exit 2); a new one is made ``0700``.

    Above one request in flight only with a ``certificate`` covering these pins and that level,
    verified with the public key ``certificate_key`` (:func:`verify_certificate`).
    The application answers only the ``Host`` values of its bind (``gateway.allow_hosts(host,
    port)``, which :class:`~detserve.gateway.server.GatewayServer` calls) and ``allowed_hosts``.
    While serving, the snapshot's record is checked every ``reverify_interval_s`` and every byte
    is read again at ``reverify_bytes_per_s`` (default
    :data:`~detserve.snapshot_watch.DEFAULT_BYTES_PER_S`; :mod:`detserve.snapshot_watch`).
    ``full_verify`` hashes every byte before serving even where a record vouches for them.
    """
    from detserve.certificate import check_certificate_options, verify_certificate
    from detserve.gateway.app import Gateway, GatewaySettings
    from detserve.gateway.guards import checked_hosts
    from detserve.gateway.transcript import index_earlier
    from detserve.gateway.verification import require_gateway_coverage, verify_for_serving

    if concurrency < 1 or queue_size < 0:
        raise UsageError("--concurrency must be at least 1 and --queue-size at least 0")
    check_certificate_options(
        concurrency,
        certificate,
        certificate_key,
        sequential="the gateway sends one request at a time",
    )
    if reverify_interval_s <= 0 or identity_interval_s <= 0:
        raise UsageError("re-verification intervals must be positive")
    if reverify_bytes_per_s is not None and reverify_bytes_per_s <= 0:
        raise UsageError("the re-verification rate must be positive")
    if rotate_exchanges is not None and rotate_exchanges < 1:
        raise UsageError("--rotate-exchanges must be at least 1")
    hosts = checked_hosts(allowed_hosts)
    loaded = load_profile(config)
    loaded.require_pins()
    inputs: tuple[Path, ...] = (loaded.path, loaded.manifest_path, loaded.snapshot_dir)
    if certificate is not None:
        inputs += (Path(certificate),)
    # where segments are written: not an input, nor inside one (earlier segments may be there)
    check_output_dir(Path(transcript_dir), force=True, inputs=inputs)
    # the earlier runs' segments are input: checked before anything is verified or served
    earlier = index_earlier(Path(transcript_dir))
    # signature and trace before the engine is asked; the pins it covers after
    checked = None
    if certificate is not None and certificate_key is not None:
        checked = verify_certificate(Path(certificate), Path(certificate_key))
    engine = _engine(engine, docker_host)
    verified = verify_for_serving(loaded, engine, full_verify=full_verify)
    if checked is not None:
        require_gateway_coverage(checked, verified, concurrency)
    _lay_out(loaded, engine, concurrency)
    settings = GatewaySettings(
        transcript_dir=Path(transcript_dir),
        api_key=api_key,
        concurrency=concurrency,
        queue_size=queue_size,
        identity_interval_s=identity_interval_s,
        reverify_interval_s=reverify_interval_s,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=hosts,
    )
    if reverify_bytes_per_s is not None:
        settings = replace(settings, reverify_bytes_per_s=reverify_bytes_per_s)
    return Gateway(verified, engine, settings, earlier=earlier)


@dataclass(frozen=True)
class ServeResult:
    """What a gateway run left: its transcript segments (path, sha256), in order."""

    url: str
    segments: tuple[tuple[Path, str], ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "url": self.url,
            "transcripts": [{"path": str(path), "sha256": sha} for path, sha in self.segments],
        }


def serve(
    config: ProfileLike,
    *,
    transcript_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GATEWAY_PORT,
    secrets_file: Path | str | None = None,
    concurrency: int = 1,
    certificate: Path | str | None = None,
    certificate_key: Path | str | None = None,
    queue_size: int = 32,
    reverify_interval_s: float = DEFAULT_REVERIFY_INTERVAL_S,
    rotate_exchanges: int | None = None,
    allowed_hosts: Sequence[str] = (),
    on_ready: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    reverify_bytes_per_s: int | None = None,
    docker_host: str | None = None,
) -> ServeResult:
    """Serve the verified, OpenAI-compatible gateway until stopped (Ctrl-C or SIGTERM).

    Binds loopback by default; another address only with an API key (``DETSERVE_API_KEY`` in
    ``secrets_file``). Answers the ``Host`` values of its bind and ``allowed_hosts``; a request
    from a web page of another origin is refused. Every answer is recorded in a transcript under
    ``transcript_dir`` before it is given; ``on_ready`` is called with the gateway's URL once its
    socket listens, ``on_warning`` with what was skipped at start (an empty segment file).
    """
    from detserve.gateway.server import GatewayServer, api_key_from, check_bind

    api_key = api_key_from(Path(secrets_file) if secrets_file is not None else None)
    check_bind(host, api_key)  # before anything is verified or opened
    gateway = build_gateway(
        config,
        transcript_dir=transcript_dir,
        api_key=api_key,
        concurrency=concurrency,
        certificate=certificate,
        certificate_key=certificate_key,
        queue_size=queue_size,
        reverify_interval_s=reverify_interval_s,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=allowed_hosts,
        engine=engine,
        full_verify=full_verify,
        reverify_bytes_per_s=reverify_bytes_per_s,
        docker_host=docker_host,
    )
    for ignored in gateway.transcript.earlier.ignored:
        if on_warning is not None:
            on_warning(
                f"ignored {ignored}: an empty segment file (its header was never written, as "
                "when the disk was full at a rotation); it claims nothing"
            )
    try:
        server = GatewayServer(gateway, host, port)
    except BaseException:
        gateway.transcript.close("stopped")
        raise
    if on_ready is not None:
        on_ready(server.url)  # the socket listens: connections wait until uvicorn accepts them
    server.run()
    segments = gateway.transcript.close("stopped")
    return ServeResult(url=server.url, segments=tuple(segments))


@dataclass(frozen=True)
class TranscriptReplayResult:
    """What :func:`replay_transcript` did: the replay's transcript and the comparison."""

    replay_transcript: Path
    report: DeterminismReport
    report_path: Path

    def as_json(self) -> dict[str, object]:
        return self.report.as_json() | {"replay_transcript": str(self.replay_transcript)}


def replay_transcript(
    claim: Path | str,
    config: ProfileLike,
    *,
    output_dir: Path | str,
    stop_after: bool = False,
    force: bool = False,
    on_stage: StageSink | None = None,
    engine: ContainerEngine | None = None,
    full_verify: bool = False,
    docker_host: str | None = None,
) -> TranscriptReplayResult:
    """Re-send every exchange of a gateway transcript (one segment) under your own pinned
    profile, and compare, in one step.

    The claim is validated and its pins compared with the profile's before anything starts
    (other pins: :class:`~detserve.replay_plan.NotAReplay`, exit 1). Then the server is run
    (start, wait with verification, smoke), every exchange is sent again, one at a time, into
    ``output_dir/replay.transcript.jsonl``, and the two are compared into
    ``output_dir/report.json``. Returns the result whatever the verdict: INCOMPLETE (ok) when
    exchanges that ended early repeat their recorded start, CUT (not ok) for a segment cut by a
    crash, replayed up to its last whole line.

    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`).
    """
    from detserve.gateway.replay import plan_transcript_replay
    from detserve.gateway.replay import replay_transcript as replay_core
    from detserve.runtime import lifecycle

    stage = on_stage or (lambda _message: None)
    claim = Path(claim)
    output_dir = Path(output_dir)
    loaded = load_profile(config)
    inputs = (claim, loaded.path, loaded.manifest_path, loaded.snapshot_dir)
    replay_path = output_dir / "replay.transcript.jsonl"
    report_path = output_dir / "report.json"
    check_output_dir(output_dir, force=True, inputs=inputs)
    check_outputs((replay_path, report_path), force=force, inputs=inputs)
    if force:
        replay_path.unlink(missing_ok=True)  # a transcript is never written over, only anew
    plan = plan_transcript_replay(claim, loaded)
    engine = _engine(engine, docker_host)
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


# --- diagnosis ----------------------------------------------------------------------------------

#: the levels ``check`` measures unless told otherwise
DEFAULT_CHECK_LEVELS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class CheckOutcome:
    """What :func:`check` measured, its verdict, and the repro pack it wrote."""

    result: CheckResult
    pack: ReproPack

    @property
    def verdict(self) -> str:
        return self.result.diagnosis.verdict.value

    @property
    def passed(self) -> bool:
        """A pass at the requested tier (tier 0 promises no equality; ENV_CHANGED never passes)."""
        return self.result.passed

    @property
    def certificate(self) -> Path | None:
        return self.pack.certificate_path

    def error(self) -> DetserveError | None:
        """The error to raise when this is not a pass at the tier (exit 1); None when it is."""
        from detserve.errors import Divergence

        if self.passed:
            return None
        return Divergence(
            f"{self.verdict} at tier {self.result.plan.tier}: {self.result.diagnosis.reason}",
            hint=f"the repro pack is in {self.pack.directory} (report.txt, report.html)",
        )

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.passed,
            "verdict": self.verdict,
            "output_dir": str(self.pack.directory),
            "files": [str(path) for path in self.pack.files],
            "certificate": str(self.certificate) if self.certificate is not None else None,
            "certificate_sha256": (
                self.pack.certificate.sha256 if self.pack.certificate is not None else None
            ),
            "certificate_signed_by": self.pack.signed_by,
            "report": self.pack.report,
        }


def check(
    config: ProfileLike,
    *,
    output_dir: Path | str,
    tier: int = 1,
    runs: int = 3,
    concurrency: Sequence[int] = DEFAULT_CHECK_LEVELS,
    n_prompts: int | None = None,
    max_tokens: int | None = None,
    logprobs: int | None = None,
    shuffle: bool = True,
    shuffle_seed: int = 0,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    force: bool = False,
    signing_key: Path | str | None = None,
    on_pass: Callable[[PassKey], None] | None = None,
    engine: ContainerEngine | None = None,
    probe: FingerprintEngine | None = None,
    full_verify: bool = False,
    docker_host: str | None = None,
) -> CheckOutcome:
    """Diagnose non-determinism against the running, verified container; write a repro pack.

    Samples the first ``n_prompts`` prompts at every ``concurrency`` level (1 is always added:
    the baseline), ``runs`` times each in the bundle's order and once more shuffled, with that
    many requests truly in flight, and compares everything with concurrency 1. ``tier`` 0 writes
    the pack and promises nothing; 1 requires identical tokens; 2 identical logprobs too, bit for
    bit (``logprobs`` defaults to 1 there). The verdict is PASS, RUN_VARIANCE, BATCH_VARIANCE,
    LOGPROB_VARIANCE, LOGPROBS_UNAVAILABLE or ENV_CHANGED. A PASS at tier 1 or 2 writes
    ``certificate.json``, signed with the private key ``signing_key`` when given: :func:`sample`
    and :func:`serve` accept a signed one for ``concurrency`` above 1, verified with the public
    key their caller names; an unsigned one is refused there. A certificate already in
    ``output_dir`` is removed before the check runs: one that fails or is interrupted leaves none.

    The same pre-flight as :func:`sample` (pins, snapshot, the bundle (by default the profile's)
    and its model, the bound container, the served model); with the default engine the
    environment is fingerprinted before and after (``env.json``; a change is ENV_CHANGED).
    Returns the outcome whatever the verdict; ``outcome.error()`` is the error to raise when it
    is not a pass (exit 1).

    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`).
    """
    from detserve.diagnosis.check import run_check
    from detserve.diagnosis.measure import CheckPlan, levels_with_baseline
    from detserve.diagnosis.repropack import (
        check_pack_outputs,
        clear_certificate,
        write_repro_pack,
    )

    if tier not in (0, 1, 2):
        raise UsageError(f"--tier {tier}: expected 0, 1 or 2")
    if runs < 1 or any(level < 1 for level in concurrency):
        raise UsageError("--runs and every --concurrency level must be at least 1")
    loaded = load_profile(config)
    loaded.require_pins()
    prompts = _profile_prompts(loaded, bundle, bundle_pin)
    directory = Path(output_dir)
    key_files = (Path(signing_key),) if signing_key is not None else ()
    inputs = (loaded.path, loaded.manifest_path, loaded.snapshot_dir, *prompts.files, *key_files)
    check_pack_outputs(directory, force=force, inputs=inputs)
    # Before anything else can fail: no earlier certificate outlives a check that does not pass.
    clear_certificate(directory)
    signer = None
    if signing_key is not None:
        from detserve.keys import load_signer

        signer = load_signer(Path(signing_key))  # a key that cannot sign refuses before any work
    plan = CheckPlan(
        tier=tier,  # type: ignore[arg-type]  # checked above
        runs=runs,
        levels=levels_with_baseline(concurrency),
        n_prompts=n_prompts or len(prompts.prompts),
        max_tokens=max_tokens or loaded.profile.sampling.max_tokens,
        logprobs=logprobs if logprobs is not None or tier < 2 else 1,
        shuffle=shuffle,
        shuffle_seed=shuffle_seed,
    )
    nodes = None
    if loaded.profile.cluster is not None:
        nodes = _cluster_nodes(loaded, engine, docker_host)
        engine = nodes[loaded.profile.cluster.nodes[0].name]
    if engine is None:
        from detserve.runtime.probe import DockerProbe

        docker_probe = (
            DockerProbe.from_env() if docker_host is None else DockerProbe.from_env(docker_host)
        )
        engine, probe = docker_probe.engine, probe or docker_probe
    elif docker_host is not None:
        raise UsageError("give an engine or a docker_host, not both")
    if nodes is None:
        _lay_out(loaded, engine, max(plan.levels))
    result = run_check(
        loaded,
        prompts,
        plan,
        engine=engine,
        probe=probe,
        on_pass=on_pass,
        full_verify=full_verify,
        nodes=nodes,
    )
    pack = write_repro_pack(loaded, result, directory, force=force, signer=signer)
    return CheckOutcome(result=result, pack=pack)


def verify_certificate(path: Path | str, public_key: Path | str) -> VerifiedCertificate:
    """A concurrency certificate verified with ``public_key``: its signature (exit 1 when
    unsigned or signed by another key), its payload (exit 2 when not a certificate), and the
    trace it names, whose sha256 must be the certificate's and whose header and tokens must
    support every claim, the verdict computed again (exit 1 otherwise)."""
    from detserve.certificate import verify_certificate as verify_core

    return verify_core(Path(path), Path(public_key))


def _replay_node(
    claim: Path,
    claim_sha256: str,
    loaded: LoadedProfile,
    node: FleetNode,
    output_dir: Path,
    *,
    bundle: Path | str | None,
    bundle_pin: Path | str | None,
    stop_after: bool,
    force: bool,
    on_stage: StageSink,
) -> NodeResult:
    """Replay ``claim`` on one node's engine; every failure becomes a FAILED result."""
    from detserve.errors import DetserveError
    from detserve.evaluation.explain import read_node_environment
    from detserve.fingerprint import EnvironmentFingerprint, environment_fingerprint
    from detserve.fleet import NodeResult, failed
    from detserve.replay_plan import NotAReplay
    from detserve.runtime.engine import DockerEngine
    from detserve.runtime.probe import DockerProbe

    def stage(message: str) -> None:
        on_stage(f"{node.label}: {message}")

    try:
        engine = DockerEngine.from_env(node.docker_host)
    except DetserveError as exc:
        return failed(exc)

    def fingerprint() -> EnvironmentFingerprint | None:
        # Best effort beside a failure: the failure is the result, the fingerprint its context.
        try:
            return environment_fingerprint(loaded, DockerProbe(engine.client, engine.address))
        except DetserveError as exc:
            stage(f"no fingerprint: {exc.message}")
            return None

    try:
        replayed = replay(
            claim,
            loaded,
            output_dir=output_dir / node.label,
            bundle=bundle,
            bundle_pin=bundle_pin,
            stop_after=stop_after,
            force=force,
            on_stage=stage,
            engine=engine,
            claim_sha256=claim_sha256,
        )
    except NotAReplay as exc:
        detail = "; ".join([exc.message, *exc.details[:3]])
        return NodeResult("NOT A REPLAY", exc.exit_code, detail, fingerprint=fingerprint())
    except DetserveError as exc:
        return replace(failed(exc), fingerprint=fingerprint())
    report = replayed.report
    first = report.first_divergence
    detail = (
        "byte-identical to the claim"
        if report.ok
        else str(first)
        if first is not None
        else "; ".join(report.summary_lines()[2:4])
    )
    return NodeResult(
        verdict=report.verdict.value.replace("-", " ").upper(),
        exit_code=0 if report.verdict.value == "identical" else 1,
        detail=detail,
        run_log_sha256=replayed.summary.run_log_sha256,
        run_log=replayed.summary.run_log,
        fingerprint=read_node_environment(
            replayed.summary.sidecar,
            run_log_sha256=replayed.summary.run_log_sha256,
            log=str(replayed.summary.run_log),
        ).fingerprint,
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
    """
    from detserve.fleet import check_nodes, parse_node, run_fleet
    from detserve.runlog import validate_run_log

    parsed = [parse_node(text, index) for index, text in enumerate(nodes, start=1)]
    check_nodes(parsed)
    claim = Path(claim)
    output_dir = Path(output_dir)
    profiles = {
        node.label: load_profile(node.config if node.config is not None else config)
        for node in parsed
    }
    bundle_files: list[Path] = []
    for loaded in profiles.values():
        loaded.require_pins()
        # each node's bundle (the flags', else its profile's) measured on its model, up front
        bundle_files.extend(_profile_prompts(loaded, bundle, bundle_pin).files)
    report_path = output_dir / "fleet.json"
    inputs = (
        claim,
        *bundle_files,
        *(path for loaded in profiles.values() for path in (loaded.path, loaded.manifest_path)),
    )
    check_output_dir(output_dir, force=True, inputs=inputs)
    check_outputs([report_path], force=force, inputs=inputs)
    # an invalid claim is bad input before any node is asked anything
    claim_sha256 = validate_run_log(claim).sha256
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda _message: None)
    report = run_fleet(
        claim,
        claim_sha256,
        parsed,
        lambda node: _replay_node(
            claim,
            claim_sha256,
            profiles[node.label],
            node,
            output_dir,
            bundle=bundle,
            bundle_pin=bundle_pin,
            stop_after=stop_after,
            force=force,
            on_stage=stage,
        ),
    )
    write_json_report(report_path, report.as_json(), force=force)
    return report


# Written once, in detserve/_public.py: the package re-exports the same names without importing
# this module.
__all__ = list(API_NAMES)
