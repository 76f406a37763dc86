"""Concurrency certificates: "for these exact pins, tokens did not depend on the batch", signed.

A passing tier-1 or tier-2 ``detserve check`` writes ``certificate.json`` beside its trace
(:mod:`detserve.diagnosis.trace`): a DSSE envelope (:mod:`detserve.envelope`, payload type
:data:`PAYLOAD_TYPE`) whose payload is the certificate in canonical JSON (RFC 8785): the run pins
(model and revision, manifest, image, engine arguments, environment, device, served name, prompt
bundle, vLLM version), the seed, ``max_tokens``, ``logprobs``, the concurrency levels measured,
what was measured (prompts, runs, shuffled orders, the verdict) and the trace's file name and
sha256. ``check --signing-key KEY`` signs it with the operator's key (the keys of ``attest``,
:mod:`detserve.keys`); without a key the envelope carries no signature, and nothing accepts it.

:func:`verify_certificate` is the only way a certificate is used (``sample`` and ``serve`` with
``--certificate``), in this order, stopping at the first failure:

1. the envelope: DSSE's shape, strict UTF-8 JSON (:class:`~detserve.errors.InputError`, exit 2);
2. the signature, with the public key the user names (:class:`~detserve.envelope.SignatureError`,
   exit 1: no signature, another key, any changed byte); the signer reported is the id computed
   from that key, never the one the envelope writes;
3. the payload: a certificate of this format, exactly its own canonical bytes
   (:class:`CertificateError`, exit 2);
4. the trace it names, in the certificate's directory: its sha256 must be the certificate's, and
   it must support every claim: its header's pins, seed, tier, levels, runs, prompts,
   ``max_tokens``, ``logprobs`` and shuffling are the certificate's, and the verdict computed
   again from its tokens is PASS (:class:`CertificateUnsupported`, exit 1). A stale certificate
   (its directory written again by a later check) and a hand-written one fail here.

:func:`require_coverage` then compares a verified certificate with the run: other pins, seed,
``max_tokens`` or ``logprobs``, a level not measured or more prompts than measured are refused,
each named (:class:`CertificateMismatch`, exit 2).

What a certificate does not show: that the server stayed the same during the check (a trace
cannot show ``ENV_CHANGED``; that is the signer's word), or that the server is batch-invariant
for prompts, runs or levels not measured. A verifier replays at concurrency 1, where a claim
sampled under a wrong certificate fails.

Invariants: the model is frozen, strict and forbids unknown fields; the payload is exactly the
canonical bytes of the model it parses to (its sha256 is the one a sidecar names); the measured
levels always include 1 (the baseline every level was compared with).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, ValidationError, field_validator

# securesystemslib.signer's public names, re-exported without __all__ (mypy's strict view).
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes
from detserve.diagnosis.trace import CheckTrace, TraceError, parse_trace
from detserve.diagnosis.verdict import Verdict, diagnose
from detserve.envelope import (
    SignatureError,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from detserve.errors import InputError, UsageError, VerificationError, bounded
from detserve.fileio import read_input
from detserve.keys import Algorithm, load_public_key
from detserve.runlog import RunPins
from detserve.strict_json import read_json_object
from detserve.strict_model import StrictModel

FORMAT: Final = "detserve-certificate"
FORMAT_VERSION: Final = 2
#: DSSE's payload type of a certificate
PAYLOAD_TYPE: Final = "application/vnd.detserve.certificate+json"
#: the certificate's file name in a repro pack
CERTIFICATE_FILE: Final = "certificate.json"
MAX_CERTIFICATE_BYTES: Final = 1 << 20
#: the largest trace a certificate is checked against: it is read whole, once, and hashed
MAX_TRACE_BYTES: Final = 1 << 30
#: the most requests in flight a certificate may name
MAX_CONCURRENCY: Final = 4096


class CertificateError(InputError):
    """A file that is not a certificate (exit 2)."""

    kind = "certificate"


class CertificateMismatch(CertificateError):
    """A verified certificate for other pins, parameters or concurrencies (exit 2)."""

    kind = "certificate-mismatch"


class CertificateUnsupported(VerificationError):
    """A signed certificate its trace does not support: another trace, or other claims (exit 1)."""

    kind = "certificate-unsupported"


class Measurement(StrictModel):
    """What the check that issued the certificate measured."""

    n_prompts: Annotated[int, Field(ge=1, le=MAX_EXACT_INTEGER)]
    """How many prompts, the first of the bundle, were sampled at every level."""

    runs: Annotated[int, Field(ge=2, le=1024)]
    """Runs at each concurrency level (in the bundle's order); at least 2 to see run variance."""

    shuffled: bool
    """Whether each level above 1 was also sampled in a shuffled prompt order."""

    verdict: Literal["PASS"]
    """The check's verdict at ``tier``; only a pass is certified."""

    trace_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """sha256 of the check's trace, every request and its tokens."""


class Certificate(StrictModel):
    """A measured concurrency certificate: the payload of ``certificate.json``."""

    format: Literal["detserve-certificate"] = FORMAT
    """Document format name."""

    format_version: Literal[2] = FORMAT_VERSION
    """Document format version (2: signed, and bound to its trace by name and sha256)."""

    tier: Literal[1, 2]
    """1: identical tokens; 2: identical tokens and logprobs, bit for bit."""

    pins: RunPins
    """The pins the check ran under, exactly as a run log's header names them."""

    seed: Annotated[int, Field(ge=0, le=MAX_EXACT_INTEGER)]
    """The seed of the engine and of every request."""

    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)]
    """Maximum output tokens per prompt."""

    logprobs: Annotated[int, Field(ge=0, le=1024)] | None
    """The ``logprobs`` request parameter, or null."""

    concurrency_levels: Annotated[
        tuple[Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)], ...], Field(min_length=2)
    ]
    """The requests in flight measured, ascending, 1 first (the baseline)."""

    measured: Measurement
    """What was measured."""

    trace: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    """The trace's file name, in the certificate's directory (a plain name: no path)."""

    @field_validator("concurrency_levels")
    @classmethod
    def _levels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if value[0] != 1 or list(value) != sorted(set(value)):
            raise ValueError("expected distinct levels in ascending order, starting at 1")
        return value

    @field_validator("trace")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if ".." in value:
            raise ValueError("expected a plain file name")
        return value

    def payload(self) -> bytes:
        """RFC 8785 bytes (no final newline): what is signed and hashed."""
        return canonical_bytes(self.model_dump(mode="json")).rstrip(b"\n")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()


