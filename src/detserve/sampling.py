"""Strict sampling: the operator's claim, "with these pinned inputs, this server generated these
tokens", written as a canonical run log.

Nothing is sampled from an unverified state. Before the first request: every pin is filled, the
snapshot verifies against its manifest, the prompt bundle against its pin and was measured with
the verified snapshot's tokenizer (:mod:`detserve.bundle_binding`), the running container
is the profile's (same profile hash, the pinned image, the expected engine arguments) and the
server serves the pinned model, a bundle with constraints needs a pinned structured-outputs
backend, and each distinct constraint compiles in the engine (a one-token preflight request).
Requests (:mod:`detserve.request_kinds`) are greedy with the profile's seed, one at a time, unless a
concurrency certificate (:mod:`detserve.certificate`, measured by ``detserve check`` for these
very pins, signed with a key whose public half the caller names, and supported by its trace)
covers more in flight; the log is then written in index order and is the same bytes as at
concurrency 1 (the concurrency, the certificate's sha256 and its signer's key id go to the
sidecar). With an audit fraction, a seeded random subset is sampled again one at a time after
the concurrent pass, and any difference voids the run. The container's identity (id, start time,
restart count; :mod:`detserve.verified`) is checked during the run and at its end, and the
snapshot is verified again before the log is committed: a restarted server or a changed snapshot
voids the run. Both verifications are bound to the container's lifetime: where a full pass in
that lifetime left a record whose identities all still hold (:mod:`detserve.snapshot_state`), it
vouches for the bytes without reading them; any change means a full pass (``full_verify`` always
hashes). The run log is written atomically; any failure, Ctrl-C included, leaves nothing at the
output paths.
"""

from __future__ import annotations

import math
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from detserve._version import __version__
from detserve.bundle_binding import prompts_within_budget, require_bundle_tokenizer
from detserve.canonical import canonical_bytes
from detserve.certificate import (
    VerifiedCertificate,
    check_certificate_options,
    require_coverage,
    verify_certificate,
)
from detserve.errors import Divergence, ServerError, UsageError
from detserve.fileio import atomic_write_bytes, check_outputs
from detserve.inflight import Timed, run_in_flight
from detserve.profile import LoadedProfile
from detserve.prompts import PROMPTS_FILE, PromptBundle
from detserve.request_kinds import (
    GenerationParams,
    PromptRecord,
    preflight_constraints,
    sample_record,
)
from detserve.runlog import RunLogWriter
from detserve.runtime.cluster_nodes import ClusterWatch, NodeEngines
from detserve.runtime.cluster_run import verify_nodes
from detserve.runtime.docker_engine import ContainerEngine
from detserve.runtime.vllm_client import VllmServer
from detserve.snapshot import VerifyReport
from detserve.snapshot_state import PinnedManifest, verify_in_lifetime
from detserve.verified import check_same_manifest, opened_server, verified_server


@dataclass(frozen=True)
class SampleRequest:
    n_prompts: int | None
    max_tokens: int
    logprobs: int | None
    run_log_output: Path
    sidecar_output: Path
    force: bool = False
    #: requests in flight; above 1 only with a certificate that covers it
    concurrency: int = 1
    certificate: Path | None = None
    #: the public key that verifies ``certificate`` (required with it)
    certificate_key: Path | None = None
    #: the fraction of samples sampled again at concurrency 1 after the pass (0: none)
    audit_fraction: float = 0.0
    audit_seed: int = 0
    #: hash every byte at the start and the end even where a record of a full pass in this
    #: container lifetime vouches for the snapshot (detserve.snapshot_state)
    full_verify: bool = False


