"""Concurrency certificates: "for these exact pins, tokens did not depend on the batch".

A passing tier-1 (or tier-2) ``detserve check`` writes one. It is canonical JSON (RFC 8785),
named by its sha256, and bound to everything that decides the tokens: the run pins (model and
revision, manifest, image, engine arguments, environment, device, served name, prompt bundle,
vLLM version), the seed, ``max_tokens``, ``logprobs``, and the concurrency levels measured; it
says what was measured (how many prompts, runs, shuffled orders, the verdict and the sha256 of
the trace the verdict was computed from).

``detserve sample --concurrency N --certificate FILE`` samples with N requests in flight only
when :func:`require_coverage` finds nothing to object to; every difference is named, sorted by
field, and refused (:class:`CertificateMismatch`, exit 2). A certificate never weakens what a
verifier does: a replay runs at concurrency 1, and a claim sampled under a wrong certificate
fails there.

Invariants: the model is frozen, strict and forbids unknown fields; a certificate file must be
exactly the canonical bytes of the model it parses to (so its sha256 is the one the sidecar
names); the measured levels always include 1 (the baseline every level was compared with).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes
from detserve.errors import InputError
from detserve.fileio import read_input
from detserve.runlog import RunPins

FORMAT: Final = "detserve-certificate"
FORMAT_VERSION: Final = 1
MAX_CERTIFICATE_BYTES: Final = 1 << 20
#: the most requests in flight a certificate may name
MAX_CONCURRENCY: Final = 4096


class CertificateError(InputError):
    """A certificate that cannot be read, or that does not cover the run (exit 2)."""

    kind = "certificate"


class CertificateMismatch(CertificateError):
    """A valid certificate for other pins, parameters or concurrencies (exit 2)."""

    kind = "certificate-mismatch"


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True
    )


class Measurement(_Model):
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
    """sha256 of the check's ``trace.jsonl``, every request and its tokens."""


class Certificate(_Model):
    """A measured concurrency certificate (``certificate.json``)."""

    format: Literal["detserve-certificate"] = FORMAT
    """Document format name."""

    format_version: Literal[1] = FORMAT_VERSION
    """Document format version."""

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

    @field_validator("concurrency_levels")
    @classmethod
    def _levels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if value[0] != 1 or list(value) != sorted(set(value)):
            raise ValueError("expected distinct levels in ascending order, starting at 1")
        return value

    def canonical(self) -> bytes:
        """RFC 8785 bytes with one final newline: what is written and hashed."""
        return canonical_bytes(self.model_dump(mode="json"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


def read_certificate(path: Path) -> Certificate:
    """A certificate file, validated and required to be its own canonical bytes."""
    data = read_input(
        Path(path), what="certificate", cap=MAX_CERTIFICATE_BYTES, error=CertificateError
    )
    try:
        document: Any = json.loads(data)
        certificate = Certificate.model_validate_json(json.dumps(document))
    except ValueError as exc:  # ValidationError is one
        details: list[str] = []
        if isinstance(exc, ValidationError):
            details = [
                f"{'.'.join(str(p) for p in error['loc']) or '(document)'}: {error['msg']}"
                for error in exc.errors(include_url=False)[:10]
            ]
        raise CertificateError(
            f"{path}: not a detserve certificate", details=details or [str(exc)]
        ) from exc
    if certificate.canonical() != data:
        raise CertificateError(
            f"{path}: not the canonical bytes of a certificate (RFC 8785, one final newline)",
            hint="a certificate is written by `detserve check` and never edited",
        )
    return certificate


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
    lines: list[str] = []
    theirs = certificate.pins.model_dump(mode="json")
    ours = pins.model_dump(mode="json")
    for name in sorted(ours):
        if theirs.get(name) != ours[name]:
            lines.append(f"pins.{name}: certificate {theirs.get(name)!r}, run {ours[name]!r}")
    if concurrency not in certificate.concurrency_levels:
        levels = ", ".join(str(level) for level in certificate.concurrency_levels)
        lines.append(f"concurrency: certificate measured {levels}, run asks {concurrency}")
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
    if certificate.seed != seed:
        lines.append(f"seed: certificate {certificate.seed}, run {seed}")
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
