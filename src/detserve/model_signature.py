"""Publishers' model signatures (OpenSSF Model Signing) read and verified as trust roots.

A publisher signs a model with ``model_signing`` (PyPI ``model-signing``): a Sigstore bundle whose
DSSE envelope carries an in-toto statement listing every file of the model, or every shard of
every file, with its digest and the hashing settings used. :func:`verify_model_signature` checks
such a signature with a trust root the operator names, an elliptic-curve public key or a
certificate chain, and only then returns what it says (:class:`SignedModel`). Nothing here reads
the model: comparing the signature with a snapshot is :mod:`detserve.signed_snapshot`'s.

Invariants:

* The signature, the key and the certificates are read once each, with
  :func:`~detserve.fileio.read_input` (regular files only, capped), and every check runs on those
  bytes; ``signature_sha256`` is the hash of the very bytes that verified.
* The exit code names the stage that failed. A file that is not a well-formed signature, a key
  or chain that cannot be used, or authentic content that is not a model manifest detserve
  accepts: bad input (exit 2). A signature that does not verify with the given trust root (other
  key, a certificate outside the chain or not for signing, changed signed bytes): exit 1.
* The cryptography is the library's: its verifiers check the DSSE signature (and the chain), fed
  with the key or certificates detserve read. Those verifiers live in the library's private
  modules, so the version is pinned (``model-signing`` 1.1.x) and every path is unit-tested.
* Stricter than the library: one signature per envelope, no duplicate JSON keys, the library's
  media and payload types checked before any cryptography; the signed statement itself is read
  by :mod:`detserve.signed_statement`, as strictly.
* Not offered: Sigstore keyless signatures (a Fulcio certificate and a Rekor entry) need the
  public Sigstore instance's trust root, which detserve does not fetch; they are refused (exit 2),
  as are signatures in the pre-1.0 format (``model_signing`` 0.2).
* Nothing here prints: what the library prints or logs while verifying is returned as ``notes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from detserve.errors import (
    ModelSignatureError,
    SignatureInvalid,
    SignatureTrustError,
    UsageError,
    bounded,
)
from detserve.fileio import read_input
from detserve.signed_statement import SignedModel, read_statement
from detserve.strict_json import read_json_object

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing._signing import sign_sigstore_pb
    from sigstore_models.bundle.v1 import Bundle

_KiB: Final = 1024
#: A signature lists ~150 bytes a resource: 64 MiB holds ~400,000 files or shards.
MAX_SIGNATURE_BYTES: Final = 64 * 1024 * _KiB
#: A PEM public key or certificate chain.
MAX_TRUST_BYTES: Final = 1024 * _KiB

_BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})


@dataclass(frozen=True)
class SignatureTrust:
    """What a model signature must verify with: one public key, or a certificate chain."""

    public_key: Path | None = None
    #: PEM certificates the signer's certificate must chain to (the root, and intermediates)
    certificate_chain: tuple[Path, ...] = ()

    @classmethod
    def of(
        cls, public_key: Path | str | None, certificate_chain: Sequence[Path | str] = ()
    ) -> SignatureTrust:
        """Exactly one trust root: an empty one would trust nothing, two would be ambiguous."""
        if (public_key is None) == (not certificate_chain):
            raise UsageError(
                "give --public-key KEY or --certificate-chain PEM (one of them) with "
                "--model-signature"
            )
        return cls(
            public_key=None if public_key is None else Path(public_key),
            certificate_chain=tuple(Path(path) for path in certificate_chain),
        )


def verify_model_signature(signature: Path, trust: SignatureTrust) -> SignedModel:
    """Verify ``signature`` with ``trust``; return what it says. Raises, never returns a bool."""
    signature = Path(signature)
    data = read_input(
        signature, what="model signature", cap=MAX_SIGNATURE_BYTES, error=ModelSignatureError
    )
    shown = bounded(str(signature))
    bundle = _parse_bundle(data, shown)
    verifier, signer = _verifier(bundle, trust, shown)
    payload, notes = _verify_envelope(bundle, verifier, trust, signer, shown)
    statement = _json_object(payload, f"the payload of model signature {shown}")
    return read_statement(
        statement, shown, signature=signature, signer=signer, data=data, notes=notes
    )


# --- the signature file -----------------------------------------------------------------------


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    # I-JSON and nothing else, as every evidence file (detserve.strict_json): a loose reader takes
    # UTF-16 or a BOM, the last of two keys, NaN or 1e400 as infinity
    return read_json_object(data, what, error=ModelSignatureError)


def _parse_bundle(data: bytes, shown: str) -> Bundle:
    """The Sigstore bundle, read as the library reads it; any malformation is exit 2."""
    from pydantic import ValidationError
    from sigstore_models.bundle.v1 import Bundle

    parsed = _json_object(data, f"model signature {shown}")
    try:
        material = parsed["verificationMaterial"]
        # The library's own adjustments for bundles its older versions wrote.
        material.setdefault("tlogEntries", [])
        if "publicKey" in material:
            material["publicKey"].setdefault("hint", None)
            for legacy in ("rawBytes", "keyDetails"):
                material["publicKey"].pop(legacy, None)
        bundle = Bundle.from_dict(parsed)
    except (KeyError, TypeError, AttributeError, ValidationError) as exc:
        raise ModelSignatureError(
            f"model signature {shown} is not a Sigstore bundle: {bounded(str(exc), 300)}"
        ) from exc
    material_ = bundle.verification_material
    if material_.certificate is not None or material_.tlog_entries:
        raise ModelSignatureError(
            f"model signature {shown} is a Sigstore keyless signature (Fulcio certificate, "
            "Rekor entry): detserve verifies key and certificate-chain signatures only",
            hint="ask the publisher for the key or certificate-chain form (model_signing sign "
            "key / certificate), or verify it with model_signing's own CLI",
        )
    envelope = bundle.dsse_envelope
    problem = (
        f"media type {bundle.media_type!r}, expected {_BUNDLE_MEDIA_TYPE!r}"
        if bundle.media_type != _BUNDLE_MEDIA_TYPE
        else "no DSSE envelope"
        if envelope is None
        else f"{len(envelope.signatures)} signatures in the envelope, expected 1"
        if len(envelope.signatures) != 1
        else f"payload type {envelope.payload_type!r}, expected {_PAYLOAD_TYPE!r}"
        if envelope.payload_type != _PAYLOAD_TYPE
        else None
    )
    if problem:
        raise ModelSignatureError(f"model signature {shown}: {bounded(problem, 300)}")
    return bundle


# --- the trust root ---------------------------------------------------------------------------


def _check_curve(key: object, what: str, error: type[Exception]) -> ec.EllipticCurvePublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise error(f"{what} is not an elliptic-curve key on P-256, P-384 or P-521")
    return key


def _load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    from detserve.keys import AttestationKeyError, pem_der

    data = read_input(path, what="public key", cap=MAX_TRUST_BYTES, error=SignatureTrustError)
    shown = bounded(str(path))
    hint = "pass the publisher's public key PEM file, the block alone"
    try:
        # one strict block and nothing else, as every key detserve reads: a loose PEM reader
        # takes the first block of a file and ignores what surrounds it
        der = pem_der(data, "PUBLIC KEY", shown, hint)
        key = serialization.load_der_public_key(der)
    except AttestationKeyError as exc:
        raise SignatureTrustError(
            f"public key {shown} is not a PEM public key", details=[exc.message], hint=hint
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureTrustError(f"public key {shown} is not a PEM public key") from exc
    return _check_curve(key, f"public key {shown}", SignatureTrustError)


_CERTIFICATE_BEGIN: Final = "-----BEGIN CERTIFICATE-----"
_CERTIFICATE_END: Final = "-----END CERTIFICATE-----"


def _certificate_blocks(data: bytes, shown: str) -> list[bytes]:
    """The DER of each strict CERTIFICATE block of a chain file. Between blocks only what CA
    bundles carry: empty lines and ``#`` comment lines; anything else is refused with its line
    number, since a loose reader skips it and a reader of the file would believe it."""
    from detserve.keys import AttestationKeyError, pem_der

    hint = "a chain file holds CERTIFICATE PEM blocks; between them, empty or '#' lines only"
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise SignatureTrustError(
            f"certificate chain {shown} is not a PEM file (not UTF-8)", hint=hint
        ) from None
    if lines[-1] == "":
        lines.pop()
    blocks: list[bytes] = []
    block: list[str] | None = None
    for number, line in enumerate(lines, start=1):
        if block is not None:
            block.append(line)
            if line == _CERTIFICATE_END:
                try:
                    blocks.append(
                        pem_der(
                            ("\n".join(block) + "\n").encode(),
                            "CERTIFICATE",
                            f"certificate chain {shown} line {number}",
                            hint,
                        )
                    )
                except AttestationKeyError as exc:
                    raise SignatureTrustError(exc.message, hint=hint) from None
                block = None
        elif line == _CERTIFICATE_BEGIN:
            block = [line]
        elif line and not line.startswith("#"):
            raise SignatureTrustError(
                f"certificate chain {shown} line {number}: {bounded(repr(line), 80)} is neither "
                "part of a CERTIFICATE block, an empty line nor a '#' comment",
                hint=hint,
            )
    if block is not None:
        raise SignatureTrustError(
            f"certificate chain {shown}: a CERTIFICATE block does not end", hint=hint
        )
    return blocks


def _load_chain(paths: Sequence[Path]) -> list[x509.Certificate]:
    from cryptography import x509

    certificates: list[x509.Certificate] = []
    for path in paths:
        data = read_input(path, what="certificate", cap=MAX_TRUST_BYTES, error=SignatureTrustError)
        shown = bounded(str(path))
        blocks = _certificate_blocks(data, shown)
        if not blocks:
            raise SignatureTrustError(f"certificate chain {shown} holds no PEM certificate")
        for der in blocks:
            try:
                certificates.append(x509.load_der_x509_certificate(der))
            except ValueError as exc:
                raise SignatureTrustError(
                    f"certificate chain {shown} holds a block that is not an X.509 certificate"
                ) from exc
    return certificates


def _key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    # The library's key hint: sha256 of the PEM SubjectPublicKeyInfo.
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def _verifier(
    bundle: Bundle, trust: SignatureTrust, shown: str
) -> tuple[sign_sigstore_pb.Verifier, str]:
    """The library's verifier for ``trust``, and the signer it vouches for once it verified."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from model_signing._signing import sign_certificate, sign_ec_key
    from OpenSSL import crypto

    material = bundle.verification_material
    if trust.public_key is not None:
        key = _load_public_key(trust.public_key)
        if material.public_key is None:
            raise SignatureInvalid(
                f"model signature {shown} was made with a certificate, not with the given public "
                "key",
                hint="verify it with --certificate-chain and the publisher's CA certificates",
            )

        class KeyVerifier(sign_ec_key.Verifier):
            def __init__(self) -> None:  # the key detserve read, not a path the library opens
                self._public_key = key

        return KeyVerifier(), f"public key sha256:{_key_fingerprint(key)}"

    anchors = _load_chain(trust.certificate_chain)
    chain = material.x509_certificate_chain
    if chain is None or not chain.certificates:
        raise SignatureInvalid(
            f"model signature {shown} was made with a public key, not with a certificate",
            hint="verify it with --public-key and the publisher's public key",
        )
    try:
        leaf = x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
        for certificate in chain.certificates[1:]:
            x509.load_der_x509_certificate(certificate.raw_bytes)
    except ValueError as exc:
        raise ModelSignatureError(
            f"model signature {shown}: a certificate of its chain is not DER"
        ) from exc
    _check_curve(leaf.public_key(), f"the signing certificate of {shown}", ModelSignatureError)

    class ChainVerifier(sign_certificate.Verifier):
        def __init__(self) -> None:  # the certificates detserve read, as the library stores them
            self._log_fingerprints = False
            self._store = crypto.X509Store()
            for anchor in anchors:
                self._store.add_cert(crypto.X509.from_cryptography(anchor))

    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    subject = bounded(leaf.subject.rfc4514_string(), 300)
    return ChainVerifier(), f"certificate {subject} (sha256:{fingerprint})"