@dataclass(frozen=True)
class SampleSummary:
    run_log: Path
    run_log_sha256: str
    sidecar: Path
    n_samples: int
    output_tokens: int
    seconds: float
    concurrency: int = 1
    certificate_sha256: str | None = None
    #: the id of the key that verified the certificate, computed from it
    certificate_keyid: str | None = None
    audited: tuple[int, ...] = ()
    #: the snapshot's verifications, before the first request and before the commit
    snapshot_checks: tuple[VerifyReport, ...] = ()
    #: where the container's CPU processes were laid out for this run (the profile's
    #: ``runtime.cpu_placement`` chosen per workload), when a layout was applied
    cpu_placement: Mapping[str, object] | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return round(self.output_tokens / self.seconds, 1) if self.seconds else None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "run_log": str(self.run_log),
            "run_log_sha256": self.run_log_sha256,
            "sidecar": str(self.sidecar),
            "n_samples": self.n_samples,
            "output_tokens": self.output_tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": self.tokens_per_s,
            "concurrency": self.concurrency,
            "certificate_sha256": self.certificate_sha256,
            "certificate_keyid": self.certificate_keyid,
            "audited": list(self.audited),
            "snapshot_checks": [report.as_json() for report in self.snapshot_checks],
            "cpu_placement": None if self.cpu_placement is None else dict(self.cpu_placement),
        }


@dataclass(frozen=True)
class CheckedRequest:
    """What :func:`check_request` let through, and the certificate it verified."""

    request: SampleRequest
    bundle: PromptBundle
    certificate: VerifiedCertificate | None


#: called after each sample with (samples done, output tokens so far)
SampleProgress = Callable[[int, int], None]


def audit_indices(n_samples: int, fraction: float, seed: int) -> tuple[int, ...]:
    """The samples an audit re-samples: ``ceil(fraction * n)`` of them, seeded, ascending."""
    if fraction <= 0:
        return ()
    count = min(n_samples, math.ceil(fraction * n_samples))
    # Not for secrecy: the subset is reproducible from the seed the sidecar records.
    chooser = random.Random(f"detserve-audit:{seed}")  # noqa: S311
    return tuple(sorted(chooser.sample(range(n_samples), count)))


def check_request(
    loaded: LoadedProfile, bundle: PromptBundle, request: SampleRequest
) -> CheckedRequest:
    """Refuse a request before any work: outputs, token budget, pins, concurrency; return it
    with the verified certificate, if any (given to :func:`sample`, it is not checked again).

    The outputs first, before any input is read: no output may be an input, the certificate and
    its key included (``--sidecar-output`` naming the certificate with ``--force`` replaced it).
    """
    loaded.require_pins()
    if not 0 <= request.audit_fraction <= 1:
        raise UsageError(f"--audit {request.audit_fraction} is not a fraction between 0 and 1")
    check_certificate_options(
        request.concurrency,
        request.certificate,
        request.certificate_key,
        sequential="strict sampling is sequential",
    )
    outputs = [request.run_log_output, request.sidecar_output]
    evidence = tuple(p for p in (request.certificate, request.certificate_key) if p is not None)
    inputs = (loaded.path, loaded.manifest_path, loaded.snapshot_dir, *bundle.files, *evidence)
    check_outputs(outputs, force=request.force, inputs=inputs)
    verified = None
    if request.certificate is not None and request.certificate_key is not None:
        verified = verify_certificate(request.certificate, request.certificate_key)
        check_outputs(outputs, force=request.force, inputs=(verified.trace,))
    prompts = prompts_within_budget(loaded, bundle, request.n_prompts, request.max_tokens)
    if verified is not None:
        certificate = verified.certificate
        # Everything but the pins, which need the server's version: checked before a request.
        require_coverage(
            certificate,
            pins=certificate.pins,
            seed=loaded.profile.sampling.seed,
            max_tokens=request.max_tokens,
            logprobs=request.logprobs,
            concurrency=request.concurrency,
            n_prompts=len(prompts),
        )
    return CheckedRequest(request, bundle, verified)


def sample_one(
    server: VllmServer, prompt: PromptRecord, index: int, params: GenerationParams
) -> dict[str, object]:
    """One strict request and its run-log record: the single place a sample is made
    (:func:`detserve.request_kinds.sample_record`, for every request kind)."""
    return sample_record(server.generate, index, prompt, params)