def certificate_envelope(certificate: Certificate, signer: CryptoSigner | None) -> bytes:
    """``certificate.json``: the DSSE envelope of the certificate, signed by ``signer`` when
    given (the signature is verified before it is returned), with no signature otherwise."""
    return sign_envelope(certificate.payload(), PAYLOAD_TYPE, signer)


@dataclass(frozen=True)
class VerifiedCertificate:
    """A certificate whose signature, payload and trace verified."""

    certificate: Certificate
    path: Path
    trace: Path
    #: computed from the public key that verified the signature
    keyid: str
    algorithm: Algorithm

    @property
    def sha256(self) -> str:
        return self.certificate.sha256

    def as_json(self) -> dict[str, object]:
        return {
            "certificate": str(self.path),
            "certificate_sha256": self.sha256,
            "trace": str(self.trace),
            "keyid": self.keyid,
            "algorithm": self.algorithm,
        }


def _parse_payload(payload: bytes, source: str) -> Certificate:
    try:
        read_json_object(payload, f"{source}: the signed certificate", error=CertificateError)
        certificate = Certificate.model_validate_json(payload)
    except ValidationError as exc:
        details = [
            f"{'.'.join(str(p) for p in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:10]
        ]
        raise CertificateError(
            f"{source}: the signed payload is not a detserve certificate (format version "
            f"{FORMAT_VERSION})",
            details=details,
        ) from exc
    if certificate.payload() != payload:
        raise CertificateError(
            f"{source}: the signed certificate is not its own canonical bytes (RFC 8785)"
        )
    return certificate


def _refuse_version_1(data: bytes, source: str) -> None:
    """Name a bare certificate (version 1, or one written by hand) instead of a DSSE field."""
    try:
        document = read_json_object(data, source)
    except InputError:
        return
    if document.get("format") == FORMAT:
        version = bounded(str(document.get("format_version")), 20)
        raise CertificateError(
            f"{source}: a bare certificate (format version {version}), not a signed envelope; "
            f"this detserve takes certificates of version {FORMAT_VERSION} in a DSSE envelope "
            "only, as `detserve check` writes them",
            hint="run `detserve check --signing-key KEY` again",
        )