# --- verification -----------------------------------------------------------------------------


class _Notes(logging.Handler):
    def __init__(self, notes: list[str]) -> None:
        super().__init__()
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage())


@contextlib.contextmanager
def _captured(notes: list[str]) -> Iterator[None]:
    """What the library prints or logs while it verifies, kept as notes instead."""
    handler = _Notes(notes)
    logger = logging.getLogger("model_signing")
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            # The library's own `logger.warn` is deprecated; its message is kept, not the nag.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        notes.extend(line.strip() for line in printed.getvalue().splitlines() if line.strip())


def _verify_envelope(
    bundle: Bundle,
    verifier: sign_sigstore_pb.Verifier,
    trust: SignatureTrust,
    signer: str,
    shown: str,
) -> tuple[bytes, tuple[str, ...]]:
    """The signed payload, once the library's verifier accepted the signature over it."""
    from cryptography.exceptions import InvalidSignature
    from model_signing._signing import sign_sigstore_pb
    from OpenSSL import crypto

    notes: list[str] = []
    try:
        with _captured(notes):
            _, payload = verifier._verify_signed_content(sign_sigstore_pb.Signature(bundle))
    except (InvalidSignature, ValueError, crypto.Error, crypto.X509StoreContextError) as exc:
        reason = bounded(str(exc).strip(), 300) or type(exc).__name__
        # What failed to verify is named by the operator's trust root; the signer the bundle
        # names is a claim, shown as one.
        given = (
            signer
            if trust.public_key is not None
            else "certificate chain " + ", ".join(bounded(str(p)) for p in trust.certificate_chain)
        )
        raise SignatureInvalid(
            f"model signature {shown} does not verify with {given}: {reason}",
            details=() if trust.public_key is not None else [f"claimed, not verified: {signer}"],
            hint="do not trust this snapshot: the signature is not the publisher's, or its "
            "signed content was changed",
        ) from exc
    return bytes(payload), tuple(bounded(note, 300) for note in notes)