def _audit(
    server: VllmServer,
    prompts: Sequence[PromptRecord],
    request: SampleRequest,
    params: GenerationParams,
    kept: dict[int, dict[str, object]],
) -> None:
    # Defence in depth: the certificate was measured on these pins, and this checks that the
    # concurrent pass agreed with one-at-a-time sampling where it was looked at.
    for index in sorted(kept):
        again = sample_one(server, prompts[index], index, params)
        if again != kept[index]:
            fields = sorted(name for name in again if again[name] != kept[index].get(name))
            raise Divergence(
                f"audit: sample {index} ({prompts[index].id}) differs between concurrency "
                f"{request.concurrency} and concurrency 1; no run log was written",
                details=[f"differing fields: {', '.join(fields)}"],
                hint="the certificate does not hold for this server; run `detserve check` again",
            )


def sample(
    loaded: LoadedProfile,
    bundle: PromptBundle,
    request: SampleRequest,
    *,
    engine: ContainerEngine,
    progress: SampleProgress | None = None,
    verify_progress: Callable[[int], None] | None = None,
    fingerprint: Callable[[], Mapping[str, object]] | None = None,
    nodes: NodeEngines | None = None,
    checked: CheckedRequest | None = None,
) -> SampleSummary:
    """Sample ``bundle`` strictly and write the run log and its sidecar; raise on any failure.

    ``fingerprint``, when given, is called once the container is known to be the bound one; what
    it returns (the environment fingerprint, :mod:`detserve.fingerprint`) goes into the sidecar as
    ``environment``, never into the run log. ``nodes``: a cluster profile's engines by node name
    (:mod:`detserve.runtime.cluster_nodes`); every node is bound, watched and verified.
    ``checked``: :func:`check_request`'s answer for this request and bundle, else it runs here.
    """
    if checked is None or checked.request is not request or checked.bundle is not bundle:
        checked = check_request(loaded, bundle, request)
    verified = checked.certificate
    certificate = verified.certificate if verified is not None else None
    prompts = bundle.take(request.n_prompts)
    manifest = PinnedManifest.read(loaded.manifest_path)
    # The bytes the snapshot is verified against next, not a re-read: its digests are these or
    # nothing is sent. Checked before the engine is asked.
    require_bundle_tokenizer(bundle, loaded, manifest.digests())
    # the container (every node's) is compared with the manifest bytes verified next
    bound = verified_server(
        loaded,
        engine,
        manifest,
        nodes=nodes,
        full_verify=request.full_verify,
        progress=verify_progress,
    )
    container, watch, lifetime, report = bound.container, bound.watch, bound.lifetime, bound.report
    environment = fingerprint() if fingerprint is not None else None
    profile = loaded.profile
    with opened_server(loaded, bound.url) as (server, vllm_version):
        run_pins = bound.pins.run_pins(
            prompt_bundle_sha256=bundle.sha256,
            vllm_version=vllm_version,
            ray_version=bound.ray_version,
        )
        if certificate is not None:
            require_coverage(
                certificate,
                pins=run_pins,
                seed=profile.sampling.seed,
                max_tokens=request.max_tokens,
                logprobs=request.logprobs,
                concurrency=request.concurrency,
                n_prompts=len(prompts),
            )
        header: dict[str, object] = {
            "pins": run_pins.model_dump(mode="json"),
            "sampling": {
                "temperature": profile.sampling.temperature,
                "seed": profile.sampling.seed,
                "max_tokens": request.max_tokens,
                "logprobs": request.logprobs,
            },
            "n_samples": len(prompts),
        }
        params = GenerationParams(
            max_tokens=request.max_tokens,
            seed=profile.sampling.seed,
            logprobs=request.logprobs,
            model=profile.vllm.served_model_name,
        )
        preflight_constraints(server.generate, prompts, params, str(bundle.path / PROMPTS_FILE))
        started_wall = datetime.now(UTC)
        started = time.perf_counter()
        output_tokens = 0
        audited = audit_indices(len(prompts), request.audit_fraction, request.audit_seed)
        audit_set = frozenset(audited)
        kept: dict[int, dict[str, object]] = {}
        with RunLogWriter(request.run_log_output, header, force=request.force) as run_log:

            def write(timed: Timed[dict[str, object]]) -> None:
                nonlocal output_tokens
                record = timed.result
                run_log.write(record)  # in index order, whatever order requests completed in
                if timed.index in audit_set:
                    kept[timed.index] = record
                output_tokens += len(record["output_token_ids"])  # type: ignore[arg-type]
                watch.check()
                if progress is not None:
                    progress(timed.index + 1, output_tokens)

            def one(index: int, prompt: PromptRecord) -> dict[str, object]:
                if isinstance(watch, ClusterWatch):  # a node's death fails the run at once
                    return watch.guarded(lambda: sample_one(server, prompt, index, params))
                return sample_one(server, prompt, index, params)

            try:
                run_in_flight(
                    prompts,
                    one,
                    concurrency=request.concurrency,
                    on_result=write,
                    between=watch.check,
                )
            except ServerError:
                if isinstance(watch, ClusterWatch):
                    watch.check(force=True)  # a node gone explains the head's failure, by name
                raise
            seconds = time.perf_counter() - started
            _audit(server, prompts, request, params, kept)
            # Before the log is committed: still the same server, and still the same snapshot
            # (it is mounted read-only, but the host side can change under a running server).
            watch.check(force=True)
            final = verify_in_lifetime(
                loaded.snapshot_dir,
                PinnedManifest.read(loaded.manifest_path),
                lifetime,
                full=request.full_verify,
                progress=verify_progress,
            )
            check_same_manifest(report.manifest_sha256, final.manifest_sha256, loaded)
            if isinstance(watch, ClusterWatch):
                assert nodes is not None
                verify_nodes(loaded, nodes, watch.bound)
                watch.check(force=True)
    summary = SampleSummary(
        run_log=request.run_log_output,
        run_log_sha256=run_log.sha256,
        sidecar=request.sidecar_output,
        n_samples=len(prompts),
        output_tokens=output_tokens,
        seconds=seconds,
        concurrency=request.concurrency,
        certificate_sha256=verified.sha256 if verified is not None else None,
        certificate_keyid=verified.keyid if verified is not None else None,
        audited=audited,
        snapshot_checks=(report, final),
    )
    sidecar = {
        "detserve_version": __version__,
        "run_log": str(request.run_log_output),
        "run_log_sha256": run_log.sha256,
        "profile": str(loaded.path),
        "profile_sha256": loaded.content_sha256,
        "host": socket.gethostname(),
        "container_id": container.id,
        "container_started_at": container.started_at,
        "started_at": started_wall.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "sampling_seconds": round(seconds, 3),
        "n_samples": len(prompts),
        "output_tokens": output_tokens,
        "tokens_per_s": summary.tokens_per_s,
        # How the log was sampled, not what it says: a certified concurrency gives the same log.
        "concurrency": request.concurrency,
        "certificate_sha256": summary.certificate_sha256,
        "certificate_keyid": summary.certificate_keyid,
        "audit": (
            {
                "fraction": request.audit_fraction,
                "seed": request.audit_seed,
                "indices": list(audited),
                "identical": True,
            }
            if request.audit_fraction > 0
            else None
        ),
        "note": "varies between faithful runs; never compared (the run log is)",
    }
    if environment is not None:
        sidecar["environment"] = dict(environment)
    if isinstance(watch, ClusterWatch):
        sidecar["cluster_nodes"] = [item.as_json() for item in watch.bound]
    try:
        atomic_write_bytes(request.sidecar_output, canonical_bytes(sidecar), force=request.force)
    except BaseException:
        # The pair is the claim: no sidecar, no run log.
        request.run_log_output.unlink(missing_ok=True)
        raise
    return summary
