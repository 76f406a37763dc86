"""Strict sampling: the operator's claim, "with these pinned inputs, this server generated these
tokens", written as a canonical run log.

Nothing is sampled from an unverified state. Before the first request: every pin is filled, the
snapshot verifies against its manifest, the prompt bundle against its pin, the running container
is the profile's (same profile hash, the pinned image, the expected engine arguments) and the
server serves the pinned model, a bundle with constraints needs a pinned structured-outputs
backend, and each distinct constraint compiles in the engine (a one-token preflight request).
Requests (:mod:`detserve.requests`) are greedy with the profile's seed, one at a time. The
container's identity (id, start time, restart count) is checked during the run and at its end, and
the snapshot is verified again before the log is committed: a restarted server or a changed
snapshot voids the run. The run log is written atomically; any failure, Ctrl-C included, leaves
nothing at the output paths.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from detserve._version import __version__
from detserve.canonical import canonical_bytes
from detserve.errors import ContainerError, PinMismatch, UsageError
from detserve.fileio import atomic_write_bytes, check_outputs
from detserve.pins import profile_pins
from detserve.profile import LoadedProfile
from detserve.prompts import PROMPTS_FILE, PromptBundle
from detserve.requests import GenerationParams, preflight_constraints, sample_record
from detserve.runlog import RunLogWriter
from detserve.runtime.binding import checked_container
from detserve.runtime.container_spec import server_base_url
from detserve.runtime.engine import ContainerEngine, ContainerInfo
from detserve.runtime.server import VllmServer
from detserve.runtime.smoke import check_served_model
from detserve.snapshot import verify_snapshot

#: how often, in seconds, the container's identity is re-checked while sampling
IDENTITY_CHECK_INTERVAL_S = 2.0


@dataclass(frozen=True)
class SampleRequest:
    n_prompts: int | None
    max_tokens: int
    logprobs: int | None
    run_log_output: Path
    sidecar_output: Path
    force: bool = False


@dataclass(frozen=True)
class SampleSummary:
    run_log: Path
    run_log_sha256: str
    sidecar: Path
    n_samples: int
    output_tokens: int
    seconds: float

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
        }


#: called after each sample with (samples done, output tokens so far)
SampleProgress = Callable[[int, int], None]


def _identity(container: ContainerInfo) -> tuple[str, str, int, bool]:
    return (container.id, container.started_at, container.restart_count, container.running)


class _IdentityWatch:
    """Fails the run as soon as the container is not the one sampling started with."""

    def __init__(self, engine: ContainerEngine, container: ContainerInfo) -> None:
        self._engine = engine
        self.initial = container
        self._last_check = time.monotonic()

    def check(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < IDENTITY_CHECK_INTERVAL_S:
            return
        self._last_check = now
        try:
            current = self._engine.inspect(self.initial.id)
        except ContainerError as exc:
            raise ContainerError(
                f"container {self.initial.short_id} is gone; no run log was written",
                details=[exc.message],
            ) from exc
        if _identity(current) != _identity(self.initial):
            raise ContainerError(
                "the server changed during the run; no run log was written",
                details=[
                    f"at start: container {self.initial.short_id} started "
                    f"{self.initial.started_at}, restarts {self.initial.restart_count}",
                    f"now:      container {current.short_id} {current.describe()}, started "
                    f"{current.started_at}, restarts {current.restart_count}",
                ],
                hint="samples from two server lifetimes are not one claim; sample again",
            )


def _check_same_manifest(first: str, final: str, loaded: LoadedProfile) -> None:
    # The log names one manifest: the snapshot must have verified against that same manifest at
    # the end as at the start, or the run straddles two trust roots.
    if final != first:
        raise PinMismatch(
            f"the manifest {loaded.manifest_path} changed during the run; no run log was written",
            details=[f"at start: sha256 {first}", f"at end:   sha256 {final}"],
        )


def check_request(loaded: LoadedProfile, bundle: PromptBundle, request: SampleRequest) -> None:
    """Refuse a request before any work: outputs, token budget, pins."""
    loaded.require_pins()
    check_outputs(
        [request.run_log_output, request.sidecar_output],
        force=request.force,
        inputs=(loaded.path, loaded.manifest_path, loaded.snapshot_dir, *bundle.files),
    )
    prompts = bundle.take(request.n_prompts)
    limit = loaded.profile.vllm.max_model_len
    too_long = [p.id for p in prompts if p.n_tokens + request.max_tokens > limit]
    if too_long:
        raise UsageError(
            f"{len(too_long)} prompt(s) plus --max-tokens {request.max_tokens} exceed "
            f"max_model_len {limit}: {', '.join(too_long[:5])}"
        )
    constrained = [
        (line, prompt) for line, prompt in enumerate(prompts, start=1) if prompt.constraint
    ]
    if constrained and loaded.profile.vllm.structured_outputs is None:
        line, prompt = constrained[0]
        assert prompt.constraint is not None
        raise UsageError(
            f"{bundle.path / PROMPTS_FILE}:{line} ({prompt.id}): a {prompt.constraint.kind} "
            f"constraint needs a pinned structured-outputs backend; profile {loaded.path} sets "
            f"none ({len(constrained)} constrained line(s))",
            hint="set vllm.structured_outputs.backend (xgrammar, guidance or outlines); vLLM's "
            "'auto' picks a backend per request and is not a pin",
        )


def sample(
    loaded: LoadedProfile,
    bundle: PromptBundle,
    request: SampleRequest,
    *,
    engine: ContainerEngine,
    progress: SampleProgress | None = None,
    verify_progress: Callable[[int], None] | None = None,
) -> SampleSummary:
    """Sample ``bundle`` strictly and write the run log and its sidecar; raise on any failure."""
    check_request(loaded, bundle, request)
    prompts = bundle.take(request.n_prompts)
    report = verify_snapshot(loaded.snapshot_dir, loaded.manifest_path, progress=verify_progress)
    pins = profile_pins(loaded, manifest_sha256=report.manifest_sha256)
    container = checked_container(loaded, engine, what="sample from")
    watch = _IdentityWatch(engine, container)
    profile = loaded.profile
    with VllmServer(server_base_url(profile), model=profile.vllm.served_model_name) as server:
        check_served_model(loaded, server)
        run_pins = pins.run_pins(prompt_bundle_sha256=bundle.sha256, vllm_version=server.version())
        header: dict[str, object] = {
            "pins": run_pins.model_dump(mode="json"),
            "sampling": {
                "temperature": profile.sampling.temperature,
                "seed": profile.sampling.seed,
                "max_tokens": request.max_tokens,
                "concurrency": profile.sampling.concurrency,
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
        with RunLogWriter(request.run_log_output, header, force=request.force) as run_log:
            for index, prompt in enumerate(prompts):
                sample_line = sample_record(server.generate, index, prompt, params)
                run_log.write(sample_line)
                output_tokens += len(sample_line["output_token_ids"])
                watch.check()
                if progress is not None:
                    progress(index + 1, output_tokens)
            seconds = time.perf_counter() - started
            # Before the log is committed: still the same server, and still the same snapshot
            # (it is mounted read-only, but the host side can change under a running server).
            watch.check(force=True)
            final = verify_snapshot(
                loaded.snapshot_dir, loaded.manifest_path, progress=verify_progress
            )
            _check_same_manifest(report.manifest_sha256, final.manifest_sha256, loaded)
    summary = SampleSummary(
        run_log=request.run_log_output,
        run_log_sha256=run_log.sha256,
        sidecar=request.sidecar_output,
        n_samples=len(prompts),
        output_tokens=output_tokens,
        seconds=seconds,
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
        "note": "varies between faithful runs; never compared (the run log is)",
    }
    try:
        atomic_write_bytes(request.sidecar_output, canonical_bytes(sidecar), force=request.force)
    except BaseException:
        # The pair is the claim: no sidecar, no run log.
        request.run_log_output.unlink(missing_ok=True)
        raise
    return summary
