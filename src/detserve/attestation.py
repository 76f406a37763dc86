"""Signed claims: a run log's hash and pins in an in-toto Statement, in a signed DSSE envelope.

A run log's sha256 is the claim; an attestation says *who* makes it. ``detserve attest`` writes
an in-toto Statement v1 (built with ``in_toto_attestation``) whose one subject is the run log, by
file name and sha256, and whose predicate (:data:`PREDICATE_TYPE`) holds the run log header's
pins, sampling parameters and sample count, the detserve version, the environment fingerprint
(:mod:`detserve.fingerprint`) and the sha256 of the sidecar. The statement is RFC 8785 JSON and
the payload of a DSSE envelope (``application/vnd.in-toto+json``) signed through
``securesystemslib``'s signers with an Ed25519 or ECDSA P-256 key (:mod:`detserve.envelope`).

:func:`verify_claim` checks in a fixed order and stops at the first failure, each a
:class:`~detserve.errors.VerificationError` (exit 1) naming what failed:

1. the signature, before the payload is even parsed: no signature, another key, or any changed
   byte of the payload or its type (:class:`~detserve.envelope.SignatureError`);
2. the statement: an in-toto Statement v1 of detserve's predicate type, one subject with a
   sha256 (:class:`ClaimError`);
3. the subject's sha256 against the run log's bytes (:class:`SubjectMismatch`);
4. the predicate's pins, sampling parameters and count against the run log's header, and the
   environment fingerprint against its recorded hash (:class:`ClaimPinMismatch`).

An envelope that is not an envelope at all (not JSON, missing fields, not base64) and a key file
that is not a supported public key are bad input (:class:`~detserve.errors.InputError`, exit 2).

Keys live in :mod:`detserve.keys`, envelopes in :mod:`detserve.envelope`. The signature's key
id is securesystemslib's default (the sha256 of the key's canonical form); it is a hint, not a
trust root: verification takes the public key it is given, tries it on every signature, and
reports the id computed from that key, never the envelope's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from detserve._version import __version__
from detserve.canonical import canonical_bytes
from detserve.envelope import (
    ParsedEnvelope,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from detserve.errors import InputError, PinMismatch, UsageError, VerificationError, bounded
from detserve.fileio import atomic_writer, check_outputs, read_input
from detserve.fingerprint import EnvironmentFingerprint, parse_fingerprint, read_fingerprint
from detserve.keys import MAX_DOCUMENT_BYTES as KEY_MAX_DOCUMENT_BYTES
from detserve.keys import Algorithm, load_public_key, load_signer, signer_public_key
from detserve.runlog import (
    RunLogSummary,
    RunPins,
    SamplingParams,
    run_log_sha256,
    validate_run_log,
)
from detserve.runlog.models import Sha256Hex
from detserve.strict_json import read_json_object
from detserve.strict_model import StrictModel

#: The predicate type of a detserve claim.
PREDICATE_TYPE: Final = "https://detserve.invalid/attestation/run-log/v1"
#: DSSE's payload type for an in-toto statement.
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
#: The largest envelope, sidecar or key file read; real ones are a few kB.
MAX_DOCUMENT_BYTES: Final = KEY_MAX_DOCUMENT_BYTES


class ClaimError(VerificationError):
    """A signed envelope whose statement is not a detserve claim."""

    kind = "not-a-claim"


class SubjectMismatch(VerificationError):
    """The statement's subject is not the run log at hand."""

    kind = "subject-mismatch"


class ClaimPinMismatch(PinMismatch):
    """The predicate says other pins than the run log's header."""

    kind = "claim-pin-mismatch"


# --- the statement ------------------------------------------------------------------------------


class ClaimPredicate(StrictModel):
    """What a detserve claim says beyond the run log's hash."""

    pins: RunPins
    """The run log header's pins."""

    sampling: SamplingParams
    """The run log header's sampling parameters."""

    n_samples: Annotated[int, Field(ge=1)]
    """The number of samples in the run log."""

    detserve_version: Annotated[str, Field(min_length=1, max_length=64)]
    """The detserve that made the attestation."""

    environment: EnvironmentFingerprint
    """The host and container the run used."""

    environment_sha256: Sha256Hex
    """sha256 of the fingerprint's canonical bytes."""

    sidecar_sha256: Sha256Hex
    """sha256 of the sidecar file written beside the run log."""

    @field_validator("environment")
    @classmethod
    def _fingerprint_as_signed(
        cls, value: EnvironmentFingerprint, info: ValidationInfo
    ) -> EnvironmentFingerprint:
        # A signed statement's environment_sha256 names the fingerprint as signed: one whose
        # format the model filled in by default is another document (docs/spec/run-log.md 9.5).
        if info.mode == "json" and not {"format", "format_version"} <= value.model_fields_set:
            raise ValueError("a fingerprint names its format and format_version")
        return value


class _Digest(StrictModel):
    sha256: Sha256Hex