def _support_differences(certificate: Certificate, trace: CheckTrace) -> list[str]:
    """Each claim of ``certificate`` its trace does not support, sorted, both values."""
    header, plan = trace.header, trace.header.check
    lines: list[str] = []
    ours = certificate.pins.model_dump(mode="json")
    theirs = header.pins.model_dump(mode="json")
    for name in sorted(set(ours) | set(theirs)):
        if ours.get(name) != theirs.get(name):
            lines.append(f"pins.{name}: certificate {ours.get(name)!r}, trace {theirs.get(name)!r}")
    claimed = {
        "concurrency_levels": list(certificate.concurrency_levels),
        "logprobs": certificate.logprobs,
        "max_tokens": certificate.max_tokens,
        "n_prompts": certificate.measured.n_prompts,
        "runs": certificate.measured.runs,
        "seed": certificate.seed,
        "shuffled": certificate.measured.shuffled,
        "tier": certificate.tier,
    }
    measured = {
        "concurrency_levels": list(plan.concurrency_levels),
        "logprobs": plan.logprobs,
        "max_tokens": plan.max_tokens,
        "n_prompts": plan.n_prompts,
        "runs": plan.runs,
        "seed": header.seed,
        "shuffled": plan.shuffle,
        "tier": plan.tier,
    }
    lines += [
        f"{name}: certificate {claimed[name]!r}, trace {measured[name]!r}"
        for name in sorted(claimed)
        if claimed[name] != measured[name]
    ]
    diagnosis = diagnose(trace.measurements, certificate.tier)
    if diagnosis.verdict is not Verdict.PASS:
        lines.append(
            f"verdict: certificate PASS at tier {certificate.tier}, the trace's tokens give "
            f"{diagnosis.verdict.value}: {bounded(diagnosis.reason, 500)}"
        )
    return sorted(lines)


def verify_certificate(path: Path, public_key: Path) -> VerifiedCertificate:
    """A certificate verified as the module docstring says, or the error of the first failure."""
    path, shown = Path(path), bounded(str(path))
    key = load_public_key(public_key)
    data = read_input(path, what="certificate", cap=MAX_CERTIFICATE_BYTES, error=CertificateError)
    _refuse_version_1(data, shown)
    envelope = parse_envelope(data, shown)
    if not envelope.signatures:
        raise SignatureError(
            f"the certificate {shown} carries no signature",
            hint="`detserve check` signs its certificate only with --signing-key KEY; concurrency "
            "above 1 takes a certificate signed by the key --certificate-key names",
        )
    keyid = verify_envelope(envelope, key)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise CertificateError(
            f"{shown}: the signed payload is {bounded(envelope.payload_type, 100)!r}, not a "
            f"certificate ({PAYLOAD_TYPE})"
        )
    certificate = _parse_payload(envelope.payload, shown)
    trace_path = path.parent / certificate.trace
    trace_data = read_input(
        trace_path, what="certificate's trace", cap=MAX_TRACE_BYTES, error=CertificateError
    )
    actual = hashlib.sha256(trace_data).hexdigest()
    if actual != certificate.measured.trace_sha256:
        raise CertificateUnsupported(
            f"the certificate {shown} was not measured from the trace {bounded(str(trace_path))}",
            details=[
                f"certificate: trace sha256 {certificate.measured.trace_sha256}",
                f"trace:       sha256 {actual}",
            ],
            hint="a certificate is stale once another check writes its directory, and forged "
            "when no check wrote it; run `detserve check` for these pins",
        )
    try:
        trace = parse_trace(trace_data, str(trace_path))
    except TraceError as exc:
        raise CertificateUnsupported(
            f"the trace of the certificate {shown} does not support it: {exc.message}"
        ) from exc
    differences = _support_differences(certificate, trace)
    if differences:
        raise CertificateUnsupported(
            f"the trace of the certificate {shown} does not support what it claims",
            details=differences,
            hint="the signer signed a certificate no check measured; trust nothing in it",
        )
    return VerifiedCertificate(certificate, path, trace_path, keyid, key.algorithm)


