"""The face's diagnosis verbs: measure why runs could differ (``check``), verify the certificate
it writes, fingerprint the environment (``env``) and run the determinism checklist (``doctor``).

Wrappers only over :mod:`detserve.diagnosis.check_run`, :mod:`detserve.certificate`,
:mod:`detserve.fingerprint` and :mod:`detserve.doctor_checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.api._common import ProfileLike, load_profile
from detserve.errors import UsageError

if TYPE_CHECKING:
    from detserve.certificate import VerifiedCertificate
    from detserve.diagnosis.check_run import CheckOutcome
    from detserve.diagnosis.measure import PassKey
    from detserve.doctor_checks import DoctorReport
    from detserve.fingerprint import EnvironmentFingerprint, FingerprintEngine
    from detserve.host_facts import HostFacts
    from detserve.runtime.docker_engine import ContainerEngine


#: the levels ``check`` measures unless told otherwise
DEFAULT_CHECK_LEVELS = (1, 2, 4, 8, 16, 32)


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
    from detserve.diagnosis.check_run import check_profile

    return check_profile(
        config,
        output_dir=output_dir,
        tier=tier,
        runs=runs,
        concurrency=concurrency,
        n_prompts=n_prompts,
        max_tokens=max_tokens,
        logprobs=logprobs,
        shuffle=shuffle,
        shuffle_seed=shuffle_seed,
        bundle=bundle,
        bundle_pin=bundle_pin,
        force=force,
        signing_key=signing_key,
        on_pass=on_pass,
        engine=engine,
        probe=probe,
        full_verify=full_verify,
        docker_host=docker_host,
    )


def verify_certificate(path: Path | str, public_key: Path | str) -> VerifiedCertificate:
    """A concurrency certificate verified with ``public_key``: its signature (exit 1 when
    unsigned or signed by another key), its payload (exit 2 when not a certificate), and the
    trace it names, whose sha256 must be the certificate's and whose header and tokens must
    support every claim, the verdict computed again (exit 1 otherwise)."""
    from detserve.certificate import verify_certificate as verify_core

    return verify_core(Path(path), Path(public_key))


@dataclass(frozen=True)
class HostOnlyEnvironment:
    """This host's facts, read without any engine (``env`` with ``host_only``): no fingerprint
    was made, since the engine half was not run."""

    profile: Path
    host: HostFacts

    @property
    def engine_reason(self) -> str:
        """Why the engine's half is missing."""
        from detserve.doctor_facts import HOST_ONLY

        return HOST_ONLY

    def as_json(self) -> dict[str, object]:
        return {
            "ok": False,
            "host_only": True,
            "profile": str(self.profile),
            "host": self.host.as_json(),
            "engine": {"run": False, "reason": self.engine_reason},
            "fingerprint": None,
        }


def _refuse_with_host_only(output: Path | str | None, docker_host: str | None) -> None:
    if output is not None:
        raise UsageError("--host-only makes no fingerprint: --fingerprint-output is refused")
    if docker_host is not None:
        raise UsageError("--host-only asks no engine: --docker-host is refused")


def env(
    config: ProfileLike,
    *,
    fingerprint_output: Path | str | None = None,
    force: bool = False,
    docker_host: str | None = None,
    host_only: bool = False,
) -> EnvironmentFingerprint | HostOnlyEnvironment:
    """Fingerprint this host and the pinned container: canonical JSON and its sha256.

    From the profile's running container when it is bound to the pins, else from a short-lived
    container of the pinned image; written to ``fingerprint_output`` when given. With
    ``host_only`` no engine is asked and no fingerprint is made: this host's facts only
    (:class:`HostOnlyEnvironment`; ``fingerprint_output`` and ``docker_host`` are refused).
    """
    if host_only:
        from detserve.host_facts import read_host_facts

        _refuse_with_host_only(fingerprint_output, docker_host)
        loaded = load_profile(config)
        return HostOnlyEnvironment(profile=loaded.path, host=read_host_facts())
    from detserve.fileio import atomic_write_bytes, check_outputs
    from detserve.fingerprint import environment_fingerprint
    from detserve.runtime.probe import DockerProbe

    loaded = load_profile(config)
    loaded.require_pins()
    output = Path(fingerprint_output) if fingerprint_output is not None else None
    if output is not None:
        # the snapshot too: a file written into it would fail every later verify
        inputs = [loaded.path, loaded.manifest_path, loaded.snapshot_dir]
        check_outputs([output], force=force, inputs=inputs)
    fingerprint = environment_fingerprint(
        loaded, DockerProbe.from_env() if docker_host is None else DockerProbe.from_env(docker_host)
    )
    if output is not None:
        atomic_write_bytes(output, fingerprint.canonical(), force=force)
    return fingerprint


def doctor(
    config: ProfileLike, *, docker_host: str | None = None, host_only: bool = False
) -> DoctorReport:
    """A determinism checklist for a profile on this host: each item PASS or FAIL, and the fix.

    An item that cannot be checked (no pins, no engine) fails; with ``host_only`` no engine is
    asked and the engine's items are NOT RUN. The report is returned whatever it says: the
    caller decides what a FAIL exits with.
    """
    from detserve.doctor_checks import doctor as doctor_core

    loaded = load_profile(config)
    if host_only:
        _refuse_with_host_only(None, docker_host)
        return doctor_core(loaded, None)
    from detserve.runtime.probe import DockerProbe

    connect = (
        DockerProbe.from_env if docker_host is None else lambda: DockerProbe.from_env(docker_host)
    )
    return doctor_core(loaded, connect)