class _Subject(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=4096)]
    digest: _Digest


class ClaimStatement(StrictModel):
    """An in-toto Statement v1 of detserve's predicate type, as JSON."""

    model_config = ConfigDict(populate_by_name=True)  # `_type` is read by its alias

    type: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: Annotated[tuple[_Subject], Field(min_length=1, max_length=1)]
    predicateType: Literal["https://detserve.invalid/attestation/run-log/v1"]
    predicate: ClaimPredicate


def build_statement(summary: RunLogSummary, predicate: ClaimPredicate) -> dict[str, Any]:
    """The in-toto Statement v1 (as JSON) naming the run log and saying ``predicate``."""
    subject = ResourceDescriptor(name=summary.path.name, digest={"sha256": summary.sha256})
    statement = Statement(
        [subject.pb], PREDICATE_TYPE, predicate.model_dump(mode="json", by_alias=True)
    )
    try:
        statement.validate()
    except ValueError as exc:  # not reachable with a validated predicate
        raise ClaimError(f"the statement is not valid in-toto: {exc}") from exc
    document: dict[str, Any] = json_format.MessageToDict(statement.pb)
    return document


def _predicate_from(
    summary: RunLogSummary, environment: EnvironmentFingerprint, sidecar_sha256: str
) -> ClaimPredicate:
    return ClaimPredicate(
        pins=summary.header.pins,
        sampling=summary.header.sampling,
        n_samples=summary.n_samples,
        detserve_version=__version__,
        environment=environment,
        environment_sha256=environment.sha256,
        sidecar_sha256=sidecar_sha256,
    )


# --- attest -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedClaim:
    """What ``attest`` wrote."""

    envelope: Path
    run_log: Path
    run_log_sha256: str
    keyid: str
    algorithm: Algorithm
    environment_sha256: str

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "envelope": str(self.envelope),
            "run_log": str(self.run_log),
            "run_log_sha256": self.run_log_sha256,
            "predicate_type": PREDICATE_TYPE,
            "keyid": self.keyid,
            "algorithm": self.algorithm,
            "environment_sha256": self.environment_sha256,
        }


def _read_limited(path: Path, what: str) -> bytes:
    # a regular file under the cap, checked before it is read (fileio)
    return read_input(Path(path), what=what, cap=MAX_DOCUMENT_BYTES)


def _sidecar_environment(
    sidecar: Path, summary: RunLogSummary, environment: Path | None
) -> tuple[str, EnvironmentFingerprint]:
    data = _read_limited(sidecar, "sidecar")
    document = read_json_object(data, str(sidecar))
    named = document.get("run_log_sha256")
    if named != summary.sha256:
        raise VerificationError(
            f"sidecar {sidecar} is not the run log's: it names another run",
            details=[f"sidecar run_log_sha256: {named!r}", f"run log sha256: {summary.sha256}"],
        )
    if "environment" in document and environment is not None:
        raise UsageError(
            f"sidecar {sidecar} holds an environment fingerprint; --environment would be a second"
        )
    if "environment" in document:
        fingerprint = parse_fingerprint(document["environment"], source=f"{sidecar}: environment")
    elif environment is not None:
        fingerprint = read_fingerprint(environment)
    else:
        raise UsageError(
            f"sidecar {sidecar} holds no environment fingerprint",
            hint="take one with `detserve env --config P --fingerprint-output env.json` while the "
            "server "
            "runs, and pass --environment env.json",
        )
    if fingerprint.container.image != summary.header.pins.image:
        raise PinMismatch(
            "the environment fingerprint is of another image than the run log's",
            details=[
                f"fingerprint: {fingerprint.container.image}",
                f"run log:     {summary.header.pins.image}",
            ],
        )
    return hashlib.sha256(data).hexdigest(), fingerprint


def attest(
    run_log: Path,
    sidecar: Path,
    private_key: Path,
    output: Path,
    *,
    environment: Path | None = None,
    force: bool = False,
) -> SignedClaim:
    """Sign a claim about ``run_log`` and write its DSSE envelope to ``output`` atomically.

    The run log is validated completely; the sidecar must name its sha256; the environment
    fingerprint comes from the sidecar or, for sidecars without one, from ``environment`` (a
    file ``detserve env --fingerprint-output`` wrote), and must be of the run log's image.
    """
    inputs = [Path(p) for p in (run_log, sidecar, private_key, environment) if p is not None]
    check_outputs([Path(output)], force=force, inputs=inputs)
    signer = load_signer(private_key)
    summary = validate_run_log(run_log)
    sidecar_sha256, fingerprint = _sidecar_environment(sidecar, summary, environment)
    predicate = _predicate_from(summary, fingerprint, sidecar_sha256)
    payload = canonical_bytes(build_statement(summary, predicate)).rstrip(b"\n")
    # What is signed is verified with the signer's public key before it is published.
    document = sign_envelope(payload, PAYLOAD_TYPE, signer)
    with atomic_writer(output, force=force) as handle:
        handle.write(document)
    public = signer_public_key(signer)
    return SignedClaim(
        envelope=output,
        run_log=run_log,
        run_log_sha256=summary.sha256,
        keyid=public.keyid,
        algorithm=public.algorithm,
        environment_sha256=fingerprint.sha256,
    )