def check_certificate_options(
    concurrency: int,
    certificate: Path | str | None,
    certificate_key: Path | str | None,
    *,
    sequential: str,
) -> None:
    """Refuse, before any work, a concurrency below 1 or one no certificate is given for, and a
    certificate without the public key that verifies it (or a key without a certificate): exit 2.
    The one statement of "more than one request in flight needs a certificate"."""
    if concurrency < 1:
        raise UsageError(f"--concurrency {concurrency} is refused: at least 1")
    if concurrency > 1 and certificate is None:
        raise UsageError(
            f"--concurrency {concurrency} is refused: {sequential} unless a concurrency "
            "certificate measured for these pins covers more",
            hint="measure one with `detserve check --tier 1 --signing-key KEY ...` and pass "
            "--certificate FILE --certificate-key KEY.pub",
        )
    if certificate is not None and certificate_key is None:
        raise UsageError(
            "--certificate needs --certificate-key PUB: a certificate counts only when it is "
            "signed by a key you trust, and is verified with that key's public half"
        )
    if certificate_key is not None and certificate is None:
        raise UsageError("--certificate-key verifies a --certificate: give the certificate")


def pins_seed_concurrency_differences(
    certificate: Certificate, *, pins: StrictModel, seed: int, concurrency: int, subject: str
) -> list[str]:
    """What every use of a certificate compares (a run's and a gateway's): each pin, the seed,
    and whether ``concurrency`` was measured; ``subject`` names the other side."""
    theirs = certificate.pins.model_dump(mode="json")
    ours = pins.model_dump(mode="json")
    lines = [
        f"pins.{name}: certificate {theirs.get(name)!r}, {subject} {ours[name]!r}"
        for name in sorted(ours)
        if theirs.get(name) != ours[name]
    ]
    if concurrency not in certificate.concurrency_levels:
        levels = ", ".join(str(level) for level in certificate.concurrency_levels)
        lines.append(f"concurrency: certificate measured {levels}, {subject} asks {concurrency}")
    if certificate.seed != seed:
        lines.append(f"seed: certificate {certificate.seed}, {subject} {seed}")
    return lines


def coverage_differences(
    certificate: Certificate,
    *,
    pins: RunPins,
    seed: int,
    max_tokens: int,
    logprobs: int | None,
    concurrency: int,
    n_prompts: int,
) -> list[str]:
    """Each way ``certificate`` does not cover this run, sorted by field, both values in full."""
    lines = pins_seed_concurrency_differences(
        certificate, pins=pins, seed=seed, concurrency=concurrency, subject="run"
    )
    if certificate.logprobs != logprobs:
        lines.append(f"logprobs: certificate {certificate.logprobs!r}, run {logprobs!r}")
    if logprobs is not None and certificate.tier < 2:
        lines.append(
            "logprobs: the run records logprobs and the certificate is tier 1 (tokens only); "
            "a tier-2 certificate is needed"
        )
    if certificate.max_tokens != max_tokens:
        lines.append(f"max_tokens: certificate {certificate.max_tokens}, run {max_tokens}")
    if n_prompts > certificate.measured.n_prompts:
        lines.append(
            f"n_prompts: certificate measured the first {certificate.measured.n_prompts}, "
            f"run samples {n_prompts}"
        )
    return sorted(lines)


def require_coverage(
    certificate: Certificate,
    *,
    pins: RunPins,
    seed: int,
    max_tokens: int,
    logprobs: int | None,
    concurrency: int,
    n_prompts: int,
) -> None:
    """Raise :class:`CertificateMismatch` naming every difference; return when it covers."""
    lines = coverage_differences(
        certificate,
        pins=pins,
        seed=seed,
        max_tokens=max_tokens,
        logprobs=logprobs,
        concurrency=concurrency,
        n_prompts=n_prompts,
    )
    if lines:
        raise CertificateMismatch(
            f"the certificate (sha256 {certificate.sha256}) does not cover this run; "
            f"--concurrency {concurrency} is refused",
            details=lines,
            hint="run `detserve check` for these pins and parameters to measure a certificate",
        )