# --- verify -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttestedClaim:
    """A claim whose signature, subject and pins verified."""

    envelope: Path
    run_log: Path
    run_log_sha256: str
    subject_name: str
    keyid: str
    algorithm: Algorithm
    predicate: ClaimPredicate

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "verified": ["signature", "statement", "subject", "pins"],
            "envelope": str(self.envelope),
            "run_log": str(self.run_log),
            "run_log_sha256": self.run_log_sha256,
            "subject_name": self.subject_name,
            "keyid": self.keyid,
            "algorithm": self.algorithm,
            "predicate_type": PREDICATE_TYPE,
            "detserve_version": self.predicate.detserve_version,
            "n_samples": self.predicate.n_samples,
            "environment_sha256": self.predicate.environment_sha256,
            "pins": self.predicate.pins.model_dump(mode="json"),
        }


def _statement(envelope: ParsedEnvelope) -> ClaimStatement:
    if envelope.payload_type != PAYLOAD_TYPE:
        raise ClaimError(
            f"the signed payload is {bounded(envelope.payload_type, 200)!r}, not an in-toto "
            f"statement ({PAYLOAD_TYPE})"
        )
    try:
        document = read_json_object(envelope.payload, "the signed statement")
        # The in-toto library's own checks first: the statement type, subjects with digests.
        Statement.copy_from_pb(
            json_format.ParseDict(document, statement_pb2.Statement())
        ).validate()
        return ClaimStatement.model_validate_json(envelope.payload)
    except (InputError, json_format.ParseError, ValueError) as exc:
        details = []
        if isinstance(exc, ValidationError):
            details = [
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)[:10]
            ]
        raise ClaimError(
            "the signed statement is not a detserve claim (in-toto Statement v1, predicate "
            f"{PREDICATE_TYPE})",
            details=details or [str(exc)[:300]],
        ) from exc


def _differences(claimed: Mapping[str, Any], actual: Mapping[str, Any], prefix: str) -> list[str]:
    lines = []
    for name in sorted(set(claimed) | set(actual)):
        if claimed.get(name) != actual.get(name):
            lines.append(
                f"{prefix}{name}: claim {claimed.get(name)!r}, run log {actual.get(name)!r}"
            )
    return lines


def verify_claim(envelope: Path, public_key: Path, run_log: Path) -> AttestedClaim:
    """Verify a signed claim against a run log: signature, statement, subject, pins.

    Raises a :class:`~detserve.errors.VerificationError` subclass (exit 1) at the first check
    that fails, and :class:`~detserve.errors.InputError` (exit 2) for a file that is not a key,
    an envelope or a run log. Never returns a failed verdict.
    """
    key = load_public_key(public_key)
    parsed = parse_envelope(_read_limited(envelope, "envelope"), str(envelope))
    keyid = verify_envelope(parsed, key)  # computed from the key that verified
    statement = _statement(parsed)
    subject = statement.subject[0]
    actual_sha256 = run_log_sha256(run_log)
    if subject.digest.sha256 != actual_sha256:
        raise SubjectMismatch(
            f"the claim is about another run log than {run_log}",
            details=[
                f"claim subject: {subject.name} sha256 {subject.digest.sha256}",
                f"run log:       {run_log} sha256 {actual_sha256}",
            ],
            hint="the run log was changed after it was attested, or this is not its envelope",
        )
    # Re-opened to validate: the header compared must be of the bytes whose hash matched
    summary = validate_run_log(run_log, expected_sha256=actual_sha256)
    predicate = statement.predicate
    differences = _differences(
        predicate.pins.model_dump(mode="json"), summary.header.pins.model_dump(mode="json"), "pins."
    )
    differences += _differences(
        predicate.sampling.model_dump(mode="json"),
        summary.header.sampling.model_dump(mode="json"),
        "sampling.",
    )
    if predicate.n_samples != summary.n_samples:
        differences.append(f"n_samples: claim {predicate.n_samples}, run log {summary.n_samples}")
    if predicate.environment.sha256 != predicate.environment_sha256:
        differences.append(
            f"environment_sha256: claim {predicate.environment_sha256}, fingerprint "
            f"{predicate.environment.sha256}"
        )
    if differences:
        raise ClaimPinMismatch(
            "the signed predicate does not match the run log's header", details=differences
        )
    return AttestedClaim(
        envelope=envelope,
        run_log=run_log,
        run_log_sha256=actual_sha256,
        subject_name=subject.name,
        keyid=keyid,
        algorithm=key.algorithm,
        predicate=predicate,
    )
